"""``fedgen reproduce``: the paper's experiments as one resumable suite, then its report.

A suite is, per task (text, image): the main comparison (every registered algorithm x seeds)
and FedGen-Edge's two ablations, LoRA rank r in (2, 4, 8, 16, 32) and local epochs E in
(1, 2, 5, 10, 20) (the paper's Figs. 6 and 7). Each (task, sweep value) is one
:func:`fedgen.commands.compare.compare` call into its own directory, so the suite is resumable exactly
like ``fedgen compare`` (finished runs whose result key matches are skipped, interrupted ones
resumed). The sweep value equal to the task config's own (e.g. r = 8 for text) is not run again:
the report reads FedGen-Edge's rows of the main comparison for it. The rank sweep keeps the
config's ``lora.alpha`` (scaling alpha / r, as in Hu et al. 2021).

Layout of ``OUT``: ``suite.json`` (the plan, progress, wall time), ``<task>/`` (main comparison),
``<task>-rank-r<r>/``, ``<task>-epochs-E<E>/``, then ``report.md`` + ``figures/`` (see
:mod:`fedgen.report.suite`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgen.commands.compare import compare
from fedgen.config import Config, clients_per_round, config_from_dict, load_config
from fedgen.core.errors import FedgenError
from fedgen.core.files import atomic_write_text
from fedgen.experiment.registry import algorithm, algorithm_names, check_config, task_class
from fedgen.report.suite import write_suite_report
from fedgen.tasks import paper

SUITES = {
    "cpu": {"text": "configs/ptb-smollm2-cpu.yaml", "image": "configs/cifar-cpu.yaml"},
    "paper": {"text": "configs/ptb-paper.yaml", "image": "configs/cifar-paper.yaml"},
}
# Extra main comparisons, without sweeps, named apart from the task: the cpu suite's text task
# on the small offline-pretrained GPT-2 (every output labels that backbone as ours).
EXTRAS = {"cpu": {"text-small": "configs/ptb-cpu.yaml"}, "paper": {}}
SWEEP_ALGORITHM = "fedgen"
RANKS = tuple(paper.ablation_values()["rank"])
EPOCHS = tuple(paper.ablation_values()["local_epochs"])
KINDS = ("main", "rank", "epochs")


@dataclass
class PlanPart:
    """One compare call of the suite (``same_as``: not run, the named main part holds its rows)."""

    name: str
    task: str
    kind: str  # "main" | "rank" | "epochs"
    value: int | None
    cfg: Config
    algorithms: list[str]
    same_as: str | None = None

    @property
    def dir(self) -> str:
        return self.same_as or self.name

    def meta(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "kind": self.kind,
            "value": self.value,
            "dir": self.dir,
            "same_as": self.same_as,
            "algorithm": SWEEP_ALGORITHM if self.kind != "main" else None,
            "algorithms": self.algorithms,
            "config": self.cfg.name,
        }


def config_path(rel: str) -> Path:
    """A suite config: ``configs/...`` of this source tree, else relative to the working directory."""
    repo = Path(__file__).resolve().parents[3] / rel
    return repo if repo.is_file() else Path(rel)


def _with(cfg: Config, section: str, name: str, **values) -> Config:
    """A copy of ``cfg`` with ``section``'s fields replaced, validated again."""
    c = dataclasses.replace(cfg, name=name, **{section: dataclasses.replace(getattr(cfg, section), **values)})
    return check_config(config_from_dict(c.to_dict()))


def extra_configs(suite: str, overrides: list[str] | None = None, tasks: list[str] | None = None):
    """The suite's ``EXTRAS`` (name -> config), only those of ``tasks`` when given."""
    extras = {n: check_config(load_config(config_path(p), overrides)) for n, p in EXTRAS[suite].items()}
    return {n: c for n, c in extras.items() if tasks is None or c.task in tasks}


