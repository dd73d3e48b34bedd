"""Resumable, deterministic pre-training of the conditional GAN of :mod:`fedgen.models.cgan`.

One step = ``n_dis`` discriminator steps + one generator step, hinge loss, DiffAugment on every
image D sees, optional AC-GAN class loss (D: on real images; G: on its fakes), Adam with TTUR
rates, and an EMA of the generator's weights (:class:`fedgen.models.cgan.EMA`), which is what
:func:`pretrain` returns and saves as the backbone.

Determinism and resume: all randomness of step ``t`` (noise, augmentation) comes from a
``torch.Generator`` seeded with ``derive_seed(seed, "step", t)``, and the data order of epoch
``e`` from ``derive_seed(seed, "epoch", e)``; nothing uses the global RNG. A checkpoint
(``ckpt_dir/checkpoint.pt``: G, D, EMA, both Adam states, step) is written atomically every
``checkpoint_every`` steps, so a killed run resumes from its last checkpoint and ends with
the same tensors, bit for bit on the same CPU and thread count, as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from fedgen.core.seeding import derive_seed
from fedgen.models import cgan
from fedgen.models.cgan import discriminator_loss, generator_loss
from fedgen.tasks.image.gan import ClassMixtureReference, GanObjective, Images, to_float

CHECKPOINT = "checkpoint.pt"


@dataclass
class Recipe:
    """Training hyper-parameters (the architecture is :class:`fedgen.models.cgan.GanConfig`)."""

    steps: int = 4000
    batch_size: int = 64
    g_lr: float = 2e-4
    d_lr: float = 4e-4  # TTUR (Heusel et al. 2017): D faster than G
    betas: tuple[float, float] = (0.0, 0.999)
    n_dis: int = 1
    ema_decay: float = 0.999
    diffaug: str = "color,translation,cutout"  # "" = no augmentation
    ac_weight: float = 1.0  # AC-GAN class loss weight (used when the GanConfig has aux_classifier)
    seed: int = 0


@dataclass
class PretrainResult:
    gan: cgan.CondGAN  # G and D as trained
    ema: cgan.EMA  # ema.module: the EMA generator (the backbone's generator)
    steps: int
    wall_seconds: float  # training time summed over resumed pieces
    cpu_seconds: float  # process CPU time of the same (= compute when other processes share the cores)
    history: list[dict] = field(default_factory=list)


def recipe_key(config: cgan.GanConfig, recipe: Recipe, data_id: str) -> str:
    """12 hex digits naming (architecture, recipe, training data): the backbone cache slot."""
    blob = {"arch": cgan.ARCH, "config": asdict(config), "recipe": asdict(recipe), "data": data_id}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _batch_indices(n: int, batch_size: int, seed: int, b: int) -> torch.Tensor:
    """Indices of the ``b``-th mini-batch of the run (epochs of full batches, reshuffled each epoch)."""
    per_epoch = n // batch_size
    epoch, pos = divmod(b, per_epoch)
    g = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=g)[pos * batch_size : (pos + 1) * batch_size]


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pretrain(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    config: cgan.GanConfig,
    recipe: Recipe,
    ckpt_dir: str | Path | None = None,
    *,
    checkpoint_every: int = 250,
    stop_at: int | None = None,
    cpu_limit: float | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train on uint8 NHWC images ``x`` with labels ``y`` for ``recipe.steps`` steps.

    With ``ckpt_dir``, resumes from its checkpoint if there is one and checkpoints every
    ``checkpoint_every`` steps and at the end. ``stop_at`` ends the run early after that step
    (checkpointed), as a kill would: tests and time-sliced runs. ``cpu_limit`` ends it once this
    call has used that many seconds of process CPU time (recipe comparisons at equal compute).
    """

    x = torch.as_tensor(np.ascontiguousarray(x))
    y = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if len(x) < recipe.batch_size:
        raise ValueError(f"{len(x)} images are fewer than one batch of {recipe.batch_size}")
    gan = cgan.build(config, recipe.seed)
    G, D = gan.generator, gan.discriminator
    ema = cgan.EMA(G, recipe.ema_decay)
    betas = cast(tuple[float, float], tuple(recipe.betas))  # tuple(): a caller may pass a list
    opt_g = torch.optim.Adam(G.parameters(), lr=recipe.g_lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=recipe.d_lr, betas=betas)
    step, wall, cpu, history = 0, 0.0, 0.0, []
    ckpt = Path(ckpt_dir) / CHECKPOINT if ckpt_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        st = torch.load(ckpt, weights_only=True)
        gan.load_state_dict(st["gan"])
        ema.module.load_state_dict(st["ema"])
        opt_g.load_state_dict(st["opt_g"])
        opt_d.load_state_dict(st["opt_d"])
        step, ema.updates, wall, history = st["step"], st["ema_updates"], st["wall"], st["history"]
        cpu = st.get("cpu", 0.0)
    end = recipe.steps if stop_at is None else min(stop_at, recipe.steps)
    ac = recipe.ac_weight if config.aux_classifier else 0.0

    def checkpoint() -> None:
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(
            {
                "gan": gan.state_dict(),
                "ema": ema.module.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "step": step,
                "ema_updates": ema.updates,
                "wall": wall,
                "cpu": cpu,
                "history": history,
            },
            ckpt,
        )

    gan.train()
    bar = tqdm(total=recipe.steps, initial=step, desc="pretrain cGAN", disable=not progress, smoothing=0.05)
    t0 = time.perf_counter()
    cpu0 = c0 = time.process_time()
    acc = {"d": 0.0, "g": 0.0, "n": 0}
    while step < end:
        gen = torch.Generator().manual_seed(derive_seed(recipe.seed, "step", step))
        for k in range(recipe.n_dis):
            idx = _batch_indices(len(x), recipe.batch_size, recipe.seed, step * recipe.n_dis + k)
            real, labels = to_float(x[idx]), y[idx]
            with torch.no_grad():
                fake = G(torch.randn(len(idx), config.nz, generator=gen), labels)
            loss_d = discriminator_loss(D, real, fake, labels, gen, recipe.diffaug, ac)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        D.requires_grad_(False)
        fake = G(torch.randn(len(idx), config.nz, generator=gen), labels)
        loss_g = generator_loss(D, fake, labels, gen, recipe.diffaug, ac)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        ema.update(G)
        step += 1
        if cpu_limit is not None and time.process_time() - cpu0 >= cpu_limit:
            end = step
        acc["d"], acc["g"], acc["n"] = acc["d"] + loss_d.item(), acc["g"] + loss_g.item(), acc["n"] + 1
        bar.update(1)
        if step % 50 == 0 or step == end:
            history.append({"step": step, "loss_d": acc["d"] / acc["n"], "loss_g": acc["g"] / acc["n"]})
            bar.set_postfix(loss_d=f"{history[-1]['loss_d']:.3f}", loss_g=f"{history[-1]['loss_g']:.3f}")
            acc = {"d": 0.0, "g": 0.0, "n": 0}
        if step % checkpoint_every == 0 or step == end:
            wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            checkpoint()
    bar.close()
    wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
    return PretrainResult(gan, ema, step, wall, cpu, history)


