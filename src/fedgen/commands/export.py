"""``fedgen export --run DIR [--client K] OUT``: a run's global model, or client K's personalized one,
merged into a plain checkpoint that stock libraries load without fedgen (written by the task's
``export`` hook: :mod:`fedgen.tasks.text.export`, :mod:`fedgen.tasks.image.export`), with the
unmerged PEFT adapter beside it (``OUT/adapter/``, LoRA algorithms only).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedgen.config import load_config
from fedgen.core.errors import FedgenError
from fedgen.core.files import atomic_write_text
from fedgen.experiment.build import Experiment
from fedgen.experiment.run import saved_model_state
from fedgen.experiment.rundir import write_state


def export(run_dir: str | Path, out: str | Path, client: int | None = None) -> Path:
    """Export a finished run's global model (``client=None``) or client ``client``'s personalized one."""
    run, out = Path(run_dir), Path(out)
    if not (run / "config.yaml").is_file():
        raise FedgenError(f"{run} is not a run directory (no config.yaml)")
    exp = Experiment.build(load_config(run / "config.yaml"), progress=False)
    state = saved_model_state(exp, run, client)
    exp.params.load(state)
    if out.exists() and any(out.iterdir()):
        raise FedgenError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        files = exp.task.export(exp, out)
    if exp.peft_model is not None:
        write_state(out / "adapter", state, exp.peft_model)
        files.append("adapter/")
    who = "global model" if client is None else f"client {client}'s personalized model"
    atomic_write_text(
        out / "fedgen_export.json",
        json.dumps(
            {
                "run": str(run.resolve()),
                "model": who,
                "client": client,
                "task": exp.cfg.task,
                "algorithm": exp.spec.name,
                "seed": exp.cfg.seed,
                "backbone": exp.setup.backbone.get("source"),
                "adapter": "adapter/: the unmerged PEFT adapter (loads onto fedgen's backbone)"
                if exp.peft_model is not None
                else None,
                "files": files,
            },
            indent=2,
        ),
    )
    return out


# ------------------------------------------------------------------------------ the command


def cmd_export(args) -> int:
    out = export(args.run, args.out, args.client)
    print(f"exported to {out} (see {out}/fedgen_export.json)")
    return 0
