"""The paper's reported figures, shipped as package data (``fedgen/tasks/paper.json``).

They are copied from ``../shared/paper/README.md`` and are the paper's *claims*, never our
measurements: every table prints them in their own column, labelled as the paper's, and
``source()`` says where they come from. Algorithms are keyed by our registry names
(``fedgen``, ``fedavg-full``, ...).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources

COLUMN = "paper (reported, not ours)"


@cache
def _load() -> dict:
    return json.loads(resources.files("fedgen.tasks").joinpath("paper.json").read_text())


def load() -> dict:
    """The whole of paper.json (a copy)."""
    return copy.deepcopy(_load())


def source() -> str:
    """Where the figures come from, and that they are the paper's claims."""
    return _load()["source"]


def task(name: str) -> dict:
    """The paper's block for one task (``text``, ``image``; empty for a task the paper lacks)."""
    return copy.deepcopy(_load().get(name, {}))


def methods(name: str) -> dict[str, float]:
    """The paper's headline figure per algorithm for a task (PTB PPL, CIFAR-10 FID)."""
    return {alg: m["value"] for alg, m in task(name).get("methods", {}).items()}


def compare_figures(name: str) -> dict[str, dict[str, str]]:
    """The compare table's paper column: per algorithm, ``{what: value}`` as the paper states it."""
    t = task(name)
    out: dict[str, dict[str, str]] = {
        alg: {t["metric"]: f"{m['value']:g}"} for alg, m in t.get("methods", {}).items()
    }
    pers = t.get("personalization")
    if pers:
        out.setdefault(pers["algorithm"], {})["local PPL global -> personalized"] = (
            f"{pers['global']:g} -> {pers['personalized']:g}"
        )
    comm = t.get("communication")
    if comm:
        for alg in ("fedavg-full", "fedgen"):
            out.setdefault(alg, {})["upload"] = f"{comm[alg]} over {comm['rounds']} rounds (as quoted)"
    return out


def ablation_values() -> dict[str, list[int]]:
    """The swept values of the paper's ablations: ``{"rank": [...], "local_epochs": [...]}``."""
    return {k: list(v["values"]) for k, v in _load()["ablations"].items()}
