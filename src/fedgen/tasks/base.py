"""What a task is: the one interface between the generic experiment core and a task.

A *task* (text on PTB, images on CIFAR-10, ...) owns everything task-specific: its data and
partition, its frozen backbone (pre-training + cache), where the LoRA adapters go, the
training objective, evaluation, end-of-run metrics, samples and its section of the report.
The experiment layer (:mod:`fedgen.experiment.build`, ``.loop``, ``.run``) only talks to
these protocols and never asks which task it runs:

* :class:`Objective`: what the one training loop (:func:`fedgen.fl.client.local_train`) and
  the evaluation need: batches, loss, per-session setup, scores.
* :class:`Task`: builds an experiment's parts from the config (:class:`TaskSetup`) and writes
  the task's outputs.

A new task is one module with a class implementing :class:`Task`, registered under a config
name with :func:`fedgen.experiment.registry.register_task`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from torch import nn

if TYPE_CHECKING:
    from fedgen.config import Config
    from fedgen.models.params import ParamSet, State


@dataclass
class ClientData:
    """One client's local data: training examples and held-out evaluation data (task-defined)."""

    client_id: int
    train: Any  # task examples with len(): [n, context + 1] token windows, or Images
    test: Any  # evaluation data: a token stream, or Images


class Objective(Protocol):
    """The training/evaluation side of a task, as the training loop and the evaluators see it."""

    metric: str  # the per-client quality figure (lower is better), e.g. "ppl"

    @property
    def global_keys(self) -> tuple[str, ...]:  # figures of ``evaluate`` reported per global evaluation set
        ...

    def batches(self, examples: Any, batch_size: int, generator: Any) -> Iterator[Any]: ...
    def concat(self, parts: list[Any]) -> Any: ...
    def has_eval_data(self, data: Any) -> bool: ...
    def holdout(self, examples: Any, fraction: float) -> tuple[Any, Any]: ...  # (train, validation data)
    def loss_params(self, named: dict[str, nn.Parameter]) -> list[nn.Parameter]: ...
    def begin_local(self, model: nn.Module, named: dict[str, nn.Parameter], cfg: Any) -> Callable | None: ...
    def loss(self, model: nn.Module, batch: Any) -> Any: ...
    def evaluate(self, model: nn.Module, data: Any, batch_size: int) -> dict[str, float]: ...
    def client_metric(self, model: nn.Module, data: Any, batch_size: int) -> float: ...


@dataclass
class TaskSetup:
    """An experiment's task-specific parts, built once from the config by :meth:`Task.setup`."""

    objective: Objective
    model: nn.Module  # the frozen backbone (no adapter yet)
    data: dict[int, ClientData]  # every client's train/test split
    partition: Any  # has ``save(path)``: the client partition and its statistics
    eval_sets: dict[str, Any]  # global evaluation data by split name ("valid", "test", ...)
    backbone: dict[str, Any]  # summary.json's "backbone": source, path, params, architecture, ...
    adam_betas: tuple[float, float] = (0.9, 0.999)


class ExperimentView(Protocol):
    """What a task's end-of-run hooks read of the experiment they run in (the experiment layer's
    :class:`fedgen.experiment.build.Experiment` provides it; tasks never import that layer)."""

    cfg: Config
    setup: TaskSetup  # the task's own parts, as its ``setup`` built them
    params: ParamSet  # the model with its trained parameter set: ``params.load(state)``, ``params.model``

    @property
    def objective(self) -> Objective: ...

    @property
    def data(self) -> dict[int, ClientData]: ...


class TaskReport(Protocol):
    """A task's report pieces; they read only run outputs (summary, metrics), never a model."""

    compare_columns: list[tuple[str, str]]  # (summary key, label) of the ``fedgen compare`` table
    paper: dict[str, dict]  # the paper's reported figures per algorithm (labelled as the paper's)

    def result_table(self, summary: dict) -> str: ...
    def write_report(self, run_dir: Path, summary: dict, metrics: list[dict], pers: dict | None) -> Path: ...
    def compare_notes(self, cfg: Config) -> str: ...
    def flatten(self, summary: dict) -> dict: ...


class Task(Protocol):
    """A task, constructed from a validated config."""

    name: ClassVar[str]
    report: ClassVar[TaskReport]

    def __init__(self, cfg: Config) -> None: ...

    @staticmethod
    def training_examples(cfg: Config) -> int | None:
        """Training examples over all clients, for a suite plan's step estimates (None: unknown here)."""

    @staticmethod
    def check_config(cfg: Config) -> None:
        """Cross-field checks of the task's own settings; raise ConfigError naming the key."""

    def backbone_path(self) -> Path:
        """Where this config's backbone lives (the cache slot ``fedgen pretrain`` fills, or the given one)."""

    def backbone_ready(self, path: Path) -> bool: ...

    def pretrain(self, out: Path, progress: bool = True) -> Path:
        """Build the task's offline backbone into ``out``."""

    def setup(self, trains: str, progress: bool = True) -> TaskSetup:
        """Load + verify the data, partition it, ensure and load the frozen backbone.

        ``trains`` is what the algorithm trains: ``"lora"`` or ``"full"``.
        """

    def add_adapter(self, model: nn.Module) -> nn.Module:
        """Wrap the frozen backbone with LoRA on the task's target modules (B = 0)."""

    def personal_keys(self, model: nn.Module, keys: list[str], blocks: int) -> list[str]:
        """FedPer: the parameter keys of the last ``blocks`` blocks that stay on the client."""

    def finish(
        self, exp: ExperimentView, run_dir: Path, global_state: State | None, personal, progress: bool = True
    ) -> dict:
        """End-of-run metrics and samples of the global model and the clients' models
        (``personal(k)``: client k's deployed state, or None); returns fields added to summary.json."""

    def generate(self, exp: ExperimentView, run_dir: Path, who: str, opts: Any) -> str:
        """``fedgen generate``: sample from the loaded model; returns what to print."""

    def export(self, exp: ExperimentView, out: Path) -> list[str]:
        """``fedgen export``: write the loaded model (LoRA merged) in a format stock libraries load
        without fedgen into the empty directory ``out``; returns the file names written."""

    def describe_partition(self) -> str:
        """``fedgen data partition``: the partition's statistics as text."""
