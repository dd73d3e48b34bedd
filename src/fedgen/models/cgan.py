"""Conditional GAN backbone for 32x32 RGB (CIFAR-10) that trains on CPU from a small public slice.

The image task's backbone (it replaced a plain conditional DCGAN with BCE loss, whose samples were
colour blobs): a conditional generator made of transposed convolutions and a discriminator with a
class projection, with the pieces that make small conditional GANs train:

* **Generator** ``[z, embed(y)]`` (a 1x1 "image") -> ConvT 4x4 (-> 4 px) -> 2 x ConvT 4x4 stride 2
  (-> 8, 16 px; widths 8, 4, 2 x ngf) -> ConvT 4x4 stride 2 to RGB (32 px) -> tanh: the DCGAN
  layout (a 32x32 hidden layer + 3x3 output conv was measured ~30% slower on CPU and dropped).
  Each hidden layer is followed by a *class-conditional* normalisation
  ``norm(h) * (1 + gain[y]) + bias[y]`` (gain/bias: embeddings, zero-initialised) and ReLU. Every
  convolution is a plain ``nn.ConvTranspose2d`` / ``nn.Conv2d``
  (groups = 1, dilation = 1, output_padding = 0), so :func:`fedgen.models.conv_lora.add_generator_lora`
  puts LoRA on all four.
* **Normalisation** (``GanConfig.norm``): ``"gn"`` = GroupNorm without affine parameters (per sample:
  a sample does not depend on the other samples of its batch, so a client whose batches hold one
  class sees the same generator as the pre-training did), or ``"bn"`` = BatchNorm with
  ``track_running_stats=False`` (batch statistics at training and sampling). Neither has buffers.
* **Discriminator** (SNGAN "standard CNN", Miyato et al. 2018): 7 convolutions (3x3 / 4x4 stride 2,
  widths 1, 1, 2, 2, 4, 4, 8 x ndf, LeakyReLU 0.1), sum-pooled feature ``h``; logit = ``lin(h) +
  <embed(y), h>`` (projection, Miyato & Koyama 2018); optionally an auxiliary class head ``cls(h)``
  (AC-GAN, Odena et al. 2017). Every weight of D is **spectrally normalised** with PyTorch's
  ``parametrizations.spectral_norm`` (one power iteration per training-mode forward). Its power-
  iteration vectors ``u``/``v`` are D's only buffers: a cache of the sigma estimate, not learned,
  saved with D (state_dict, checkpoint) and re-converging within a few forwards if D's weights are
  replaced (e.g. averaged). The exact, buffer-free alternative (``torch.linalg.matrix_norm(ord=2)``
  per forward) was measured at 0.26 s per D forward at ndf = 32, batch 64, 1 thread (3x the forward
  itself) and rejected. G has no buffers at all: its state is exactly its parameters.
* Training helpers: :func:`diff_augment` (DiffAugment, Zhao et al. 2020: colour + translation + cutout,
  applied to real and fake alike), hinge losses, :class:`EMA` of the generator's weights.

At ngf = ndf = 100 (the paper's width) G + D = 8,204,103 + 7,161,711 = 15,365,814 parameters (paper: ~15M).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from fedgen.core.errors import CheckpointError
from fedgen.core.files import atomic_save_safetensors, atomic_write_text

GAN_FILE = "gan.safetensors"
GAN_META = "fedgen_gan.json"
ARCH = "cgan-sn-proj-v1"


@dataclass
class GanConfig:
    nz: int = 128
    ngf: int = 100
    ndf: int = 100
    num_classes: int = 10
    embed_dim: int = 10
    norm: str = "gn"  # "gn" (per-sample GroupNorm) or "bn" (batch statistics only)
    aux_classifier: bool = True  # AC-GAN head on D (a D parameter only: G is unchanged)


class CondNorm(nn.Module):
    """Parameter-free normalisation, then a class-conditional affine map (gain init 1, bias init 0)."""

    def __init__(self, c: int, num_classes: int, kind: str):
        super().__init__()
        if kind == "bn":
            self.norm: nn.Module = nn.BatchNorm2d(c, affine=False, track_running_stats=False)
        elif kind == "gn":
            self.norm = nn.GroupNorm(math.gcd(c, min(32, max(1, c // 4))), c, affine=False)  # >= 4 ch/group
        else:
            raise ValueError(f"norm must be 'bn' or 'gn', got {kind!r}")
        self.gain = nn.Embedding(num_classes, c)
        self.bias = nn.Embedding(num_classes, c)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + self.gain(y)[:, :, None, None]) + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    def __init__(self, c: GanConfig):
        super().__init__()
        self.nz = c.nz
        self.embed = nn.Embedding(c.num_classes, c.embed_dim)
        w = (8 * c.ngf, 4 * c.ngf, 2 * c.ngf)
        self.convs = nn.ModuleList([nn.ConvTranspose2d(c.nz + c.embed_dim, w[0], 4, 1, 0, bias=False)])
        self.convs.extend(
            nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False) for a, b in zip(w, w[1:], strict=False)
        )
        self.norms = nn.ModuleList(CondNorm(k, c.num_classes, c.norm) for k in w)
        self.out = nn.ConvTranspose2d(w[-1], 3, 4, 2, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(y)], 1)[:, :, None, None]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = F.relu(norm(conv(h), y))
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """Every weight is spectrally normalised (``torch.nn.utils.parametrizations.spectral_norm``)."""

    def __init__(self, c: GanConfig):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        w = [m * c.ndf for m in (1, 1, 2, 2, 4, 4, 8)]
        ins = [3, *w[:-1]]
        self.convs = nn.ModuleList(
            sn(nn.Conv2d(a, b, 4, 2, 1) if i % 2 else nn.Conv2d(a, b, 3, 1, 1))
            for i, (a, b) in enumerate(zip(ins, w, strict=True))
        )
        self.lin = sn(nn.Linear(w[-1], 1))
        self.embed = sn(nn.Embedding(c.num_classes, w[-1]))
        self.cls = sn(nn.Linear(w[-1], c.num_classes)) if c.aux_classifier else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
        return h.sum((2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor, with_class_logits: bool = False):
        h = self.features(x)
        out = self.lin(h).flatten() + (self.embed(y) * h).sum(1)
        if not with_class_logits:
            return out
        return out, (None if self.cls is None else self.cls(h))


class CondGAN(nn.Module):
    """Generator + discriminator in one module, so one state dict names both."""

    def __init__(self, c: GanConfig):
        super().__init__()
        self.config = c
        self.generator = Generator(c)
        self.discriminator = Discriminator(c)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # PEFT wraps forward
        return self.generator(z, y)


def build(c: GanConfig, seed: int) -> CondGAN:
    """A freshly initialised GAN: convolutions/linears Xavier-uniform (as SNGAN/BigGAN), zero biases."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gan = CondGAN(c)
        for m in gan.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return gan


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------ training helpers


