"""The image task's backbone: the conditional GAN of :mod:`fedgen.models.cgan`, pre-trained offline on
the public CIFAR-10 slice with the recipe of :mod:`fedgen.tasks.image.pretrain` (hinge + AC loss,
spectral norm,
TTUR, DiffAugment, EMA of G), resumable from its checkpoint, cached under a digest of the recipe."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from fedgen.data.cifar10 import CIFAR10, CLASSES
from fedgen.metrics.fid import images_digest
from fedgen.models.cgan import GanConfig
from fedgen.tasks.image.data import splits
from fedgen.tasks.image.pretrain import Recipe, pretrain, recipe_key, save_backbone

if TYPE_CHECKING:
    from fedgen.config import Config

GAN_SOURCE_LABEL = (
    "fedgen-pretrain (conditional GAN: hinge + AC loss, spectral-norm D, EMA G; "
    "pre-trained by fedgen on a public CIFAR-10 train slice)"
)


def gan_config(cfg: Config) -> GanConfig:
    """The architecture the config asks for (AC head iff the AC loss is on)."""
    i = cfg.image
    return GanConfig(
        nz=i.nz,
        ngf=i.ngf,
        ndf=i.ndf,
        num_classes=len(CLASSES),
        embed_dim=i.embed_dim,
        norm=i.norm,
        aux_classifier=i.ac_weight > 0,
    )


def gan_recipe(cfg: Config) -> Recipe:
    """The pre-training recipe the config asks for."""
    i, p = cfg.image, cfg.pretrain
    return Recipe(
        steps=p.steps,
        batch_size=p.batch_size,
        g_lr=p.lr,
        d_lr=i.pretrain_d_lr if i.pretrain_d_lr is not None else 2 * p.lr,
        betas=(i.beta1, 0.999),
        n_dis=i.n_dis,
        ema_decay=i.ema_decay,
        diffaug=i.diffaug,
        ac_weight=i.ac_weight,
        seed=p.seed,
    )


def public_data_id(cfg: Config, data: CIFAR10) -> str:
    """Names the pre-training data: the public fraction and a digest of its images."""
    public, _ = splits(cfg, data)
    return f"cifar10-public{cfg.data.public_fraction}-{images_digest(data.train_x[public])[:16]}"


def backbone_dir(cfg: Config, data: CIFAR10) -> Path:
    """``runs/backbones/cgan-z..-g..-d..-<key>``: key = digest of (architecture, recipe, data)."""
    c = gan_config(cfg)
    key = recipe_key(c, gan_recipe(cfg), public_data_id(cfg, data))
    return Path(cfg.output.root) / "backbones" / f"cgan-z{c.nz}-g{c.ngf}-d{c.ndf}-{key}"


def pretrain_gan(cfg: Config, data: CIFAR10, out: str | Path, progress: bool = True) -> Path:
    """Pre-train on the public slice into ``out`` (resuming ``out/pretrain/`` if a run was killed)."""
    out = Path(out)
    public, _ = splits(cfg, data)
    config, recipe = gan_config(cfg), gan_recipe(cfg)
    if progress:
        print(f"pretrain GAN: {recipe.steps} steps on {len(public)} public images (resumable: {out})")
    res = pretrain(
        data.train_x[public], data.train_y[public], config, recipe, out / "pretrain", progress=progress
    )
    meta = {
        "source": GAN_SOURCE_LABEL,
        "pretrain": {
            "public_fraction": cfg.data.public_fraction,
            "public_images": len(public),
            "steps": res.steps,
            "batch_size": recipe.batch_size,
            "seed": recipe.seed,
            "last_losses": res.history[-1] if res.history else None,
        },
        "data": public_data_id(cfg, data),
        "data_source": data.source,
    }
    path = save_backbone(res, out, recipe, meta)
    shutil.rmtree(out / "pretrain", ignore_errors=True)  # the checkpoint only served resuming
    if progress:
        print(f"GAN backbone saved to {path} ({res.wall_seconds:.0f} s, {res.cpu_seconds:.0f} CPU-s)")
    return path
