"""Algorithm 1 (FedGen-Edge), server side: sample clients, collect adapters, FedAvg by n_k.

The loop is runtime-agnostic: ``runtime.fit(state, client_ids, round)`` returns the
clients' :class:`~fedgen.fl.client.FitResult` s, whether they ran in this process
(:mod:`fedgen.runtime.simulate`) or on devices over the network. A runtime with secure
aggregation (``secure = True``, e.g. Flower's SecAgg+) returns only the sum of the updates
instead (:class:`SecureRound`), and its clients run the server's checks on their own update
before masking it (:func:`client_update`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import numpy as np

from fedgen.config import clients_per_round
from fedgen.core.errors import FedgenError, UpdateError
from fedgen.core.seeding import derive_seed
from fedgen.fl.aggregate import clip_update_norm, coordinate_median, fedavg, trimmed_mean, validate_update
from fedgen.fl.client import FitResult
from fedgen.fl.dp import add_noise, clip_change
from fedgen.fl.wire import serialize
from fedgen.models.params import State

log = logging.getLogger("fedgen")


class Runtime(Protocol):
    def fit(self, state: State, client_ids: list[int], rnd: int) -> list[FitResult]: ...


@dataclass
class SecureRound:
    """A round under secure aggregation: each client's n_k and metrics in the clear, its update
    only inside the sum. ``mean_change``: the n_k-weighted (under DP: uniform) mean of the accepted
    clients' changes from the global state (None when the protocol did not complete)."""

    accepted: list[FitResult]  # state is {}: the server never holds a client's update
    rejected: list[dict]
    mean_change: State | None
    upload_bytes: int


class RoundsSkippedError(FedgenError):
    """Too many consecutive rounds had fewer valid updates than ``min_clients``."""


@dataclass
class RoundPolicy:
    """What the server accepts. A round aggregates only if at least ``min_clients`` valid updates
    arrive; otherwise it is skipped (global state untouched). ``max_skipped_rounds`` consecutive
    skipped rounds stop the run. ``client_sizes`` (client -> training examples), where the server
    knows them, bound each client's reported n_k. ``aggregator``, ``trim_beta`` and ``clip_norm``
    choose how the accepted updates are combined (:func:`aggregate`). ``dp`` (a ``DPConfig``,
    None = off): DP-FedAvg's clipping (central: here; client: :func:`client_update`), uniform
    weights and Gaussian noise (:mod:`fedgen.fl.dp`)."""

    min_clients: int = 1
    max_skipped_rounds: int = 3
    client_sizes: Mapping[int, int] | None = None
    aggregator: str = "fedavg"  # "fedavg" | "fednova" | "median" | "trimmed-mean"
    trim_beta: float = 0.1
    clip_norm: float | None = None
    dp: Any = None


def aggregate(
    states: Sequence[State],
    weights: Sequence[float],
    policy: RoundPolicy,
    reference: State,
    steps: Sequence[int] | None = None,
) -> State:
    """The new global state from the accepted (screened) updates, as ``policy`` says.

    With ``clip_norm`` each update's change from ``reference`` (the global state the clients
    started from) is first bounded in L2 norm (:func:`~fedgen.fl.aggregate.clip_update_norm`);
    then ``fedavg`` weights by n_k, while ``median`` and ``trimmed-mean`` are unweighted
    (coordinate-wise), like Flower's FedMedian / FedTrimmedAvg. ``fednova`` (Wang et al. 2020)
    normalizes each change by the client's local ``steps`` tau_k so that clients that did more
    work (more data, faster devices, no straggler cut) do not pull harder:
    ``reference + tau_eff * sum_k p_k (state_k - reference) / tau_k``, p_k = n_k / sum n,
    tau_eff = sum_k p_k tau_k (with equal steps this is FedAvg). Under ``dp`` the weights are
    uniform and, in ``central`` mode, each change is clipped to ``dp.clipping_norm`` here (the
    noise is added by :func:`federate`). Pure: modifies nothing.
    """
    if policy.clip_norm is not None:
        states = [clip_update_norm(s, reference, policy.clip_norm) for s in states]
    if policy.dp is not None:
        weights = [1.0] * len(states)
        if policy.dp.mode == "central":
            states = [clip_change(s, reference, policy.dp.clipping_norm) for s in states]
    if policy.aggregator == "fedavg":
        return fedavg(states, weights)
    if policy.aggregator == "fednova":
        return _fednova(states, weights, reference, steps)
    if policy.aggregator == "median":
        return coordinate_median(states)
    if policy.aggregator == "trimmed-mean":
        return trimmed_mean(states, policy.trim_beta)
    raise ValueError(f"unknown aggregator {policy.aggregator!r}")


