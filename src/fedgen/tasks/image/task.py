"""The image task: federated LoRA fine-tuning of a conditional GAN generator on CIFAR-10.

Data: a public slice of CIFAR-10 train (the backbone's pre-training data, held by no client)
and a label-Dirichlet(alpha) partition of the rest (:mod:`fedgen.tasks.image.data`). Backbone:
a conditional DCGAN pre-trained on the public slice (:mod:`fedgen.tasks.image.backbone`).
Adapters: LoRA on the generator's (transposed) convolutions. Objective: GAN steps with a
device-local discriminator (:mod:`fedgen.tasks.image.gan`). Outputs: Inception FID / KID and
sample grids (:mod:`fedgen.tasks.image.metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedgen.data.cifar10 import CLASSES, load_cifar10
from fedgen.errors import ConfigError, FedgenError
from fedgen.fl.client import ClientData
from fedgen.models.conv_lora import add_generator_lora, generator_conv_names
from fedgen.models.dcgan import count, load_gan
from fedgen.tasks.base import TaskSetup
from fedgen.tasks.image import report
from fedgen.tasks.image.data import evaluation_classifier, images, load_image_partition, splits
from fedgen.tasks.image.gan import ClassMixtureReference, GanObjective, Images, gan_of

if TYPE_CHECKING:
    from fedgen.config import Config
    from fedgen.experiment import Experiment
    from fedgen.models.params import State


def generator_blocks(gan: nn.Module) -> list[tuple[str, ...]]:
    """The generator's blocks, read from its structure: each (transposed) convolution starts a block
    that also holds the parameterised layers after it (e.g. its BatchNorm). Key prefixes per block."""
    blocks: list[list[str]] = []
    for name, module in gan_of(gan).generator.net.named_children():
        if isinstance(module, (nn.ConvTranspose2d, nn.Conv2d)):
            blocks.append([])
        if blocks and any(True for _ in module.parameters(recurse=False)):
            blocks[-1].append(f"generator.net.{name}.")
    return [tuple(b) for b in blocks]


def fedper_gan_personal_keys(gan: nn.Module, keys: list[str], personal_blocks: int) -> list[str]:
    """FedPer on the conditional GAN: the generator's last ``personal_blocks`` blocks and the
    discriminator's head (output conv + class projection)."""
    blocks = generator_blocks(gan)
    if not 1 <= personal_blocks < len(blocks):
        raise FedgenError(
            f"algorithm.fedper_personal_blocks={personal_blocks}: the generator has {len(blocks)} blocks, "
            "at least one must stay shared"
        )
    prefixes = tuple(p for b in blocks[len(blocks) - personal_blocks :] for p in b)
    prefixes += ("discriminator.head.", "discriminator.embed.")
    return [k for k in keys if k.startswith(prefixes)]


