"""A small CIFAR-10 CNN, trained once and cached, for cheap image metrics.

Two uses:

* a cheap Frechet distance in the classifier's penultimate (global-average-pooled) feature space, for
  per-round convergence curves; it is labelled :data:`FD_CLASSIFIER_LABEL` everywhere, because its values
  live on another scale than Inception FID and must never be compared with it;
* class-conditional accuracy of generated images (does the generator draw the class it was asked for?).

The classifier is trained on the CIFAR-10 *train* split only (the test split is used once, to report its
accuracy), deterministically: the same data, seed and settings give bit-identical weights on the CPU with
the same ``torch.get_num_threads()`` (recorded in the metadata; oneDNN reductions may change order with the
thread count). Weights are saved as safetensors with a JSON sidecar under a caller-given cache directory,
keyed by a hash of the architecture, the training settings and the training data bytes.

Images are accepted in the two formats of :func:`fedgen.metrics.fid.to_unit_nchw`: uint8 NHWC 0..255 or
float NCHW in [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fedgen.core.errors import DataError
from fedgen.metrics.fid import images_digest, to_unit_nchw

FD_CLASSIFIER_LABEL = "FD-classifier (not comparable to Inception FID)"
ARCH = "cnn4-bn-v1"  # bump whenever SmallCifarCNN or the training recipe changes: it is part of the cache key
WIDTHS = (32, 64, 128, 256)
FEATURE_DIM = WIDTHS[-1]
NUM_CLASSES = 10


class SmallCifarCNN(nn.Module):
    """4 blocks of conv3x3 -> BatchNorm -> ReLU (max-pool 2x2 after the first three), global average pool
    (the 256-d feature), linear head. Input: float NCHW in [-1, 1]."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Classifier:
    """A trained :class:`SmallCifarCNN` in eval mode, with its metadata and cache provenance."""

    model: SmallCifarCNN
    meta: dict[str, Any]
    from_cache: bool = False
    label: str = field(default=FD_CLASSIFIER_LABEL, init=False)

    @property
    def name(self) -> str:
        """Cache-key-safe identity of this classifier (used by :func:`fedgen.metrics.fid.reference_stats`)."""
        return f"fdcls-{self.meta['key'][:16]}"

    @torch.no_grad()
    def _map(self, images: Any, fn, batch_size: int) -> torch.Tensor:
        self.model.eval()
        outs = [
            fn(to_unit_nchw(images[i : i + batch_size]) * 2.0 - 1.0)
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(outs) if outs else torch.empty(0)

    def features(self, images: Any, batch_size: int = 500) -> np.ndarray:
        """Penultimate features ``[N, FEATURE_DIM]`` as float64 (the FD-classifier space)."""
        return self._map(images, self.model.features, batch_size).double().numpy().reshape(-1, FEATURE_DIM)

    __call__ = features  # a FeatureExtractor, like InceptionFeatures

    def logits(self, images: Any, batch_size: int = 500) -> np.ndarray:
        return self._map(images, self.model, batch_size).double().numpy().reshape(-1, NUM_CLASSES)

    def predict(self, images: Any, batch_size: int = 500) -> np.ndarray:
        """Predicted class labels ``[N]`` (int64)."""
        return self.logits(images, batch_size).argmax(axis=1).astype(np.int64)

    def accuracy(self, images: Any, labels: np.ndarray, batch_size: int = 500) -> float:
        """Fraction of ``images`` classified as ``labels`` (class-conditional accuracy of generations)."""
        labels = np.asarray(labels)
        return float((self.predict(images, batch_size) == labels).mean()) if len(labels) else float("nan")


# ---------------------------------------------------------------------------------------- training


def _check_split(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (32, 32, 3)):
        raise DataError(f"{what} images must be uint8 N x 32 x 32 x 3 (NHWC), got {getattr(x, 'shape', x)}")
    y = np.asarray(y)
    if y.shape != (len(x),) or (len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES)):
        raise DataError(f"{what} labels must be {len(x)} integers in 0..{NUM_CLASSES - 1}")


