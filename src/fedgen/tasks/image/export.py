"""The image task's export: the merged generator as ``generator.safetensors`` +
``generator_config.json`` and a self-contained ``load_generator.py`` (torch + safetensors only)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import cast

from fedgen.core.files import atomic_save_safetensors, atomic_write_text
from fedgen.data.cifar10 import CLASSES
from fedgen.models.cgan import CondGAN
from fedgen.models.lora import merged_copy
from fedgen.tasks.base import ExperimentView

LOADER = '''"""Load a generator exported by `fedgen export` (torch + safetensors only, no fedgen).

    from load_generator import load_generator
    g, cfg = load_generator("OUT")                    # the directory `fedgen export` wrote
    z = torch.randn(10, cfg["nz"]); y = torch.arange(10)
    images = g(z, y)                                  # [10, 3, 32, 32] in [-1, 1]

cfg["norm"] == "bn": BatchNorm uses the statistics of the batch (no running buffers), as in
training, so sample in class-mixed batches (fedgen draws batches of 100 in a shuffled label order);
"gn": per-sample GroupNorm, a sample does not depend on its batch.
"""

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class CondNorm(nn.Module):
    """Parameter-free BatchNorm/GroupNorm, then a class-conditional gain and bias."""

    def __init__(self, c, num_classes, kind):
        super().__init__()
        if kind == "bn":
            self.norm = nn.BatchNorm2d(c, affine=False, track_running_stats=False)
        else:
            self.norm = nn.GroupNorm(math.gcd(c, min(32, max(1, c // 4))), c, affine=False)
        self.gain = nn.Embedding(num_classes, c)
        self.bias = nn.Embedding(num_classes, c)

    def forward(self, x, y):
        return self.norm(x) * (1 + self.gain(y)[:, :, None, None]) + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """[z, embed(y)] -> 4 transposed convolutions (1 -> 4 -> 8 -> 16 -> 32 px) -> tanh RGB."""

    def __init__(self, nz, ngf, num_classes, embed_dim, norm):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        w = (8 * ngf, 4 * ngf, 2 * ngf)
        self.convs = nn.ModuleList([nn.ConvTranspose2d(nz + embed_dim, w[0], 4, 1, 0, bias=False)])
        self.convs.extend(nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False) for a, b in zip(w, w[1:]))
        self.norms = nn.ModuleList(CondNorm(c, num_classes, norm) for c in w)
        self.out = nn.ConvTranspose2d(w[-1], 3, 4, 2, 1)

    def forward(self, z, y):
        h = torch.cat([z, self.embed(y)], 1)[:, :, None, None]
        for conv, norm in zip(self.convs, self.norms):
            h = torch.relu(norm(conv(h), y))
        return torch.tanh(self.out(h))


def load_generator(path):
    path = Path(path)
    cfg = json.loads((path / "generator_config.json").read_text())
    g = Generator(cfg["nz"], cfg["ngf"], cfg["num_classes"], cfg["embed_dim"], cfg["norm"])
    g.load_state_dict(load_file(str(path / "generator.safetensors")))
    return g.eval(), cfg
'''


def export_image(exp: ExperimentView, out: Path) -> list[str]:
    """Write the loaded generator, its config and a loader into ``out``; returns the file names."""
    gan = cast(CondGAN, merged_copy(exp.params.model))  # the image task's model is a CondGAN
    sd = {k: v.detach().contiguous() for k, v in gan.generator.state_dict().items()}
    atomic_save_safetensors(sd, out / "generator.safetensors")
    arch = asdict(gan.config)
    keys = ("nz", "ngf", "num_classes", "embed_dim", "norm")
    cfg = {**{k: arch[k] for k in keys}, "classes": list(CLASSES)}
    atomic_write_text(out / "generator_config.json", json.dumps(cfg, indent=2))
    atomic_write_text(out / "load_generator.py", LOADER)
    return ["generator.safetensors", "generator_config.json", "load_generator.py"]