def checkpoint_generator(ckpt_dir: str | Path, config: cgan.GanConfig) -> tuple[cgan.Generator, int]:
    """The EMA generator stored in a (possibly unfinished) run's checkpoint, and its step."""
    st = torch.load(Path(ckpt_dir) / CHECKPOINT, weights_only=True)
    g = cgan.Generator(config)
    g.load_state_dict(st["ema"])
    return g, st["step"]


def save_backbone(result: PretrainResult, path: str | Path, recipe: Recipe, meta: dict) -> Path:
    """The backbone directory: EMA generator + trained discriminator, recipe and provenance in the JSON."""
    gan_d = result.gan.discriminator
    info = {
        "recipe": asdict(recipe),
        "steps": result.steps,
        "wall_seconds": round(result.wall_seconds, 1),
        "cpu_seconds": round(result.cpu_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "params": {"generator": cgan.count(result.gan.generator), "discriminator": cgan.count(gan_d)},
        "generator_weights": "EMA",
        **meta,
    }
    return cgan.save(result.gan, path, info, generator=result.ema.module)


@torch.no_grad()
def evaluate(generator, classifier, test: Images, n: int = 1000) -> dict:
    """FD-classifier and class accuracy of ``n`` class-balanced samples, the project's way.

    Uses :meth:`fedgen.tasks.image.gan.GanObjective.evaluate`, as every run scores its models
    (class-mixed batches of 100 from fixed seeds).
    """

    generator.eval()
    feats = classifier.features(test.x.numpy())
    ref = ClassMixtureReference(feats, test.y.numpy(), 10)
    task = GanObjective(
        nz=generator.nz,
        num_classes=10,
        discriminator_init=None,
        d_lr=0.0,
        betas=(0.0, 0.0),
        classifier=classifier,
        reference=ref,
        eval_samples=n,
    )
    # cast: evaluate only reads the model's .generator (through gan_of)
    out = task.evaluate(cast(torch.nn.Module, SimpleNamespace(generator=generator)), test)
    generator.train()
    return out