def _augment(xb: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a uint8 NHWC batch, drawn from ``gen``."""
    b, h, w, _ = xb.shape
    padded = F.pad(xb, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    rows = oy[:, None] + torch.arange(h)[None, :]
    cols = ox[:, None] + torch.arange(w)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _train(
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    epochs: int,
    seed: int,
    batch_size: int,
    max_lr: float,
    weight_decay: float,
    progress: bool,
) -> SmallCifarCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCifarCNN()
    gen = torch.Generator().manual_seed(seed + 1)
    x_all = torch.from_numpy(np.ascontiguousarray(train_x))
    y_all = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    n = len(x_all)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=weight_decay)
    total_steps = epochs * steps_per_epoch
    sched: torch.optim.lr_scheduler.LRScheduler
    if total_steps >= 8:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=total_steps, pct_start=0.25
        )
    else:  # OneCycleLR divides by zero with a handful of steps (tiny test runs): keep max_lr constant
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    model.train()
    for epoch in range(epochs):
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            xb = _augment(x_all[idx], gen).permute(0, 3, 1, 2).to(torch.float32).div(127.5).sub(1.0)
            yb = y_all[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        if progress:
            print(
                f"[fd-classifier] epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.4f}, "
                f"train acc {correct / seen:.4f}, {time.perf_counter() - t0:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    model.eval()
    return model


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_train_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    cache_dir: Path,
    *,
    epochs: int = 8,
    seed: int = 0,
    batch_size: int = 128,
    max_lr: float = 4e-3,
    weight_decay: float = 5e-4,
    progress: bool = False,
) -> Classifier:
    """The cached classifier for these training data and settings, training (and caching) it if needed.

    ``train_x``/``test_x`` are uint8 N x 32 x 32 x 3 arrays (CIFAR-10 train and test splits), ``*_y`` their
    labels. The cache files are ``cache_dir/fdcls-<key16>.safetensors`` and ``.json``, where the key hashes
    :data:`ARCH`, the settings and the training images/labels; the test split only feeds the reported
    ``meta["test_accuracy"]``. ``Classifier.from_cache`` tells whether the cache was hit.
    """
    _check_split(train_x, train_y, "train")
    _check_split(test_x, test_y, "test")
    settings = {
        "arch": ARCH,
        "widths": list(WIDTHS),
        "epochs": int(epochs),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "max_lr": float(max_lr),
        "weight_decay": float(weight_decay),
        "augment": "random-crop-pad4+hflip",
        "train_digest": images_digest(train_x),
        "train_labels_digest": images_digest(np.asarray(train_y, dtype=np.int64)),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    cache_dir = Path(cache_dir)
    weights_path = cache_dir / f"fdcls-{key[:16]}.safetensors"
    meta_path = weights_path.with_suffix(".json")

    if weights_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                model = SmallCifarCNN()
                model.load_state_dict(load_file(str(weights_path)))
                model.eval()
                return Classifier(model, meta, from_cache=True)
        except (OSError, ValueError, RuntimeError, KeyError):
            pass  # unreadable or foreign cache: retrain and overwrite it

    t0 = time.perf_counter()
    model = _train(
        train_x,
        train_y,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        max_lr=max_lr,
        weight_decay=weight_decay,
        progress=progress,
    )
    train_seconds = time.perf_counter() - t0
    clf = Classifier(model, {}, from_cache=False)
    test_acc = clf.accuracy(test_x, test_y)
    clf.meta = {
        **settings,
        "key": key,
        "label": FD_CLASSIFIER_LABEL,
        "feature_dim": FEATURE_DIM,
        "num_classes": NUM_CLASSES,
        "train_size": len(train_x),
        "test_size": len(test_x),
        "test_accuracy": test_acc,
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    if progress:
        print(
            f"[fd-classifier] test accuracy {test_acc:.4f} ({train_seconds:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(weights_path, lambda p: save_file(state, p, metadata={"key": key, "arch": ARCH}))
    _atomic_write(
        meta_path, lambda p: Path(p).write_text(json.dumps(clf.meta, indent=2, sort_keys=True) + "\n")
    )
    return clf
