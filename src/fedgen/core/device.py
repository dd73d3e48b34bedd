"""Where models run: ``device: auto | cpu | cuda`` (auto = CUDA when present), and mixed precision.

On CUDA, training and evaluation forward passes run under bf16 autocast; on CPU everything is
fp32 and bit-for-bit deterministic. Exchanged states always live on the CPU (fp32), so
checkpoints, byte accounting and aggregation are the same on either device.
"""

from __future__ import annotations

import contextlib

import torch

from fedgen.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve(name: str) -> torch.device:
    """The torch device for a config's ``device``."""
    if name not in DEVICES:
        raise ConfigError(f"config device: expected one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config device: cuda asked for, but torch sees no CUDA device (use auto or cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (fp32, deterministic)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
