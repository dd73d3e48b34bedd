"""``fedgen pretrain``, ``fedgen generate`` and ``fedgen fid``: a task's backbone, and a finished
run's models."""

from __future__ import annotations

from pathlib import Path

from fedgen.commands.options import config_of
from fedgen.config import load_config
from fedgen.core.errors import FedgenError
from fedgen.experiment.build import Experiment
from fedgen.experiment.registry import make_task
from fedgen.experiment.run import recompute_fid, saved_model_state


def cmd_pretrain(args) -> int:
    cfg = config_of(args)
    if args.task and args.task != cfg.task:
        raise FedgenError(f"--task {args.task}: the config is for the {cfg.task} task (set task: in it)")
    task = make_task(cfg)
    out = Path(args.out) if args.out else task.backbone_path()
    if task.backbone_ready(out) and not args.force:
        print(f"backbone already exists: {out} (use --force to retrain)")
        return 0
    task.pretrain(out, progress=not args.quiet)
    return 0


def cmd_generate(args) -> int:
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise FedgenError(f"{run} is not a run directory (no config.yaml)")
    exp = Experiment.build(load_config(run / "config.yaml"), progress=False)
    exp.params.load(saved_model_state(exp, run, args.client))
    who = "global" if args.client is None else f"client_{args.client:03d}"
    print(exp.task.generate(exp, run, who, args))
    return 0


def cmd_fid(args) -> int:
    table, written = recompute_fid(args.run_dir, args.n, progress=not args.quiet)
    print(table)
    print(f"\nwritten: {', '.join(written)}")
    return 0