def _fednova(states: Sequence[State], weights: Sequence[float], reference: State, steps) -> State:
    if steps is None or len(steps) != len(states) or min(steps) < 1:
        raise ValueError("fednova needs each update's number of local steps (>= 1)")
    p = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    tau = np.asarray(steps, dtype=np.float64)
    tau_eff = float(p @ tau)
    out = {}
    for k, ref in reference.items():
        delta = sum(
            float(pk / tk) * (s[k].double() - ref.double()) for s, pk, tk in zip(states, p, tau, strict=True)
        )
        out[k] = (ref.double() + tau_eff * delta).to(ref.dtype)
    return out


@dataclass
class RoundRecord:
    round: int
    clients: list[int]  # the clients whose updates were aggregated
    num_examples: list[int]
    upload_bytes: int  # sum over the round's received updates of their serialized size
    download_bytes: int  # global adapter sent to each selected client
    train_loss: float | None  # n_k-weighted mean of the aggregated clients' last-epoch losses
    received: int = 0  # updates that arrived (accepted or not)
    sampled: list[int] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {"client": k, "reason": "..."}
    skipped: bool = False  # fewer than min_clients valid updates: the global state is unchanged


def sample_clients(num_clients: int, fraction: float, seed: int, rnd: int, secret: bool = False) -> list[int]:
    """:func:`clients_per_round` distinct clients, drawn uniformly; depends only on (seed, round).

    ``secret`` (runs with DP noise): drawn from the OS's secure random source instead, so that who
    takes part in a round cannot be derived from the config. The accountant's amplification by
    sampling assumes exactly that; the round's sample is still recorded in the run's metrics.
    """
    m = clients_per_round(fraction, num_clients)
    if secret:
        return sorted(secrets.SystemRandom().sample(range(num_clients), m))
    rng = np.random.default_rng(derive_seed(seed, "sample", rnd))
    return sorted(int(k) for k in rng.choice(num_clients, size=m, replace=False))


def screen(
    results: list[FitResult], selected: list[int], reference: State, rnd: int, policy: RoundPolicy
) -> tuple[list[FitResult], list[dict]]:
    """Split a round's results into accepted updates and rejected ones with their reason.

    Rejected: a client that was not sampled, a second update from the same client, an n_k that
    is not a positive integer or exceeds what the server knows of the client, and any update that
    :func:`~fedgen.fl.aggregate.validate_update` refuses (keys, shapes, dtypes, NaN/Inf).
    """
    accepted, rejected, seen = [], [], set()
    sampled = set(selected)
    for r in results:
        k, n = r.client_id, r.num_examples
        reason = None
        if k not in sampled:
            reason = "was not sampled this round"
        elif k in seen:
            reason = "sent a second update this round"
        elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
            reason = f"reported n_k={n!r}, not a positive integer"
        elif policy.client_sizes is not None and n > policy.client_sizes.get(k, n):
            reason = f"reported n_k={n} but holds {policy.client_sizes[k]} training examples"
        else:
            try:
                validate_update(r.state, reference, who=f"round {rnd} client {k}")
            except UpdateError as e:
                reason = str(e)
        seen.add(k)
        if reason is None:
            accepted.append(r)
        else:
            rejected.append({"client": k, "reason": reason})
            log.warning("round %d: rejected the update of client %s: %s", rnd, k, reason)
    return accepted, rejected


def client_update(
    result: FitResult, reference: State, rnd: int, policy: RoundPolicy, secure: bool
) -> tuple[FitResult | None, str | None]:
    """What a client uploads: ``(result, None)``, or ``(None, reason)`` when it must not count.

    Under secure aggregation the server cannot look at one update, so the client runs the
    server's own checks on it before masking: :func:`screen` (keys, shapes, dtypes, NaN/Inf,
    n_k) and ``clip_norm``. With ``dp.mode: client`` the change is clipped here (Flower's
    fixed clipping), whatever the runtime.
    """
    if secure:
        accepted, rejected = screen([result], [result.client_id], reference, rnd, policy)
        if not accepted:
            return None, rejected[0]["reason"]
        if policy.clip_norm is not None:
            result = replace(result, state=clip_update_norm(result.state, reference, policy.clip_norm))
    if policy.dp is not None and policy.dp.mode == "client":
        result = replace(result, state=clip_change(result.state, reference, policy.dp.clipping_norm))
    return result, None


