"""Pre-train the CPU conditional-GAN backbone on the public CIFAR-10 slice (resumable), then score it.

    python scripts/pretrain_cgan.py --data /work/shared/data --root runs \\
        --classifier-cache runs/cache/classifier [--steps 2800] [--norm bn] [--threads 2]

``fedgen pretrain --config configs/cifar-cpu.yaml`` builds the same backbone (the image task uses
this recipe); this script adds the score and takes --steps / --norm for recipe experiments. The
backbone lands in ``ROOT/backbones/cgan-z128-g32-d32-<key>/`` (key: architecture + recipe + public
slice; the defaults give cifar-cpu.yaml's slot), its checkpoint in ``.../pretrain/`` while training:
rerunning the same command after a kill resumes. The score (FD-classifier and class accuracy of
1,000 class-balanced EMA samples) is added to the backbone's ``fedgen_gan.json`` under ``"eval"``.

``norm="bn"`` is the default, as in cifar-cpu.yaml: the short comparison favoured it on class
accuracy after 300 steps at width 16 (0.194 vs 0.098 for ``gn``, benchmarks/gan_recipes.py).
``gn`` (per-sample GroupNorm) keeps a sample independent of its batch: compare both at full length.
Measured on 1 thread: 0.56 (GN) / 0.58 (BN) CPU-s per step (batch 64, width 32): 2,800 steps ~ 27 CPU-min.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from fedgen.data.cifar10 import load_cifar10, public_split
from fedgen.gan_pretrain import Recipe, evaluate, pretrain, recipe_key, save_backbone
from fedgen.metrics.classifier import load_or_train_classifier
from fedgen.metrics.fid import images_digest
from fedgen.models import cgan
from fedgen.tasks.image.gan import Images

CPU_CONFIG = cgan.GanConfig(nz=128, ngf=32, ndf=32, norm="bn", aux_classifier=True)  # = cifar-cpu.yaml
CPU_RECIPE = Recipe(steps=2800)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--root", required=True, help="output root (backbones/ goes under it)")
    ap.add_argument("--classifier-cache", default=None, help="score the backbone with this classifier cache")
    ap.add_argument("--steps", type=int, default=CPU_RECIPE.steps)
    ap.add_argument("--norm", default=CPU_CONFIG.norm)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--public-fraction", type=float, default=0.1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data)
    public, _ = public_split(len(data.train_y), args.public_fraction, 0)  # as tasks.image.data.splits
    config, recipe = replace(CPU_CONFIG, norm=args.norm), replace(CPU_RECIPE, steps=args.steps)
    data_id = f"cifar10-public{args.public_fraction}-{images_digest(data.train_x[public])[:16]}"
    key = recipe_key(config, recipe, data_id)
    out = Path(args.root) / "backbones" / f"cgan-z{config.nz}-g{config.ngf}-d{config.ndf}-{key}"
    res = pretrain(data.train_x[public], data.train_y[public], config, recipe, out / "pretrain")
    meta = {
        "public_images": len(public),
        "public_fraction": args.public_fraction,
        "data": data_id,
        "data_source": data.source,
    }
    if args.classifier_cache:
        clf = load_or_train_classifier(
            data.train_x,
            data.train_y,
            data.test_x,
            data.test_y,
            Path(args.classifier_cache),
            epochs=8,
            seed=0,
        )
        test = Images(torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))
        meta["eval"] = {**evaluate(res.ema.module, clf, test, n=1000), "classifier": clf.meta["key"][:16]}
        print(json.dumps(meta["eval"]))
    path = save_backbone(res, out, recipe, meta)
    print(f"backbone: {path} ({res.steps} steps, {res.wall_seconds:.0f} s)")
    return path


if __name__ == "__main__":
    main()