class EMA:
    """Exponential moving average of a module's parameters: ``ema = d * ema + (1 - d) * p``.

    ``d = min(decay, (1 + t) / (10 + t))`` at update ``t`` (0-based; the TF ``num_updates`` warm-up,
    so early averages are not dominated by the random initialisation). ``module`` is the averaged copy.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999):
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay, self.updates = decay, 0

    def rate(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.rate()
        for e, p in zip(self.module.parameters(), module.parameters(), strict=True):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
        self.updates += 1


def diff_augment(x: torch.Tensor, gen: torch.Generator, policy: str = "color,translation,cutout"):
    """DiffAugment (differentiable: gradients reach G through it) of float NCHW images in [-1, 1]."""
    b, _, h, w = x.shape
    ops = [p for p in policy.split(",") if p]

    def rand() -> torch.Tensor:  # drawn on the CPU generator, used where x lives
        return torch.rand(b, 1, 1, 1, generator=gen).to(x.device)

    if "color" in ops:
        x = x + (rand() - 0.5)
        m = x.mean(1, keepdim=True)
        x = (x - m) * (rand() * 2) + m
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * (rand() + 0.5) + m
    if "translation" in ops:  # shift by up to 1/8 of the size, zero fill
        s = int(h * 0.125 + 0.5)
        dy = torch.randint(-s, s + 1, (b, 1, 1), generator=gen)
        dx = torch.randint(-s, s + 1, (b, 1, 1), generator=gen)
        rows = (torch.arange(h)[None, :, None] + dy + s).expand(b, h, w)
        cols = (torch.arange(w)[None, None, :] + dx + s).expand(b, h, w)
        padded = F.pad(x, (s, s, s, s))
        idx = [t.to(x.device) for t in (torch.arange(b)[:, None, None], rows, cols)]
        x = padded[idx[0], :, idx[1], idx[2]].permute(0, 3, 1, 2)
    if "cutout" in ops:  # zero a square of half the size at a random centre
        k = int(h * 0.5 + 0.5)
        cy = torch.randint(0, h + (1 - k % 2), (b, 1, 1), generator=gen) - k // 2
        cx = torch.randint(0, w + (1 - k % 2), (b, 1, 1), generator=gen) - k // 2
        ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
        cut = (ys >= cy) & (ys < cy + k) & (xs >= cx) & (xs < cx + k)
        x = x * (~cut)[:, None].to(x.device, x.dtype)
    return x


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def g_hinge(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


# ------------------------------------------------------------------------------ save / load


def save(gan: CondGAN, path: str | Path, meta: dict, generator: nn.Module | None = None) -> Path:
    """``gan.safetensors`` + ``fedgen_gan.json`` (architecture, recipe, provenance) in directory ``path``.

    ``generator`` (e.g. :attr:`EMA.module`) replaces ``gan.generator``'s weights in the file: the
    backbone is the EMA generator with the discriminator it was trained against.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in gan.state_dict().items()}
    if generator is not None:
        sd.update({f"generator.{k}": v.detach().contiguous() for k, v in generator.state_dict().items()})
    atomic_save_safetensors(sd, path / GAN_FILE)
    info = {"arch": ARCH, "architecture": asdict(gan.config), **meta}
    atomic_write_text(path / GAN_META, json.dumps(info, indent=2))
    return path