class ImageTask:
    """Conditional image generation on CIFAR-10 (see the module docstring)."""

    name = "image"
    report = report

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.cifar = None  # the loaded CIFAR-10 arrays, once setup() ran

    @staticmethod
    def check_config(cfg: Config) -> None:
        if cfg.data.partition not in ("dirichlet", "iid"):
            raise ConfigError(
                f"config data.partition: the image task supports dirichlet or iid, got {cfg.data.partition!r}"
            )

    # -- backbone ------------------------------------------------------------------------------
    def backbone_path(self) -> Path:
        """``image.backbone``, or the cache slot ``fedgen pretrain`` fills for this architecture + recipe."""
        cfg = self.cfg
        if cfg.image.backbone != "auto":
            return Path(cfg.image.backbone)
        import hashlib
        import json

        raw = cfg.to_dict()
        recipe = {
            "image": {k: raw["image"][k] for k in ("nz", "ngf", "ndf", "embed_dim", "beta1")},
            "pretrain": {
                k: raw["pretrain"][k] for k in ("steps", "batch_size", "lr", "weight_decay", "seed")
            },
            "public_fraction": cfg.data.public_fraction,
        }
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        i = cfg.image
        return Path(cfg.output.root) / "backbones" / f"gan-z{i.nz}-g{i.ngf}-d{i.ndf}-{key}"

    @staticmethod
    def backbone_ready(path: Path) -> bool:
        return (path / "fedgen_gan.json").is_file()

    def pretrain(self, out: Path, progress: bool = True) -> Path:
        from fedgen.tasks.image.backbone import pretrain_gan

        return pretrain_gan(self.cfg, out, progress)

    def ensure_backbone(self, progress: bool = True) -> Path:
        path = self.backbone_path()
        if self.backbone_ready(path):
            return path
        if self.cfg.image.backbone != "auto":
            raise FedgenError(
                f"GAN backbone {path} not found: give a saved GAN directory or image.backbone: auto"
            )
        if progress:
            print(f"No pretrained GAN for this config yet: pretraining one into {path}")
        return self.pretrain(path, progress)

    # -- experiment parts ----------------------------------------------------------------------
    def setup(self, trains: str, progress: bool = True) -> TaskSetup:
        cfg, i = self.cfg, self.cfg.image
        data = self.cifar = load_cifar10(cfg.data.dir)
        path = self.ensure_backbone(progress)
        gan, meta = load_gan(path)
        for p in gan.parameters():
            p.requires_grad_(False)
        _, pool = splits(cfg, data)
        part = load_image_partition(cfg, data.train_y[pool])
        classifier = evaluation_classifier(cfg, data, progress)
        reference = ClassMixtureReference(classifier.features(data.test_x), data.test_y, len(CLASSES))
        objective = GanObjective(
            nz=i.nz,
            num_classes=len(CLASSES),
            discriminator_init=(
                {k: v.clone() for k, v in gan.discriminator.state_dict().items()}
                if trains == "lora"
                else None
            ),
            d_lr=i.d_lr or cfg.fl.lr,
            betas=(i.beta1, 0.999),
            classifier=classifier,
            reference=reference,
            eval_samples=i.eval_samples,
            local_samples=i.local_samples,
        )
        clients = {
            c.client_id: ClientData(
                c.client_id,
                images(data, pool[np.asarray(c.train_docs, dtype=np.int64)]),
                images(data, pool[np.asarray(c.test_docs, dtype=np.int64)]),
            )
            for c in part.clients
        }
        if progress:
            s = part.stats["summary"]
            print(
                f"partition: {part.scheme} K={cfg.data.num_clients} alpha={cfg.data.alpha} over {len(pool)} "
                f"images; classes/client {s['classes_per_client_mean']:.2f} "
                f"(dominant class share {s['dominant_class_share_mean']:.2f}); "
                f"examples/client {s['examples_min']}-{s['examples_max']}"
            )
        return TaskSetup(
            objective=objective,
            model=gan,
            data=clients,
            partition=part,
            eval_sets={"test": Images(torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))},
            backbone={
                "source": meta.get("source"),
                "path": str(path),
                "params": count(gan),
                "params_split": meta.get("params"),
                "architecture": meta.get("architecture"),
                "pretrain": meta.get("pretrain"),
                "data_source": data.source,
                "classifier": classifier.meta,
            },
            adam_betas=(i.beta1, 0.999),
        )

    def add_adapter(self, model: nn.Module) -> nn.Module:
        """LoRA on the generator's convolutions: all of them, or those named in ``lora.targets``."""
        a = self.cfg.lora
        names = generator_conv_names(model)
        if a.targets is not None:
            unknown = sorted(set(a.targets) - set(names))
            if unknown:
                raise ConfigError(
                    f"config lora.targets: {unknown} are not generator convolutions (choose from {names})"
                )
            names = list(a.targets)
        return add_generator_lora(model, a.r, a.alpha, a.dropout, names)

    def personal_keys(self, model: nn.Module, keys: list[str], blocks: int) -> list[str]:
        return fedper_gan_personal_keys(model, keys, blocks)

    # -- outputs -------------------------------------------------------------------------------
    def finish(
        self, exp: Experiment, run_dir: Path, global_state: State | None, personal, progress: bool = True
    ) -> dict:
        """Inception FID/KID of the global and the clients' models, and the sample grids."""
        from fedgen.tasks.image.metrics import final_image_metrics, sample_grids

        if self.cifar is None:
            raise FedgenError("ImageTask.finish needs setup() first")
        if progress:
            print(f"final metrics: Inception FID/KID on {self.cfg.image.fid_samples} samples per model set")
        fid = final_image_metrics(exp, self.cifar, global_state, personal)
        grids = sample_grids(exp, run_dir, global_state, personal)
        return {"fid": fid, "grids": grids}

    def generate(self, exp: Experiment, run_dir: Path, who: str, opts: Any) -> str:
        from fedgen.tasks.image.metrics import save_grid

        classes = exp.objective.num_classes
        labels = torch.arange(classes).repeat_interleave(opts.num)
        out = Path(opts.out) if opts.out else run_dir / "samples" / f"generate-{who}-seed{opts.seed}.png"
        save_grid(exp.objective.generate(exp.params.model, labels, seed=opts.seed), out, rows=classes)
        return f"{classes} classes x {opts.num} samples written to {out}"

    def describe_partition(self) -> str:
        import json

        data = load_cifar10(self.cfg.data.dir)
        part = load_image_partition(self.cfg, data.train_y[splits(self.cfg, data)[1]])
        return json.dumps(part.stats["summary"], indent=2)
