"""Config names -> tasks and algorithms. The only place that maps a name to an implementation.

Adding a task or an algorithm is one new module plus a config: register it here (built-ins)
or from your own code before the config is loaded::

    from fedgen.experiment.registry import register_task
    register_task("diffusion", MyDiffusionTask)

Built-in tasks are imported lazily, so importing fedgen does not import every task's
dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedgen.core.errors import ConfigError, FedgenError
from fedgen.fl.algorithms import ALGORITHMS, AlgorithmSpec, register_algorithm

if TYPE_CHECKING:
    from fedgen.config import Config
    from fedgen.tasks.base import Task, TaskReport

__all__ = ["algorithm", "algorithm_names", "make_task", "register_algorithm", "register_task", "task_class"]

_TASKS: dict[str, type | str] = {
    "text": "fedgen.tasks.text.task:TextTask",
    "image": "fedgen.tasks.image.task:ImageTask",
}


def register_task(name: str, cls: type | str) -> None:
    """Make ``task: name`` in a config select ``cls`` (a Task class or ``"module:Class"``)."""
    _TASKS[name] = cls


def task_names() -> list[str]:
    return sorted(_TASKS)


def task_class(name: str) -> type[Task]:
    """The Task class registered as ``name`` (a ConfigError naming the known ones otherwise)."""
    if name not in _TASKS:
        raise ConfigError(f"config task: unknown task {name!r} (registered: {', '.join(task_names())})")
    entry = _TASKS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _TASKS[name] = getattr(importlib.import_module(module), attr)
    return entry


def report_of(summary: dict) -> TaskReport:
    """The report pieces of the task that wrote ``summary`` (every summary.json names its task)."""
    if "task" not in summary:
        raise FedgenError("summary.json names no task: not written by this version of fedgen")
    return task_class(summary["task"]).report


def make_task(cfg: Config) -> Task:
    """The config's task, constructed from the config."""
    return task_class(cfg.task)(cfg)


def algorithm(name: str) -> AlgorithmSpec:
    if name not in ALGORITHMS:
        raise ConfigError(
            f"config algorithm.name: unknown algorithm {name!r} (registered: {', '.join(ALGORITHMS)})"
        )
    return ALGORITHMS[name]


def algorithm_names() -> list[str]:
    """Registered algorithms, in registration order (the comparison table's row order)."""
    return list(ALGORITHMS)


def check_config(cfg: Config) -> Config:
    """What only the registry can check: the algorithm and task names, what the algorithm can be
    combined with, and the task's own cross-field settings. Returns ``cfg``; ConfigError otherwise."""
    spec = algorithm(cfg.algorithm.name)
    if cfg.flower.secagg.enabled and spec.personalized == "kept":
        raise ConfigError(
            f"config algorithm.name: {cfg.algorithm.name} keeps per-client states, which the "
            "server mirrors for evaluation; not with flower.secagg"
        )
    task_class(cfg.task).check_config(cfg)
    return cfg
