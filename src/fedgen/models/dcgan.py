"""Conditional DCGAN for 32x32 RGB images (CIFAR-10), saved with safetensors.

Generator: ``[z, embed(y)]`` (a 1x1 "image") -> 4 transposed convolutions
(1 -> 4 -> 8 -> 16 -> 32 pixels; widths 8, 4, 2 x ngf, then 3) -> tanh.
Discriminator: 4 strided convolutions (widths 2, 4, 8 x ndf) -> 4x4 features; the
logit is an unconditional head plus a class projection ``<embed(y), sum(h)>``
(Miyato & Koyama 2018). At ngf = ndf = 100 the pair has ~14.3M parameters
(the paper: ~15M).

Normalisation is BatchNorm *without running statistics* (batch statistics in training
and sampling): the networks carry no buffers, so a model's state is exactly its
parameters, which is what the federation exchanges. Samples are therefore drawn in
fixed batches from fixed seeds (see :func:`fedgen.tasks.image.ImageTask.generate`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fedgen.errors import CheckpointError

GAN_FILE = "gan.safetensors"
GAN_META = "fedgen_gan.json"


@dataclass
class GanConfig:
    nz: int = 100
    ngf: int = 100
    ndf: int = 100
    num_classes: int = 10
    embed_dim: int = 10


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, track_running_stats=False)


class Generator(nn.Module):
    def __init__(self, c: GanConfig):
        super().__init__()
        self.embed = nn.Embedding(c.num_classes, c.embed_dim)
        w = (8 * c.ngf, 4 * c.ngf, 2 * c.ngf)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c.nz + c.embed_dim, w[0], 4, 1, 0, bias=False),  # 4x4
            _bn(w[0]),
            nn.ReLU(True),
            nn.ConvTranspose2d(w[0], w[1], 4, 2, 1, bias=False),  # 8x8
            _bn(w[1]),
            nn.ReLU(True),
            nn.ConvTranspose2d(w[1], w[2], 4, 2, 1, bias=False),  # 16x16
            _bn(w[2]),
            nn.ReLU(True),
            nn.ConvTranspose2d(w[2], 3, 4, 2, 1, bias=False),  # 32x32
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(y)], 1)[:, :, None, None]
        return self.net(h)


class Discriminator(nn.Module):
    def __init__(self, c: GanConfig):
        super().__init__()
        w = (2 * c.ndf, 4 * c.ndf, 8 * c.ndf)
        self.features = nn.Sequential(
            nn.Conv2d(3, w[0], 4, 2, 1, bias=False),  # 16x16
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(w[0], w[1], 4, 2, 1, bias=False),  # 8x8
            _bn(w[1]),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(w[1], w[2], 4, 2, 1, bias=False),  # 4x4
            _bn(w[2]),
            nn.LeakyReLU(0.2, True),
        )
        self.head = nn.Conv2d(w[2], 1, 4, 1, 0)
        self.embed = nn.Embedding(c.num_classes, w[2])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(h).flatten() + (self.embed(y) * h.sum((2, 3))).sum(1)


class CondGAN(nn.Module):
    """Generator + discriminator in one module, so one state dict names both."""

    def __init__(self, c: GanConfig):
        super().__init__()
        self.config = c
        self.generator = Generator(c)
        self.discriminator = Discriminator(c)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # PEFT wraps forward
        return self.generator(z, y)


def build_gan(c: GanConfig, seed: int) -> CondGAN:
    """A freshly initialised GAN (DCGAN init: conv weights N(0, 0.02), BN weights N(1, 0.02))."""
    torch.manual_seed(seed)
    gan = CondGAN(c)
    for m in gan.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return gan


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_gan(gan: CondGAN, path: str | Path, meta: dict) -> Path:
    """``gan.safetensors`` + ``fedgen_gan.json`` (architecture + provenance) in directory ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in gan.state_dict().items()}, str(path / GAN_FILE))
    (path / GAN_META).write_text(json.dumps({"architecture": asdict(gan.config), **meta}, indent=2))
    return path


def load_gan(path: str | Path) -> tuple[CondGAN, dict]:
    """Load a GAN saved by :func:`save_gan`; a missing, corrupt or mismatched file is a CheckpointError."""
    path = Path(path)
    if not (path / GAN_META).is_file() or not (path / GAN_FILE).is_file():
        raise CheckpointError(f"no GAN backbone at {path} (expected {GAN_FILE} and {GAN_META})")
    meta = json.loads((path / GAN_META).read_text())
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
