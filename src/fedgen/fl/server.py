"""Algorithm 1 (FedGen-Edge), server side: sample clients, collect adapters, FedAvg by n_k.

The loop is runtime-agnostic: ``runtime.fit(state, client_ids, round)`` returns the
clients' :class:`~fedgen.fl.client.FitResult` s, whether they ran in this process
(:mod:`fedgen.runtime.simulate`) or on devices over the network.
"""

from __future__ import annotations

import math
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


def clients_per_round(fraction: float, num_clients: int) -> int:
    """m = max(1, floor(C*K)): the number of clients sampled per round.

    The paper (section 3.3.1) selects "a fraction C of the clients (a set of size m)" with
    C=0.1, K=100 -> 10 clients, but its rounding rule was lost in the text; for C*K
    integral every rule agrees. For C*K not an integer we use McMahan et al.'s FedAvg
    ``m = max(C*K, 1)`` as its reference code and Flower's FedAvg (``int(K * fraction_fit)``)
    do: floor, at least 1. So the simulated and a Flower deployment pick the same m, and
    m <= K always (C <= 1). Not Python's ``round``: ``round(2.5) == 2`` but ``round(3.5) == 4``.

    C*K is snapped to the nearest integer when within 1e-9 (relative) of it, so decimal
    fractions give the count they denote despite binary floating point:
    0.29 * 100 == 28.999999999999996 -> 29, not 28; 0.07 * 100 == 7.000000000000001 -> 7.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    x = fraction * num_clients
    nearest = round(x)
    m = nearest if abs(x - nearest) <= 1e-9 * max(1.0, x) else math.floor(x)
    return max(1, min(num_clients, m))


def sample_clients(num_clients: int, fraction: float, seed: int, rnd: int) -> list[int]:
    """:func:`clients_per_round` distinct clients, drawn uniformly; depends only on (seed, round)."""
    m = clients_per_round(fraction, num_clients)
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
