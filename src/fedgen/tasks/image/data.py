"""The image task's data: the public CIFAR-10 slice, the clients' pool and partition, the classifier."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedgen.core.seeding import derive_seed
from fedgen.data.cifar10 import CIFAR10, CLASSES, public_split
from fedgen.data.partition import Partition, build_label_partition, cached_partition
from fedgen.tasks.image.classifier import load_or_train_classifier
from fedgen.tasks.image.gan import Images

if TYPE_CHECKING:
    from fedgen.config import Config


def splits(cfg: Config, data: CIFAR10) -> tuple[np.ndarray, np.ndarray]:
    """(public slice, clients' pool) of CIFAR-10 train; the pool is capped by ``data.max_examples``."""
    public, pool = public_split(len(data.train_y), cfg.data.public_fraction, cfg.pretrain.seed)
    if cfg.data.max_examples is not None and cfg.data.max_examples < len(pool):
        rng = np.random.default_rng(derive_seed(cfg.pretrain.seed, "pool") % 2**32)
        pool = np.sort(rng.choice(pool, cfg.data.max_examples, replace=False))
    return public, pool


def images(data: CIFAR10, idx: np.ndarray, split: str = "train") -> Images:
    x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
    return Images(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))


def load_image_partition(cfg: Config, labels: np.ndarray) -> Partition:
    """Label-Dirichlet (or IID) partition of the clients' pool, cached by its parameters."""
    d = cfg.data
    key = cfg.digest("seed", "data", "pretrain")
    cache = Path(cfg.output.root) / "cache" / f"image-partition-{d.partition}-{key}.json"
    return cached_partition(
        cache,
        lambda: build_label_partition(
            labels,
            num_clients=d.num_clients,
            alpha=d.alpha,
            test_fraction=d.test_fraction,
            seed=cfg.seed,
            scheme=d.partition,
            class_names=list(CLASSES),
        ),
    )


def evaluation_classifier(cfg: Config, data: CIFAR10, progress: bool = True):
    """The small CIFAR-10 classifier behind FD-classifier and class accuracy (trained once, cached)."""
    cache = Path(cfg.output.root) / "cache" / "classifier"
    n = cfg.image.classifier_train_examples or len(data.train_y)
    return load_or_train_classifier(
        data.train_x[:n],
        data.train_y[:n],
        data.test_x,
        data.test_y,
        cache,
        epochs=cfg.image.classifier_epochs,
        seed=0,
        progress=progress,
    )
