"""One experiment's parts, built once from a config: task x algorithm, with no task branches.

:meth:`Experiment.build` asks the config's task (:func:`fedgen.experiment.registry.make_task`) for its data,
partition and frozen backbone, wraps the backbone with the task's LoRA adapter when the
algorithm trains LoRA, and fixes the trained parameter set and the round-0 state. Everything
else (the loops in :mod:`fedgen.experiment.loop`, the run directory in
:mod:`fedgen.experiment.run`) works on this object.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fedgen.config import Config, clients_per_round
from fedgen.core.device import resolve
from fedgen.core.seeding import derive_seed
from fedgen.experiment.registry import algorithm, check_config, make_task
from fedgen.fl.algorithms import AlgorithmSpec, ClientLogic, LogicInputs
from fedgen.fl.client import Client, LocalTrainConfig
from fedgen.models.lora import init_adapter
from fedgen.models.params import ParamSet, State
from fedgen.tasks.base import ClientData, Objective, Task, TaskSetup


@dataclass
class Experiment:
    """Everything a run needs: the task and its parts, the algorithm, the trained parameters."""

    cfg: Config
    spec: AlgorithmSpec
    task: Task
    setup: TaskSetup
    params: ParamSet
    client: Client
    init: State  # round-0 state: backbone + zero adapter (LoRA) or the backbone itself (full)

    @property
    def objective(self) -> Objective:
        return self.setup.objective

    @property
    def data(self) -> dict[int, ClientData]:
        return self.setup.data

    @property
    def metric(self) -> str:
        """The per-client quality figure (lower is better), e.g. "ppl"."""
        return self.objective.metric

    @property
    def peft_model(self):
        """The PEFT model, to save LoRA states as PEFT adapters (None for full-model training)."""
        return self.params.model if self.spec.trains == "lora" else None

    @classmethod
    def build(cls, cfg: Config, progress: bool = True) -> Experiment:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        spec = algorithm(check_config(cfg).algorithm.name)
        task = make_task(cfg)
        setup = task.setup(spec.trains, progress)
        model = setup.model
        if spec.trains == "lora":
            model = task.add_adapter(model)
            init_adapter(model, derive_seed(cfg.seed, "adapter-init"))  # A random, B = 0, per seed
        model.to(resolve(cfg.device))
        params = ParamSet(model, spec.trains)
        params.mark_trainable()
        f = cfg.fl
        lr = cfg.algorithm.lr_full if spec.trains == "full" and cfg.algorithm.lr_full else f.lr
        train_cfg = LocalTrainConfig(
            f.local_epochs, f.batch_size, lr, f.weight_decay, f.max_grad_norm, setup.adam_betas
        )
        client = Client(setup.objective, params, train_cfg)
        return cls(
            cfg=cfg, spec=spec, task=task, setup=setup, params=params, client=client, init=params.state()
        )

    def client_logic(self) -> ClientLogic:
        """The algorithm's client logic (federated algorithms only): what a client trains and keeps."""
        assert self.spec.client_logic is not None, f"{self.spec.name} is not federated"
        model, keys, task = self.params.model, self.params.keys(), self.task
        inputs = LogicInputs(
            self.client, self.init, self.cfg.algorithm, lambda blocks: task.personal_keys(model, keys, blocks)
        )
        return self.spec.client_logic(inputs)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate_global(self, state: State) -> dict[str, float]:
        """The task's global figures of one model on every global evaluation set (``{split}_{key}``)."""
        out = {}
        for split, data in self.setup.eval_sets.items():
            r = self.client.evaluate(state, data, self.cfg.eval.batch_size)
            out.update({f"{split}_{k}": r[k] for k in self.objective.global_keys})
        return out

    def local_metric(self, state: State, d: ClientData) -> float:
        """The metric of one model on one client's test split."""
        self.params.load(state)
        return self.objective.client_metric(self.params.model, d.test, self.cfg.eval.batch_size)

    def evaluate_local(self, state_of: Callable[[int], State]) -> dict[int, float]:
        """The metric on every client's test split; ``state_of(k)`` gives client k's model."""
        return {
            k: self.local_metric(state_of(k), d)
            for k, d in self.data.items()
            if self.objective.has_eval_data(d.test)
        }

    # -- budgets -------------------------------------------------------------------------------
    def clients_per_round(self) -> int:
        return clients_per_round(self.cfg.fl.fraction, self.cfg.data.num_clients)

    def budget_epochs(self) -> int:
        """Epochs that give local/central training the federated run's expected sample passes.

        In the federated runs each client takes part in rounds x m/K rounds on average
        (m = clients per round) and trains E epochs each time, so every training example is
        seen rounds x (m/K) x E times in expectation. Local-only (own data) and centralized
        (pooled data) training get that many epochs (rounded, at least 1).
        """
        c = self.cfg
        return max(
            1, int(round(c.fl.rounds * self.clients_per_round() / c.data.num_clients * c.fl.local_epochs))
        )


def distribution(values: list[float]) -> dict[str, Any]:
    """Mean, median, 10th and 90th percentile of per-client figures."""
    v = sorted(values)
    q = statistics.quantiles(v, n=10) if len(v) > 1 else [v[0]] * 9
    return {"mean": statistics.fmean(v), "median": statistics.median(v), "p10": q[0], "p90": q[-1]}
