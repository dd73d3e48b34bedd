"""What several commands share: the config of the common options (``--config``, ``--set``, ...)."""

from __future__ import annotations

import argparse

from fedgen.config import Config, load_config
from fedgen.experiment.registry import check_config


def overrides_of(args: argparse.Namespace) -> list[str]:
    """``--set KEY=VALUE`` and the shorthand flags (``--backbone``, ``--device``, ``--data-dir``)."""
    overrides = list(args.set or [])
    if getattr(args, "backbone", None):
        overrides.append(f"model.backbone={args.backbone}")
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    if getattr(args, "data_dir", None):
        overrides.append(f"data.dir={args.data_dir}")
    return overrides


def config_of(args: argparse.Namespace) -> Config:
    """The config of ``--config`` with the overrides applied, checked against the registry
    (algorithm and task names, the task's own settings)."""
    return check_config(load_config(args.config, overrides_of(args)))
