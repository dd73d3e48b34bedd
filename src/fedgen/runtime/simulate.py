"""In-process simulation: every sampled client trains in turn on this machine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext

from fedgen.fl.algorithms import ClientLogic
from fedgen.fl.client import ClientData, FitResult, derive_seed
from fedgen.models.params import State
from fedgen.runtime.store import ClientStore


class InProcessRuntime:
    """Runs each sampled client's ``fit`` sequentially and deterministically in this process.

    With ``store``, the clients' kept states (FedPer, Ditto) live in that on-disk
    :class:`~fedgen.runtime.store.ClientStore` instead of memory (what they held so far is moved there).
    ``upload(result, global_state, round)``: what a client does to its result before sending it
    (e.g. DP clipping, :func:`fedgen.fl.server.client_update`).
    """

    def __init__(
        self,
        client: ClientLogic,
        data: dict[int, ClientData],
        seed: int,
        progress=None,
        store: ClientStore | None = None,
        upload: Callable[[FitResult, State, int], FitResult] | None = None,
    ):
        self.client, self.data, self.seed, self.progress, self.store = client, data, seed, progress, store
        self.upload = upload
        if store is not None:
            store.update(client.kept)
            client.kept = store

    def fit(
        self, state: State, client_ids: list[int], rnd: int, max_steps: Mapping[int, int] | None = None
    ) -> list[FitResult]:
        """``max_steps[k]``: client k stops after that many local steps (a partial straggler)."""
        if self.store is not None:
            self.store.begin_round(rnd)
        results = []
        limits = max_steps or {}
        for k in client_ids:
            limit = limits.get(k)
            with self.client.client.limit_steps(limit) if limit is not None else nullcontext():
                seed = derive_seed(self.seed, "fit", rnd, k)
                res = self.client.fit(state, self.data[k], seed)
            results.append(res if self.upload is None else self.upload(res, state, rnd))
            if self.progress is not None:
                self.progress.update(1)
        if self.store is not None:
            self.store.end_round()
        return results