def plan(
    suite: str | None = None,
    *,
    configs: dict[str, Config] | None = None,
    overrides: list[str] | None = None,
    algorithms: list[str] | None = None,
    ranks: tuple[int, ...] = RANKS,
    epochs: tuple[int, ...] = EPOCHS,
    kinds: tuple[str, ...] = KINDS,
    extras: dict[str, Config] | None = None,
) -> list[PlanPart]:
    """The suite's parts: per task the main comparison, then the rank and local-epoch sweeps; then
    the ``extras`` (name -> config: main comparisons only; a suite's own: ``EXTRAS``)."""
    if configs is None:
        if suite not in SUITES:
            raise FedgenError(f"--suite: expected one of {', '.join(SUITES)}, got {suite!r}")
        configs = {t: check_config(load_config(config_path(p), overrides)) for t, p in SUITES[suite].items()}
        if extras is None:
            extras = extra_configs(suite, overrides)
    algs = algorithms or algorithm_names()
    parts: list[PlanPart] = []
    for task, cfg in configs.items():
        main = "main" in kinds
        if main:
            parts.append(PlanPart(task, task, "main", None, cfg, list(algs)))
        sweeps = [("rank", ranks, "lora", "r", "r"), ("epochs", epochs, "fl", "local_epochs", "E")]
        # A sweep measures the global model after the last round: no per-client fine-tuning after it
        # (it would not change the swept figures). The main comparison's run is reused at the base value.
        swept = _with(cfg, "personalize", cfg.name, enabled=False)
        for kind, values, section, field, tag in sweeps:
            if kind not in kinds:
                continue
            base = getattr(getattr(cfg, section), field)
            for v in values:
                name = f"{task}-{kind}-{tag}{v}"
                same = task if main and v == base and SWEEP_ALGORITHM in algs else None
                c = _with(swept, section, f"{cfg.name}-{tag}{v}", **{field: v})
                parts.append(PlanPart(name, task, kind, v, c, [SWEEP_ALGORITHM], same))
    if "main" in kinds:
        parts += [PlanPart(n, c.task, "main", None, c, list(algs)) for n, c in (extras or {}).items()]
    return parts


# ------------------------------------------------------------------------------------ the plan


def local_steps(cfg: Config, alg: str, examples: int | None) -> int | None:
    """Expected optimizer steps of one run (clients of equal size; FedGen-Edge's fine-tuning included)."""
    if examples is None:
        return None
    f, k = cfg.fl, cfg.data.num_clients
    per_client = math.ceil(examples / k / f.batch_size)  # batches per client epoch
    m = clients_per_round(f.fraction, k)
    budget = max(1, int(round(f.rounds * m / k * f.local_epochs)))  # Experiment.budget_epochs
    spec = algorithm(alg)
    if spec.mode == "local":
        return k * budget * per_client
    if spec.mode == "central":
        return budget * math.ceil(examples / f.batch_size)
    steps = f.rounds * m * f.local_epochs * per_client * spec.fits_per_round
    if spec.personalized == "finetune" and cfg.personalize.enabled:
        steps += k * cfg.personalize.epochs * per_client
    return steps


def plan_rows(parts: list[PlanPart], seeds: list[int]) -> list[dict]:
    """Every run of the plan: part, task, algorithm, seed and its settings (``runs in``: its directory)."""
    examples = {}
    rows = []
    for p in parts:
        c = p.cfg
        key = (p.task, c.digest("data", "model", "fl"))
        if key not in examples:
            examples[key] = task_class(p.task).training_examples(c)
        for seed in seeds:
            for alg in p.algorithms:
                rows.append(
                    {
                        "part": p.name,
                        "task": p.task,
                        "algorithm": alg,
                        "seed": seed,
                        "rounds": c.fl.rounds,
                        "K": c.data.num_clients,
                        "C": c.fl.fraction,
                        "m": clients_per_round(c.fl.fraction, c.data.num_clients),
                        "E": c.fl.local_epochs,
                        "batch": c.fl.batch_size,
                        "r": c.lora.r,
                        "steps": local_steps(c, alg, examples[key]),
                        "runs_in": p.dir,
                        "new": p.same_as is None,
                    }
                )
    return rows


