"""Simulated system heterogeneity around any runtime: device tiers, dropouts, deadlines, stragglers.

:class:`HeterogeneousRuntime` wraps a runtime (``fit(state, client_ids, round)``) and decides,
for each sampled client, what its device does this round:

* **tier**: fixed per client for the whole run, drawn by the tiers' ``share`` from
  ``derive_seed(seed, "devices", "tier", client)``: compute ``speed`` and ``bandwidth_mbps``;
* **dropout**: with probability ``dropout`` the client never answers this round
  (``derive_seed(seed, "devices", round, client)``); it simply sends no result, and the server's
  ``fl.min_clients`` rule decides whether the round still aggregates;
* **deadline**: simulated time = download + local steps + upload, where a step takes
  ``step_seconds / speed`` and a message ``bytes * 8 / (bandwidth_mbps * 1e6)`` seconds (the
  upload is the size of the global state: every algorithm uploads what it receives). A client
  past ``deadline_s`` is a straggler: ``drop`` discards it; ``partial`` runs only the local steps
  that fit before the deadline (none fit: dropped) and uses that update.

Local steps per client are ``local_epochs * ceil(n_k / batch_size)`` (Ditto's second, personal
pass is not counted). Every decision depends only on (seed, round, client), so runs stay
deterministic and resumable. The round's simulated wall-clock (``simulated_round_seconds``:
the slowest answering client, or the deadline when a client missed it or dropped out while
one was set) and the dropped / straggling clients go into each ``metrics.jsonl`` row through
``last_round``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedgen.config import DevicesConfig, clients_per_round
from fedgen.core.seeding import derive_seed
from fedgen.fl.client import FitResult
from fedgen.fl.server import Runtime
from fedgen.fl.wire import serialize
from fedgen.models.params import State


def over_selected_fraction(fraction: float, num_clients: int, dropout: float) -> float:
    """The sampling fraction that draws ceil(m / (1 - dropout)) clients (at most all K), where
    m = clients_per_round(fraction, K): m answers are then expected despite the dropouts."""
    m = clients_per_round(fraction, num_clients)
    return min(num_clients, math.ceil(m / (1.0 - dropout) - 1e-9)) / num_clients


@dataclass
class Device:
    tier: int
    speed: float
    bandwidth_mbps: float


def assign_devices(cfg: DevicesConfig, seed: int, client_ids) -> dict[int, Device]:
    """Each client's device tier, drawn once by the tiers' shares."""
    edges = np.cumsum([t.share for t in cfg.tiers])
    out = {}
    for k in client_ids:
        u = np.random.default_rng(derive_seed(seed, "devices", "tier", k)).random()
        i = min(int(np.searchsorted(edges, u * edges[-1], side="right")), len(cfg.tiers) - 1)
        out[k] = Device(i, cfg.tiers[i].speed, cfg.tiers[i].bandwidth_mbps)
    return out


class HeterogeneousRuntime:
    """Wraps ``inner``; see the module docstring. ``steps[k]``: client k's full local steps."""

    def __init__(self, inner: Runtime, cfg: DevicesConfig, seed: int, steps: Mapping[int, int]):
        self.inner, self.cfg, self.seed, self.steps = inner, cfg, seed, dict(steps)
        self.devices = assign_devices(cfg, seed, sorted(steps))
        self.last_round: dict = {}

    def dropped_out(self, k: int, rnd: int) -> bool:
        return bool(
            np.random.default_rng(derive_seed(self.seed, "devices", rnd, k)).random() < self.cfg.dropout
        )

    def fit(self, state: State, client_ids: list[int], rnd: int) -> list[FitResult]:
        c = self.cfg
        nbytes = len(serialize(state))
        dropped = [k for k in client_ids if self.dropped_out(k, rnd)]
        plan: dict[int, int] = {}  # client -> local steps it runs
        stragglers: list[int] = []
        for k in client_ids:
            if k in dropped:
                continue
            steps = self.steps[k]
            if c.deadline_s is not None:
                assert c.step_seconds is not None, "a deadline needs step_seconds (checked by config load)"
                d = self.devices[k]
                comm = 2 * nbytes * 8 / (d.bandwidth_mbps * 1e6)
                if comm + steps * c.step_seconds / d.speed > c.deadline_s:
                    stragglers.append(k)
                    fit = math.floor((c.deadline_s - comm) / (c.step_seconds / d.speed))
                    if c.stragglers == "drop" or fit < 1:
                        continue
                    steps = min(steps, fit)
            plan[k] = steps
        answering = sorted(plan)
        limits = {k: s for k, s in plan.items() if s < self.steps[k]}
        t0 = time.perf_counter()
        if not answering:
            results: list[FitResult] = []
        elif limits:
            # partial work is checked to need runtime: in-process, whose fit takes max_steps
            results = self.inner.fit(state, answering, rnd, max_steps=limits)  # type: ignore[call-arg]
        else:
            results = self.inner.fit(state, answering, rnd)
        elapsed = time.perf_counter() - t0
        measured = sum(int(r.metrics.get("steps", 0)) for r in results)
        step_s = c.step_seconds if c.step_seconds is not None else elapsed / max(measured, 1)
        times = {}
        for k in answering:
            d = self.devices[k]
            times[k] = 2 * nbytes * 8 / (d.bandwidth_mbps * 1e6) + plan[k] * step_s / d.speed
        round_s = max(times.values(), default=0.0)
        if c.deadline_s is not None and (dropped or stragglers):
            round_s = c.deadline_s  # the server waits until the deadline for the missing answers
        self.last_round = {
            **getattr(self.inner, "last_round", {}),
            "simulated_round_seconds": round(round_s, 6),
            "simulated_step_seconds": step_s,
            "dropped": dropped,
            "stragglers": stragglers,
            "partial_steps": {str(k): s for k, s in sorted(limits.items())},
        }
        return results
