"""Class-conditional image generation (CIFAR-10): GAN training steps, evaluation, sampling.

The image task's :class:`~fedgen.tasks.base.Objective`:
``batches`` / ``loss`` / ``begin_local`` drive the shared loop
(:func:`fedgen.fl.client.local_train`), ``evaluate`` scores a model, ``generate`` samples.

One local GAN step = one discriminator step (``begin_local``'s callable, run by the loop
before each generator step) + one generator step (``loss``), with the pre-training's losses
(:func:`fedgen.tasks.image.pretrain.discriminator_loss` / :func:`~fedgen.tasks.image.pretrain.generator_loss`:
hinge, DiffAugment on every image D sees, the AC class loss) on the batch's real labels, so a
client's generator is trained on its own class mix. What the generator step trains is the
algorithm's parameter set (the generator's LoRA tensors, or the whole generator); the
discriminator is trained with its own AdamW. Augmentation randomness comes from the loop's
seeded global RNG (one draw per step), so sessions are deterministic.

**Discriminator policy (federation).** The discriminator never leaves the device. With a
LoRA algorithm (FedGen-Edge, Ditto, Local, Central-LoRA) every local training session starts
from the *pretrained* discriminator (``discriminator_init``), trains it alongside the
generator adapter and discards it: clients stay stateless, which is what cross-device FL
assumes (a client is sampled about once every 1/C rounds and may never return), memory
does not grow with K, and resume needs no per-client state. Full-model algorithms follow
their own definition: FedAvg-full and Central-full train and average both networks;
FedPer keeps its personal layers of both on the client. Either way a session starts from the
pretrained spectral-norm power-iteration vectors (D's buffers, not exchanged), so a session
does not depend on which client ran before it in the same process.

**Evaluation.** Samples are drawn in fixed, class-mixed batches from fixed seeds (the
generator's BatchNorm uses batch statistics: see ``generate``), labels stratified to a
target class histogram, and
scored in the feature space of a small CIFAR-10 classifier trained once on the train
split: the Frechet distance to the CIFAR-10 test set's features re-weighted to the same
class histogram ("FD-classifier", **not comparable to Inception FID**) and the accuracy of
the classifier on the samples (does label y produce class y?). Inception FID/KID are
computed once per run at the end (:func:`fedgen.tasks.image.metrics.final_image_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from fedgen.core.device import device_of
from fedgen.metrics.fid import frechet_distance_to
from fedgen.models.cgan import CondGAN, discriminator_loss, generator_loss


@dataclass
class Images:
    """A labelled image set: ``x`` uint8 ``[n, 32, 32, 3]`` (HWC, RGB) and ``y`` int64 ``[n]``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx) -> Images:
        return Images(self.x[idx], self.y[idx])

    @staticmethod
    def cat(parts: list[Images]) -> Images:
        return Images(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC in [0, 255] -> float NCHW in [-1, 1] (the generator's output range)."""
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounded (what a PNG of the sample holds)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def stratified_labels(hist: np.ndarray, n: int) -> torch.Tensor:
    """``n`` labels whose class counts follow ``hist`` (largest-remainder rounding), sorted by class."""
    p = np.asarray(hist, dtype=np.float64)
    p = p / p.sum()
    counts = np.floor(p * n).astype(int)
    rest = n - counts.sum()
    order = np.argsort(-(p * n - counts), kind="stable")
    counts[order[:rest]] += 1
    return torch.from_numpy(np.repeat(np.arange(len(p)), counts))


def _step_generator() -> torch.Generator:
    """A CPU generator for one step's augmentation, seeded from the (seeded) global RNG."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))


def gan_of(model: nn.Module) -> CondGAN:
    """The :class:`~fedgen.models.cgan.CondGAN` inside a PEFT wrapper (or the model itself)."""
    base = getattr(model, "base_model", None)  # a PeftModel's LoraModel
    return cast(CondGAN, base.model if base is not None else model)


class ClassMixtureReference:
    """Feature statistics of a labelled reference set, re-weighted to any class histogram."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray, num_classes: int):
        self.num_classes = num_classes
        self.mu = np.stack([feats[labels == c].mean(0) for c in range(num_classes)])
        self.second = np.stack(
            [feats[labels == c].T @ feats[labels == c] / (labels == c).sum() for c in range(num_classes)]
        )

    def stats(self, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = np.asarray(hist, dtype=np.float64)
        w = w / w.sum()
        mu = w @ self.mu
        sigma = np.tensordot(w, self.second, 1) - np.outer(mu, mu)
        return mu, sigma


class GanObjective:
    """The image task's :class:`~fedgen.tasks.base.Objective` (conditional GAN on CIFAR-10-like data)."""

    metric = "fdc"  # the per-round quality figure: FD-classifier (lower is better)
    global_keys: tuple[str, ...] = ("fdc", "acc")

    def __init__(
        self,
        *,
        nz: int,
        num_classes: int,
        discriminator_init: dict[str, torch.Tensor] | None,
        d_lr: float,
        betas: tuple[float, float],
        diffaug: str = "color,translation,cutout",
        ac_weight: float = 1.0,
        discriminator_buffers: dict[str, torch.Tensor] | None = None,
        classifier=None,
        reference: ClassMixtureReference | None = None,
        eval_samples: int = 1000,
        local_samples: int = 100,
        sample_batch: int = 100,
    ):
        self.nz, self.num_classes = nz, num_classes
        self.discriminator_init = discriminator_init  # None: the discriminator is part of the state
        self.discriminator_buffers = discriminator_buffers  # the pretrained spectral-norm vectors
        self.d_lr, self.betas, self.diffaug, self.ac_weight = d_lr, betas, diffaug, ac_weight
        self.classifier, self.reference = classifier, reference
        self.eval_samples, self.local_samples, self.sample_batch = eval_samples, local_samples, sample_batch

    # -- data ---------------------------------------------------------------------------
    def batches(self, examples: Images, batch_size: int, generator: torch.Generator) -> Iterator[Images]:
        """Shuffled mini-batches; a last batch of one image is dropped (BatchNorm needs two)."""
        perm = torch.randperm(len(examples), generator=generator)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) > 1:
                yield examples[idx]

    @staticmethod
    def concat(parts: list[Images]) -> Images:
        return Images.cat(parts)

    @staticmethod
    def holdout(examples: Images, fraction: float) -> tuple[Images, Images]:
        """Split off the last ``fraction`` of a client's images as a validation set."""
        n_val = int(len(examples) * fraction)
        if n_val == 0 or n_val == len(examples):
            return examples, examples[:0]
        return examples[: len(examples) - n_val], examples[len(examples) - n_val :]

    @staticmethod
    def has_eval_data(images: Images) -> bool:
        return len(images) > 0

    # -- training -----------------------------------------------------------------------
    def loss_params(self, named: dict[str, nn.Parameter]) -> list[nn.Parameter]:
        """The trained parameters the generator loss optimises (the generator side only)."""
        return [p for k, p in named.items() if ".discriminator." not in f".{k}"]

    def begin_local(self, model: nn.Module, named: dict[str, nn.Parameter], cfg):
        """Set up this session's discriminator and return its step (called before each G step)."""
        d = gan_of(model).discriminator
        if self.discriminator_init is not None:
            d.load_state_dict(self.discriminator_init)
        elif self.discriminator_buffers is not None:
            with torch.no_grad():
                for k, b in d.named_buffers():
                    b.copy_(self.discriminator_buffers[k])
        params = list(d.parameters())
        opt = torch.optim.AdamW(params, lr=self.d_lr, betas=self.betas, weight_decay=cfg.weight_decay)
        gen = gan_of(model).generator

        def d_step(batch: Images) -> float:
            for p in params:
                p.requires_grad_(True)
            dev = device_of(d)
            real, y = to_float(batch.x).to(dev), batch.y.to(dev)
            with torch.no_grad():
                fake = gen(torch.randn(len(batch), self.nz).to(dev), y)
            loss = discriminator_loss(d, real, fake, y, _step_generator(), self.diffaug, self.ac_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for p in params:  # the generator step must not train the discriminator
                p.requires_grad_(False)
            return loss.item()

        return d_step

    def loss(self, model: nn.Module, batch: Images) -> torch.Tensor:
        """The pre-training's generator loss (hinge + AC, on augmented fakes) on the batch's labels."""
        gan = gan_of(model)
        dev, y = device_of(gan), batch.y.to(device_of(gan))
        fake = gan.generator(torch.randn(len(batch), self.nz).to(dev), y)
        return generator_loss(gan.discriminator, fake, y, _step_generator(), self.diffaug, self.ac_weight)

    # -- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model: nn.Module, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """Images (float NCHW in [-1, 1]) for ``labels``, in the order given; deterministic in ``seed``.

        The labels are drawn in a seeded shuffled order, in batches of ``sample_batch``, so every
        batch has the class mix of the whole request (i.i.d. draws from it). A batch-statistics
        generator (``norm="bn"``) is then normalised as in training: class-mixed batches for a
        class-balanced request (pre-training), the client's own mix for a client's request (its
        local training). Class-sorted batches would normalise each class by its own statistics.
        """
        gen = gan_of(model).generator
        dev = device_of(gen)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        out = torch.empty(len(labels), 3, 32, 32)
        for i in range(0, len(labels), self.sample_batch):
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            idx = order[i : i + self.sample_batch]
            z = torch.randn(len(idx), self.nz, generator=g).to(dev)
            out[idx] = gen(z, labels[idx].to(dev)).float().cpu()
        return out

    # -- evaluation ---------------------------------------------------------------------
    def histogram(self, labels: torch.Tensor) -> np.ndarray:
        return np.bincount(labels.numpy(), minlength=self.num_classes).astype(np.float64)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, target: Images, batch_size: int = 64, n: int | None = None) -> dict:
        """FD-classifier and class accuracy of samples whose labels follow ``target``'s class mix."""
        hist = self.histogram(target.y)
        labels = stratified_labels(hist, n or self.eval_samples)
        images = self.generate(model, labels, seed=0)
        feats = self.classifier.features(images)
        assert self.reference is not None, "evaluate needs the reference statistics"
        fd = frechet_distance_to(feats, *self.reference.stats(hist))
        acc = float((self.classifier.predict(images) == labels.numpy()).mean())
        return {"fdc": fd, "acc": acc, "samples": len(labels)}

    def client_metric(self, model: nn.Module, target: Images, batch_size: int = 64) -> float:
        """A client's figure: FD-classifier of ``local_samples`` samples with its test split's class mix."""
        return self.evaluate(model, target, batch_size, n=self.local_samples)["fdc"]
