"""The image task's backbone: a conditional DCGAN pre-trained offline on the public CIFAR-10 slice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from fedgen.data.cifar10 import CLASSES, load_cifar10
from fedgen.fl.client import LocalTrainConfig, derive_seed, local_train
from fedgen.models.dcgan import GanConfig, build_gan, count, save_gan
from fedgen.tasks.image.data import images, splits
from fedgen.tasks.image.gan import GanObjective

if TYPE_CHECKING:
    from fedgen.config import Config

GAN_SOURCE_LABEL = (
    "fedgen-pretrain (conditional DCGAN pre-trained by fedgen on a public CIFAR-10 train slice)"
)


def gan_config(cfg: Config) -> GanConfig:
    i = cfg.image
    return GanConfig(nz=i.nz, ngf=i.ngf, ndf=i.ndf, num_classes=len(CLASSES), embed_dim=i.embed_dim)


def pretrain_gan(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """Train the conditional DCGAN on the public slice (same loop as the clients'); save it to ``out``."""
    t0 = time.time()
    data = load_cifar10(cfg.data.dir)
    public, _ = splits(cfg, data)
    p = cfg.pretrain
    gan = build_gan(gan_config(cfg), p.seed)
    task = GanObjective(
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