def describe(parts: list[PlanPart], seeds: list[int]) -> str:
    """The run plan as a text table (``fedgen reproduce --dry-run``)."""
    rows = plan_rows(parts, seeds)
    cols = ["part", "task", "algorithm", "seed", "rounds", "K", "C", "m", "E", "batch", "r", "steps"]
    out = [" | ".join(["run", *cols[:-1], "~local steps"])]
    for i, r in enumerate(rows, 1):
        cells = [str(r[c]) if r[c] is not None else "n/a (no data)" for c in cols]
        note = "" if r["new"] else f"  (= main part '{r['runs_in']}', not run again)"
        out.append(" | ".join([str(i), *cells]) + note)
    new = [r for r in rows if r["new"]]
    steps = [r["steps"] for r in new if r["steps"] is not None]
    out.append(
        f"{len(new)} runs to do ({len(rows) - len(new)} shared with the main comparison) in "
        f"{len({r['runs_in'] for r in new})} compare directories; ~{sum(steps):,} local optimizer steps"
        + ("" if len(steps) == len(new) else " (runs without data not counted)")
        + ". Steps: clients of equal size, ceil(examples / K / batch) batches per client epoch."
    )
    return "\n".join(out)


# ------------------------------------------------------------------------------------- running


def run_suite(
    parts: list[PlanPart],
    seeds: list[int],
    out: str | Path,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Run every part (resumable), keep ``suite.json`` current, then write the suite report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_file = out / "suite.json"
    old = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    invocations = [*old.get("invocations", []), {"command": command, "seconds": 0.0}]
    meta: dict[str, Any] = {
        "command": command,
        "seeds": seeds,
        "parts": [p.meta() for p in parts],
        "status": "running",
    }
    t0 = time.time()

    def save(status: str) -> None:
        invocations[-1]["seconds"] = round(time.time() - t0, 1)
        meta.update(status=status, invocations=invocations)
        meta["wall_seconds"] = round(sum(i["seconds"] for i in invocations), 1)
        atomic_write_text(meta_file, json.dumps(meta, indent=2))

    todo = [p for p in parts if p.same_as is None]
    save("running")
    for i, p in enumerate(todo, 1):
        if progress:
            print(f"[{i}/{len(todo)}] {p.name}: {', '.join(p.algorithms)} x seeds {seeds} -> {out / p.dir}")
        t = time.time()
        compare(p.cfg, p.algorithms, seeds, out / p.dir, progress=progress, reference=p.kind == "main")
        meta["parts"][parts.index(p)]["wall_seconds"] = round(time.time() - t, 1)
        save("running")
    save("finished")
    return write_suite_report(out)


# ------------------------------------------------------------------------------ the command


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise FedgenError(f"--seeds: expected comma-separated integers, got {text!r}") from None


def cmd_reproduce(args) -> int:
    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(SUITES[args.suite])
    kinds = tuple(k.strip() for k in args.only.split(",")) if args.only else KINDS
    if set(tasks) - set(SUITES[args.suite]) or set(kinds) - set(KINDS):
        raise FedgenError(
            f"--tasks: choose from {', '.join(SUITES[args.suite])}; --only: from {', '.join(KINDS)}"
        )
    given = {"text": args.text_config, "image": args.image_config}
    configs = {t: load_config(given[t] or config_path(SUITES[args.suite][t]), overrides) for t in tasks}
    known = algorithm_names()
    algs = known if args.algorithms == "all" else [a.strip() for a in args.algorithms.split(",")]
    if set(algs) - set(known):
        raise FedgenError(
            f"unknown algorithm(s) {sorted(set(algs) - set(known))}; choose from {', '.join(known)}"
        )
    extras = extra_configs(args.suite, overrides, tasks)
    parts = plan(configs=configs, algorithms=algs, kinds=kinds, extras=extras)
    seeds = _seeds(args.seeds)
    if args.dry_run:
        print(describe(parts, seeds))
        return 0
    out = args.out or str(Path(next(iter(configs.values())).output.root) / f"reproduce-{args.suite}")
    command = "fedgen " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    report = run_suite(parts, seeds, out, progress=not args.quiet, command=command)
    print(f"\nsuite report: {report}")
    return 0
