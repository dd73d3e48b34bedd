"""A suite's parts: the ``fedgen compare`` output directories a suite report is built from, and
small readers of their run outputs (compare.json, metrics.jsonl, summary.json, ...)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedgen.core.files import read_jsonl
from fedgen.experiment.registry import task_class
from fedgen.tasks.base import TaskReport

SUITE_FILE = "suite.json"


@dataclass
class Part:
    """One compare directory of the suite."""

    name: str
    task: str
    kind: str  # "main" | "rank" | "epochs"
    value: int | None  # the swept value (sweeps)
    dir: Path
    compare: dict  # its compare.json
    algorithm: str = "fedgen"  # the swept algorithm (sweeps)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def is_suite(path: Path) -> bool:
    return (path / SUITE_FILE).is_file() or bool(_compare_dirs(path))


def _compare_dirs(root: Path) -> list[Path]:
    if (root / "compare.json").is_file():
        return [root]
    return sorted(d for d in root.iterdir() if (d / "compare.json").is_file()) if root.is_dir() else []


def find_parts(root: Path) -> list[Part]:
    """The finished parts of a suite: those in suite.json, else every compare dir (as main parts)."""
    meta = read_json(root / SUITE_FILE)
    if meta is None:
        return [
            Part(d.name, c["config"]["task"], "main", None, d, c)
            for d in _compare_dirs(root)
            if (c := read_json(d / "compare.json"))
        ]
    parts = []
    for p in meta["parts"]:
        d = root / p["dir"]
        c = read_json(d / "compare.json")
        if c is not None:
            parts.append(
                Part(p["name"], p["task"], p["kind"], p.get("value"), d, c, p.get("algorithm", "fedgen"))
            )
    return parts


def seed_runs(part: Part, alg: str) -> list[tuple[int, Path]]:
    """``(seed, run dir)`` of one algorithm in a part (a moved suite: the dir next to compare.json)."""
    out = []
    for row in part.compare["rows"]:
        if row["algorithm"] == alg:
            d = part.dir / f"{alg}-seed{row['seed']}"
            out.append((row["seed"], d if d.is_dir() else Path(row.get("run_dir") or d)))
    return out


def run_dirs(part: Part, alg: str) -> list[Path]:
    return [d for _, d in seed_runs(part, alg)]


def read_metrics(run: Path) -> list[dict]:
    """A run's metrics.jsonl rows (a torn last line, left by a crash, is dropped with a warning)."""
    return read_jsonl(run / "metrics.jsonl")


def task_spec(task: str) -> tuple[TaskReport, dict]:
    """A task's report pieces and its suite-report spec (its ``suite`` attribute, else a default)."""
    rep = task_class(task).report
    return rep, getattr(rep, "suite", None) or {
        "metric": (rep.compare_columns[0][0], rep.compare_columns[0][1]),
        "fallback": None,
        "convergence": [],
        "client_metric": ("", "local metric"),
        "log_y": False,
    }


def mean_std(cell: dict | None, nd: int = 2) -> str:
    return "n/a" if not cell else f"{cell['mean']:.{nd}f} +- {cell['std']:.{nd}f}"


def algorithms(part: Part) -> list[str]:
    return [a for a in part.compare["table"] if a != "backbone"]


def headline(part: Part) -> dict[str, tuple[dict | None, bool]]:
    """Per algorithm the headline cell (metric, or the fallback for algorithms without a global model)."""
    _, spec = task_spec(part.task)
    out = {}
    for alg, t in part.compare["table"].items():
        cell, fb = t.get(spec["metric"][0]), False
        if cell is None and spec.get("fallback"):
            cell, fb = t.get(spec["fallback"][0]), True
        out[alg] = (cell, fb)
    return out
