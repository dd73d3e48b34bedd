"""``fedgen compare``: every algorithm x every seed on the same data, partitions, backbone and
evaluation; resumable (finished runs are skipped, interrupted federated runs resumed); one
table of mean +- std over seeds, with the paper's numbers in their own, labelled column.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from fedgen.commands.options import config_of
from fedgen.config import Config
from fedgen.core.errors import FedgenError
from fedgen.core.files import atomic_write_json, atomic_write_text
from fedgen.experiment.build import Experiment, distribution
from fedgen.experiment.registry import algorithm_names, report_of, task_class
from fedgen.experiment.run import run_experiment
from fedgen.experiment.rundir import read_run_info
from fedgen.experiment.summary import backbone_digest, result_key
from fedgen.report.compare_table import markdown

ROW_FIELDS = [
    "algorithm",
    "seed",
    "upload_bytes_total",
    "upload_note",
    "trained_params",
    "upload_params",
    "rounds",
    "wall_seconds",
    "run_dir",
]


def run_one(cfg: Config, algorithm: str, seed: int, run_dir: Path, progress: bool) -> dict:
    """Run (or pick up) one (algorithm, seed) cell of the comparison.

    A finished run is reused, and an interrupted federated run resumed, only when it was made
    with the same result key (result-affecting config + results schema); a stale run is moved
    aside to ``<dir>.stale-<its key>[-N]`` (nothing is ever deleted) and run again. The key includes
    the backbone's weights (:func:`fedgen.experiment.summary.backbone_digest`): a retrained backbone is stale.
    """
    c = dataclasses.replace(cfg, seed=seed, algorithm=dataclasses.replace(cfg.algorithm, name=algorithm))
    if run_dir.exists():
        saved = read_run_info(run_dir).get("result_key")
        if saved != current_key(c):
            stale = _free_name(run_dir.with_name(f"{run_dir.name}.stale-{saved or 'unknown'}"))
            run_dir.rename(stale)  # moved aside, never deleted (an older .stale-* stays as it is)
            print(
                f"fedgen compare: {run_dir} was made with other settings, code or backbone; moved to "
                f"{stale}, rerunning"
            )
        elif (run_dir / "summary.json").is_file():
            return json.loads((run_dir / "summary.json").read_text())
        elif (run_dir / "state.json").is_file():
            return run_experiment(None, run_dir, resume=True, progress=progress)
        # else: started but no checkpoint yet (or local/central): run again in place (our own files)
    return run_experiment(c, run_dir, progress=progress)


def current_key(cfg: Config) -> str:
    """The result key a run of ``cfg`` gets now: its config and its backbone's weights as loaded."""
    return result_key(cfg, backbone_digest(Experiment.build(cfg, progress=False)))


def _free_name(path: Path) -> Path:
    """``path``, or ``path-N`` with the first N that does not exist."""
    out, i = path, 1
    while out.exists():
        out, i = path.with_name(f"{path.name}-{i}"), i + 1
    return out


def _mean_std(values: list[float | None]) -> dict | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def flatten(summary: dict) -> dict:
    """One table row from a run's summary: the generic fields and the task's compare columns."""
    task_report = report_of(summary)
    return {**{k: summary.get(k) for k in ROW_FIELDS}, **task_report.flatten(summary)}


def aggregate(rows: list[dict], columns: list[tuple[str, str]]) -> dict[str, dict]:
    """Mean and std over seeds of every column, per algorithm, plus upload reduction vs FedAvg-full."""
    table: dict[str, dict] = {}
    for alg in [a for a in ["backbone", *algorithm_names()] if any(r["algorithm"] == a for r in rows)]:
        rs = [r for r in rows if r["algorithm"] == alg]
        table[alg] = {key: _mean_std([r.get(key) for r in rs]) for key, _ in columns}
        table[alg]["seeds"] = sorted(r["seed"] for r in rs)
        table[alg]["upload_note"] = rs[0].get("upload_note")
    base = table.get("fedavg-full", {}).get("upload_bytes_total")
    for t in table.values():
        up = t["upload_bytes_total"]
        t["upload_reduction_vs_fedavg_full"] = (
            base["mean"] / up["mean"] if base and up and up["mean"] > 0 else None
        )
    return table


def backbone_summary(cfg: Config, seed: int, out: Path, progress: bool) -> dict:
    """The table's reference row: the frozen backbone (zero adapter), scored like every algorithm (cached)."""
    path = out / f"backbone-seed{seed}.json"
    c = dataclasses.replace(cfg, seed=seed, algorithm=dataclasses.replace(cfg.algorithm, name="central-lora"))
    import time

    t0 = time.time()
    exp = Experiment.build(c, progress=False)  # LoRA with B = 0: exactly the backbone
    key = result_key(c, backbone_digest(exp))
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("result_key") == key:
            return cached
    if progress:
        print("== backbone (no fine-tuning)")
    run_dir = out / f"backbone-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    local = exp.evaluate_local(lambda k: exp.init)
    summary = {
        "task": cfg.task,
        "algorithm": "backbone",
        "seed": seed,
        **{f"{k}_final": v for k, v in exp.evaluate_global(exp.init).items()},
        f"local_test_{exp.metric}_global_mean": distribution(list(local.values()))["mean"],
        **exp.task.finish(exp, run_dir, exp.init, None, progress),
        "upload_bytes_total": 0,
        "upload_note": "none: no training",
        "wall_seconds": round(time.time() - t0, 2),
        "result_key": key,
    }
    atomic_write_json(path, summary)
    return summary


def compare(
    cfg: Config,
    algorithms: list[str],
    seeds: list[int],
    out_dir: str | Path,
    progress: bool = True,
    reference: bool = True,
) -> dict:
    """Run the grid, write ``compare.json`` and ``compare.md`` into ``out_dir``; return the result.

    ``reference``: add the untouched backbone's row (scored like every run; a suite's sweeps skip it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        for alg in algorithms:
            if progress:
                print(f"== {alg}, seed {seed}")
            s = run_one(cfg, alg, seed, out / f"{alg}-seed{seed}", progress)
            rows.append(flatten(s))
    title = f"{cfg.name}: {len(algorithms)} algorithms x seeds {seeds}"
    backbone = [flatten(backbone_summary(cfg, seed, out, progress)) for seed in seeds] if reference else []
    report = task_class(cfg.task).report
    table = aggregate(backbone + rows, report.compare_columns)
    md = markdown(table, title, report.compare_columns, report.compare_notes(cfg), report.paper)
    result = {
        "config": cfg.to_dict(),
        "rows": rows,
        "reference": backbone,
        "table": table,
        "paper": report.paper,
    }
    atomic_write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", md + "\n")
    return {"markdown": md, **result}


# ------------------------------------------------------------------------------ the command


def cmd_compare(args) -> int:
    cfg = config_of(args)
    known = algorithm_names()
    algs = known if args.algorithms == "all" else [a.strip() for a in args.algorithms.split(",")]
    unknown = [a for a in algs if a not in known]
    if unknown:
        raise FedgenError(f"unknown algorithm(s) {unknown}; choose from {', '.join(known)} or 'all'")
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise FedgenError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    out = args.out or str(Path(cfg.output.root) / f"compare-{cfg.name}")
    result = compare(cfg, algs, seeds, out, progress=not args.quiet)
    print()
    print(result["markdown"])
    print(f"\nwritten: {out}/compare.json, {out}/compare.md")
    return 0