def apply_change(reference: State, change: State) -> State:
    """``reference + change`` per tensor (in float64, cast back to each tensor's dtype)."""
    return {k: (ref.double() + change[k].double()).to(ref.dtype) for k, ref in reference.items()}


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
    policy: RoundPolicy | None = None,
) -> State:
    """Run rounds ``start_round..rounds`` of FedGen-Edge and return the final global adapter.

    Bad updates are rejected with a logged reason and the round completes with the rest
    (:func:`screen`; under secure aggregation the clients screen their own, :func:`client_update`);
    see :class:`RoundPolicy` for skipped rounds.
    """
    policy = policy or RoundPolicy()
    secure = bool(getattr(runtime, "secure", False))
    skipped_in_a_row = 0
    secret = policy.dp is not None and not policy.dp.insecure_reproducible_noise  # see sample_clients
    for rnd in range(start_round, rounds + 1):
        selected = sample_clients(num_clients, fraction, seed, rnd, secret)
        down = len(serialize(state)) * len(selected)
        if secure:
            # a runtime with secure = True (SecAgg+) has fit_secure; the Runtime protocol does not
            summed: SecureRound = runtime.fit_secure(state, selected, rnd)  # type: ignore[attr-defined]
            accepted, rejected = sorted(summed.accepted, key=lambda r: r.client_id), summed.rejected
            received, upload = len(accepted) + len(rejected), summed.upload_bytes
        else:
            results = sorted(runtime.fit(state, selected, rnd), key=lambda r: r.client_id)
            accepted, rejected = screen(results, selected, state, rnd, policy)
            received, upload = len(results), sum(_size(r.state) for r in results)
        weights = [r.num_examples for r in accepted]
        skipped = len(accepted) < policy.min_clients
        if skipped:
            log.warning(
                "round %d skipped: %d valid update(s), fewer than fl.min_clients=%d; global model unchanged",
                rnd,
                len(accepted),
                policy.min_clients,
            )
        elif secure and summed.mean_change is None:
            log.warning("round %d skipped: secure aggregation did not complete; global model unchanged", rnd)
            skipped = True
        else:
            if secure:
                state = apply_change(state, cast(State, summed.mean_change))  # not None: checked above
            else:
                steps = [int(r.metrics.get("steps", 1)) for r in accepted]
                state = aggregate([r.state for r in accepted], weights, policy, state, steps)
            if policy.dp is not None:
                dp = policy.dp
                # secure OS noise (None) unless the run is explicitly not private
                noise_seed = derive_seed(seed, "dp-noise", rnd) if dp.insecure_reproducible_noise else None
                state = add_noise(state, dp.noise_multiplier, dp.clipping_norm, len(accepted), noise_seed)
        losses = [r.metrics.get("train_loss") for r in accepted]
        record = RoundRecord(
            round=rnd,
            clients=[] if skipped else [r.client_id for r in accepted],
            num_examples=[] if skipped else weights,
            upload_bytes=upload,
            download_bytes=down,
            train_loss=None if skipped else float(np.average(cast(list[float], losses), weights=weights)),
            received=received,
            sampled=selected,
            rejected=rejected,
            skipped=skipped,
        )
        if on_round_end is not None:
            on_round_end(record, state)
        skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
        if skipped_in_a_row >= policy.max_skipped_rounds:
            raise RoundsSkippedError(
                f"stopped after round {rnd}: {skipped_in_a_row} rounds in a row had fewer than "
                f"fl.min_clients={policy.min_clients} valid updates (see the log for why they were "
                "rejected); the last checkpoint is kept, continue with --resume"
            )
    return state


def _size(state) -> int:
    """Serialized bytes of a received update (0 when it cannot even be serialized)."""
    try:
        return len(serialize(state))
    except Exception:  # a malformed update was received and rejected; it counts as nothing
        return 0