def load(path: str | Path) -> tuple[CondGAN, dict]:
    """Load a GAN saved by :func:`save`; a missing, corrupt or mismatched file is a CheckpointError."""
    path = Path(path)
    if not (path / GAN_META).is_file() or not (path / GAN_FILE).is_file():
        raise CheckpointError(f"no GAN backbone at {path} (expected {GAN_FILE} and {GAN_META})")
    meta = json.loads((path / GAN_META).read_text())
    if meta.get("arch") != ARCH:
        raise CheckpointError(f"{path} holds a {meta.get('arch', 'dcgan')!r} GAN, not {ARCH!r}")
    gan = CondGAN(GanConfig(**meta["architecture"]))
    try:
        sd = load_file(str(path / GAN_FILE))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path / GAN_FILE} is corrupt: {e}") from None
    try:
        gan.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path / GAN_FILE} does not fit its architecture: {e}") from None
    return gan, meta


# -- losses (pre-training and federated fine-tuning share them) --


def augment(images: torch.Tensor, gen: torch.Generator, policy: str) -> torch.Tensor:
    """DiffAugment with ``policy`` ("" = none), drawing its randomness from ``gen``."""
    return diff_augment(images, gen, policy) if policy else images


def discriminator_loss(
    D: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor,
    gen: torch.Generator,
    diffaug: str,
    ac_weight: float,
) -> torch.Tensor:
    """Hinge loss on augmented real and fake images + ``ac_weight`` x the AC class loss on the real ones."""
    d_real, c_real = D(augment(real, gen, diffaug), labels, with_class_logits=True)
    loss = d_hinge(d_real, D(augment(fake, gen, diffaug), labels))
    if ac_weight > 0 and c_real is not None:
        loss = loss + ac_weight * F.cross_entropy(c_real, labels)
    return loss


def generator_loss(
    D: nn.Module,
    fake: torch.Tensor,
    labels: torch.Tensor,
    gen: torch.Generator,
    diffaug: str,
    ac_weight: float,
) -> torch.Tensor:
    """Hinge generator loss on augmented fakes + ``ac_weight`` x the AC class loss on them."""
    d_fake, c_fake = D(augment(fake, gen, diffaug), labels, with_class_logits=True)
    loss = g_hinge(d_fake)
    if ac_weight > 0 and c_fake is not None:
        loss = loss + ac_weight * F.cross_entropy(c_fake, labels)
    return loss
