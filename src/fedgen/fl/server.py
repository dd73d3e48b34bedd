"""Algorithm 1 (FedGen-Edge), server side: sample clients, collect adapters, FedAvg by n_k.

The loop is runtime-agnostic: ``runtime.fit(state, client_ids, round)`` returns the
clients' :class:`~fedgen.fl.client.FitResult` s, whether they ran in this process
(:mod:`fedgen.runtime.simulate`) or on devices over the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedgen.fl.aggregate import fedavg, validate_update
from fedgen.fl.client import FitResult, derive_seed
from fedgen.fl.comm import serialize
from fedgen.models.params import State


class Runtime(Protocol):
    def fit(self, state: State, client_ids: list[int], rnd: int) -> list[FitResult]: ...


@dataclass
class RoundRecord:
    round: int
    clients: list[int]
    num_examples: list[int]
    upload_bytes: int  # sum over the round's clients of their serialized update
    download_bytes: int  # global adapter sent to each selected client
    train_loss: float  # n_k-weighted mean of the clients' last-epoch losses


def sample_clients(num_clients: int, fraction: float, seed: int, rnd: int) -> list[int]:
    """max(1, round(C*K)) distinct clients, drawn uniformly; depends only on (seed, round)."""
    m = max(1, int(round(fraction * num_clients)))
    rng = np.random.default_rng(derive_seed(seed, "sample", rnd))
    return sorted(int(k) for k in rng.choice(num_clients, size=m, replace=False))


def federate(
    runtime: Runtime,
    state: State,
    *,
    num_clients: int,
    rounds: int,
    fraction: float,
    seed: int,
    start_round: int = 1,
    on_round_end: Callable[[RoundRecord, State], None] | None = None,
) -> State:
    """Run rounds ``start_round..rounds`` of FedGen-Edge and return the final global adapter."""
    for rnd in range(start_round, rounds + 1):
        selected = sample_clients(num_clients, fraction, seed, rnd)
        down = len(serialize(state)) * len(selected)
        results = sorted(runtime.fit(state, selected, rnd), key=lambda r: r.client_id)
        for r in results:
            validate_update(r.state, state, who=f"round {rnd} client {r.client_id}")
        weights = [r.num_examples for r in results]
        state = fedavg([r.state for r in results], weights)
        record = RoundRecord(
            round=rnd,
            clients=[r.client_id for r in results],
            num_examples=weights,
            upload_bytes=sum(len(serialize(r.state)) for r in results),
            download_bytes=down,
            train_loss=float(np.average([r.metrics["train_loss"] for r in results], weights=weights)),
        )
        if on_round_end is not None:
            on_round_end(record, state)
    return state
