"""The image task: federated LoRA fine-tuning of a conditional GAN generator on CIFAR-10.

Data: a public slice of CIFAR-10 train (the backbone's pre-training data, held by no client)
and a label-Dirichlet(alpha) partition of the rest (:mod:`fedgen.tasks.image.data`). Backbone:
the conditional GAN of :mod:`fedgen.models.cgan` pre-trained on the public slice with the recipe of
:mod:`fedgen.tasks.image.pretrain` (:mod:`fedgen.tasks.image.backbone`). Adapters: LoRA on the generator's
(transposed) convolutions. Objective: the pre-training's GAN losses with a device-local
discriminator (:mod:`fedgen.tasks.image.gan`). Outputs: Inception FID / KID, the per-client view
(global vs personalized generator on each client's class mix) and sample grids
(:mod:`fedgen.tasks.image.metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedgen.core.errors import ConfigError, FedgenError
from fedgen.data.cifar10 import CIFAR10, CLASSES, load_cifar10
from fedgen.models import cgan
from fedgen.models.conv_lora import add_generator_lora, generator_conv_names
from fedgen.tasks.base import ClientData, ExperimentView, TaskSetup
from fedgen.tasks.image import report
from fedgen.tasks.image.backbone import backbone_dir, pretrain_gan
from fedgen.tasks.image.data import evaluation_classifier, images, load_image_partition, splits
from fedgen.tasks.image.export import export_image
from fedgen.tasks.image.gan import ClassMixtureReference, GanObjective, Images, gan_of
from fedgen.tasks.image.metrics import final_image_metrics, sample_grids, save_grid

if TYPE_CHECKING:
    from fedgen.config import Config
    from fedgen.models.params import State


def generator_blocks(gan: nn.Module) -> list[tuple[str, ...]]:
    """The generator's blocks, read from its structure: each hidden (transposed) convolution with the
    class-conditional norm after it, then the output convolution. Module-name prefixes per block."""
    g = gan_of(gan).generator
    blocks = [(f"generator.convs.{i}.", f"generator.norms.{i}.") for i in range(len(g.convs))]
    return [*blocks, ("generator.out.",)]


def fedper_gan_personal_keys(gan: nn.Module, keys: list[str], personal_blocks: int) -> list[str]:
    """FedPer on the conditional GAN: the parameters of the generator's last ``personal_blocks`` blocks
    and of the discriminator's heads (unconditional, projection, AC), named as the model names them
    (spectral norm stores D's weights as ``...parametrizations.weight.original``)."""
    blocks = generator_blocks(gan)
    if not 1 <= personal_blocks < len(blocks):
        raise FedgenError(
            f"algorithm.fedper_personal_blocks={personal_blocks}: the generator has {len(blocks)} blocks, "
            "at least one must stay shared"
        )
    prefixes = tuple(p for b in blocks[len(blocks) - personal_blocks :] for p in b)
    prefixes += ("discriminator.lin.", "discriminator.embed.", "discriminator.cls.")
    personal = [n for n, _ in gan_of(gan).named_parameters() if n.startswith(prefixes)]
    missing = sorted(set(personal) - set(keys))
    if missing:
        raise FedgenError(f"FedPer: personal parameters {missing[:3]} are not among the exchanged keys")
    return [k for k in keys if k in set(personal)]


class ImageTask:
    """Conditional image generation on CIFAR-10 (see the module docstring)."""

    name = "image"
    report = report

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.cifar: CIFAR10 | None = None  # loaded on first use (data())

    @staticmethod
    def training_examples(cfg: Config) -> int | None:
        """Training images over all clients: the pool (CIFAR-10 train minus the public slice) x 0.8."""
        pool = 50_000 - int(round(cfg.data.public_fraction * 50_000))
        pool = min(pool, cfg.data.max_examples or pool)
        return int(pool * (1 - cfg.data.test_fraction))

    @staticmethod
    def check_config(cfg: Config) -> None:
        if cfg.data.partition not in ("dirichlet", "iid"):
            raise ConfigError(
                f"config data.partition: the image task supports dirichlet or iid, got {cfg.data.partition!r}"
            )

    # -- backbone ------------------------------------------------------------------------------
    def data(self) -> CIFAR10:
        """CIFAR-10 (loaded and verified once)."""
        if self.cifar is None:
            self.cifar = load_cifar10(self.cfg.data.dir)
        return self.cifar

    def backbone_path(self) -> Path:
        """``image.backbone``, or the cache slot keyed by a digest of architecture + recipe + data."""
        if self.cfg.image.backbone != "auto":
            return Path(self.cfg.image.backbone)
        return backbone_dir(self.cfg, self.data())

    @staticmethod
    def backbone_ready(path: Path) -> bool:
        return (path / cgan.GAN_META).is_file() and (path / cgan.GAN_FILE).is_file()

    def pretrain(self, out: Path, progress: bool = True) -> Path:
        return pretrain_gan(self.cfg, self.data(), out, progress)

    def ensure_backbone(self, progress: bool = True) -> Path:
        path = self.backbone_path()
        if self.backbone_ready(path):
            return path
        if self.cfg.image.backbone != "auto":
            raise FedgenError(
                f"GAN backbone {path} not found: give a saved GAN directory or image.backbone: auto"
            )
        if progress:
            print(f"No pretrained GAN for this config yet: pretraining one into {path}")
        return self.pretrain(path, progress)

    # -- experiment parts ----------------------------------------------------------------------
    def setup(self, trains: str, progress: bool = True) -> TaskSetup:
        cfg, i = self.cfg, self.cfg.image
        data = self.data()
        path = self.ensure_backbone(progress)
        gan, meta = cgan.load(path)
        for p in gan.parameters():
            p.requires_grad_(False)
        _, pool = splits(cfg, data)
        part = load_image_partition(cfg, data.train_y[pool])
        classifier = evaluation_classifier(cfg, data, progress)
        reference = ClassMixtureReference(classifier.features(data.test_x), data.test_y, len(CLASSES))
        d_state = {k: v.clone() for k, v in gan.discriminator.state_dict().items()}
        objective = GanObjective(
            nz=gan.config.nz,
            num_classes=len(CLASSES),
            discriminator_init=d_state if trains == "lora" else None,
            d_lr=i.d_lr or cfg.fl.lr,
            betas=(i.beta1, 0.999),
            diffaug=i.diffaug,
            ac_weight=i.ac_weight if gan.config.aux_classifier else 0.0,
            discriminator_buffers={k: v.clone() for k, v in gan.discriminator.named_buffers()},
            classifier=classifier,
            reference=reference,
            eval_samples=i.eval_samples,
            local_samples=i.local_samples,
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
        return TaskSetup(
            objective=objective,
            model=gan,
            data=clients,
            partition=part,
            eval_sets={"test": Images(torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))},
            backbone={
                "source": meta.get("source"),
                "path": str(path),
                "params": cgan.count(gan),
                "params_split": meta.get("params"),
                "architecture": meta.get("architecture"),
                "pretrain": meta.get("pretrain"),
                "recipe": meta.get("recipe"),
                "data_source": data.source,
                "classifier": classifier.meta,
            },
            adam_betas=(i.beta1, 0.999),
        )

    def add_adapter(self, model: nn.Module) -> nn.Module:
        """LoRA on the generator's convolutions: all of them, or those named in ``lora.targets``."""
        a = self.cfg.lora
        names = generator_conv_names(model)
        if a.targets is not None:
            unknown = sorted(set(a.targets) - set(names))
            if unknown:
                raise ConfigError(
                    f"config lora.targets: {unknown} are not generator convolutions (choose from {names})"
                )
            names = list(a.targets)
        return add_generator_lora(model, a.r, a.alpha, a.dropout, names)

    def personal_keys(self, model: nn.Module, keys: list[str], blocks: int) -> list[str]:
        return fedper_gan_personal_keys(model, keys, blocks)

    # -- outputs -------------------------------------------------------------------------------
    def finish(
        self, exp: ExperimentView, run_dir: Path, global_state: State | None, personal, progress: bool = True
    ) -> dict:
        """Inception FID/KID and the per-client view of the global and the clients' models, sample grids."""
        grids = sample_grids(exp, run_dir, global_state, personal)
        return {"fid": self.fid(exp, global_state, personal, progress=progress), "grids": grids}

    def fid(
        self, exp: ExperimentView, global_state: State | None, personal, n: int | None = None, progress=True
    ):
        """Inception FID/KID (global, FID-all, FID-avg) and the per-client view on ``n`` samples per
        model set (default ``image.fid_samples``); also ``fedgen fid RUN_DIR`` on a finished run."""
        n = n or self.cfg.image.fid_samples
        if progress:
            print(f"final metrics: Inception FID/KID on {n} samples per model set")
        return final_image_metrics(exp, self.data(), global_state, personal, n, progress)

    def export(self, exp: ExperimentView, out: Path) -> list[str]:
        return export_image(exp, out)

    def generate(self, exp: ExperimentView, run_dir: Path, who: str, opts: Any) -> str:
        gan = exp.objective
        assert isinstance(gan, GanObjective)  # the image task built it
        classes = gan.num_classes
        labels = torch.arange(classes).repeat_interleave(opts.num)
        out = Path(opts.out) if opts.out else run_dir / "samples" / f"generate-{who}-seed{opts.seed}.png"
        save_grid(gan.generate(exp.params.model, labels, seed=opts.seed), out, rows=classes)
        return f"{classes} classes x {opts.num} samples written to {out}"

    def describe_partition(self) -> str:
        import json

        data = self.data()
        part = load_image_partition(self.cfg, data.train_y[splits(self.cfg, data)[1]])
        return json.dumps(part.stats["summary"], indent=2)
