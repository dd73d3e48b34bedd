"""FedGen-Edge and the paper's baselines, each as: what is trained, what is uploaded, what each
client keeps. All share one training loop (:func:`fedgen.fl.client.local_train`), one server
loop (:func:`fedgen.fl.server.federate`) and one FedAvg (weights n_k).

=============  ======  =========  ==========================================================
algorithm      trains  mode       uploaded / kept on the client
=============  ======  =========  ==========================================================
fedgen         LoRA    federated  whole adapter; after the last round each client fine-tunes
                                  the global adapter for ``personalize.epochs``
fedavg-full    all     federated  every model parameter
fedper         all     federated  all but the personal layers (the task's last
                                  ``fedper_personal_blocks`` blocks), which never leave it
ditto          LoRA    federated  global adapter w by FedAvg; personal adapter v_k trained with
                                  loss + lambda/2 ||v_k - w||^2 is kept
local          LoRA    local      nothing: each client trains its own adapter on its own data
central-full   all     central    nothing (raw data pooled centrally): upper bound
central-lora   LoRA    central    nothing (raw data pooled centrally)
=============  ======  =========  ==========================================================

A new algorithm is an :class:`AlgorithmSpec` passed to :func:`register_algorithm` (federated
ones with a ``client_logic`` factory: what a client trains, uploads and keeps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fedgen.config import AlgorithmConfig
from fedgen.core.seeding import derive_seed
from fedgen.fl.client import Client, FitResult
from fedgen.models.params import State, first_nonfinite
from fedgen.tasks.base import ClientData


class ClientLogic(Protocol):
    """What a federated algorithm does on a client, and what the client keeps between rounds."""

    kept: dict[int, State]
    client: Client  # the local trainer (the runtimes set its step limit)

    def fit(self, state: State, data: ClientData, seed: int) -> FitResult: ...
    def personalized(self, global_state: State) -> Callable[[int], State] | None: ...
    def server_part(self, state: State) -> State: ...


@dataclass(frozen=True)
class LogicInputs:
    """What an algorithm's client-logic factory is given: the client (its objective, trained
    parameters and local-training settings), the round-0 state, the algorithm's config section,
    and ``personal_keys(blocks)``: the task's keys of the last ``blocks`` blocks (FedPer)."""

    client: Client
    init: State
    options: AlgorithmConfig
    personal_keys: Callable[[int], list[str]]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    trains: str  # "lora" | "full"
    mode: str  # "federated" | "local" | "central"
    has_global: bool  # a single global model exists and is evaluated on the global sets
    personalized: str | None  # "finetune" | "kept" | None
    client_logic: Callable[[LogicInputs], ClientLogic] | None = None  # federated mode only
    fits_per_round: int = 1  # local trainings of a sampled client per round (Ditto: w and v_k)


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Make ``algorithm.name: spec.name`` select ``spec`` (see :mod:`fedgen.experiment.registry`)."""
    if spec.mode == "federated" and spec.client_logic is None:
        raise ValueError(f"federated algorithm {spec.name!r} needs a client_logic factory")
    ALGORITHMS[spec.name] = spec
    return spec


class FedAvgClient:
    """Train the received state, upload all of it (FedGen-Edge, FedAvg-full)."""

    def __init__(self, client: Client):
        self.client = client
        self.kept: dict[int, State] = {}

    def fit(self, state: State, data: ClientData, seed: int) -> FitResult:
        return self.client.fit(state, data, seed)

    def personalized(self, global_state: State):
        """Client k's personalized model (``k -> state``), or None when clients keep none."""
        return None

    def server_part(self, state: State) -> State:
        """The part of a full client state that the server holds and averages."""
        return state


class FedPerClient(FedAvgClient):
    """Shared layers come from the server; personal layers stay here and are never uploaded."""

    def __init__(self, client: Client, personal_keys: list[str], init_personal: State):
        self.client, self.personal_keys, self.init = client, set(personal_keys), init_personal
        self.kept: dict[int, State] = {}

    def personalized(self, shared: State):
        return lambda k: {**shared, **self.kept.get(k, self.init)}

    def server_part(self, state: State) -> State:
        return {k: v for k, v in state.items() if k not in self.personal_keys}

    def fit(self, shared: State, data: ClientData, seed: int) -> FitResult:
        r = self.client.fit(self.personalized(shared)(data.client_id), data, seed)
        self.kept[data.client_id] = {k: v for k, v in r.state.items() if k in self.personal_keys}
        upload = {k: v for k, v in r.state.items() if k not in self.personal_keys}
        return FitResult(r.client_id, upload, r.num_examples, r.metrics)


class DittoClient(FedAvgClient):
    """Upload the locally trained global adapter; keep a personal one pulled towards it."""

    def __init__(self, client: Client, lam: float):
        self.client, self.lam = client, lam
        self.kept: dict[int, State] = {}

    def personalized(self, w: State):
        return lambda k: self.kept.get(k, w)  # never-sampled clients use the global adapter

    def fit(self, w: State, data: ClientData, seed: int) -> FitResult:
        k = data.client_id
        r = self.client.fit(w, data, seed)
        v = self.client.fit(self.kept.get(k, w), data, derive_seed(seed, "ditto"), prox=(self.lam, w))
        if first_nonfinite(v.state) is None:  # a diverged personal adapter is not kept
            self.kept[k] = v.state
        return FitResult(k, r.state, r.num_examples, {**r.metrics, "personal_loss": v.metrics["train_loss"]})


def _fedper(x: LogicInputs) -> FedPerClient:
    personal = x.personal_keys(x.options.fedper_personal_blocks)
    return FedPerClient(x.client, personal, {k: x.init[k] for k in personal})


def _ditto(x: LogicInputs) -> DittoClient:
    return DittoClient(x.client, x.options.ditto_lambda)


def _fedavg(x: LogicInputs) -> FedAvgClient:
    return FedAvgClient(x.client)


for _spec in (
    AlgorithmSpec("central-full", trains="full", mode="central", has_global=True, personalized=None),
    AlgorithmSpec("central-lora", trains="lora", mode="central", has_global=True, personalized=None),
    AlgorithmSpec("local", trains="lora", mode="local", has_global=False, personalized="kept"),
    AlgorithmSpec(
        "fedavg-full",
        trains="full",
        mode="federated",
        has_global=True,
        personalized=None,
        client_logic=_fedavg,
    ),
    AlgorithmSpec(
        "fedper", trains="full", mode="federated", has_global=False, personalized="kept", client_logic=_fedper
    ),
    AlgorithmSpec(
        "ditto",
        trains="lora",
        mode="federated",
        has_global=True,
        personalized="kept",
        client_logic=_ditto,
        fits_per_round=2,
    ),
    AlgorithmSpec(
        "fedgen",
        trains="lora",
        mode="federated",
        has_global=True,
        personalized="finetune",
        client_logic=_fedavg,
    ),
):
    register_algorithm(_spec)
