"""In-process simulation: every sampled client trains on this machine, one after another or, with
``batched``, all together in one batched pass (:mod:`fedgen.fl.batched`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import nullcontext

import torch

from fedgen.core.seeding import derive_seed
from fedgen.fl import batched as fl_batched
from fedgen.fl.algorithms import ClientLogic
from fedgen.fl.client import FitResult
from fedgen.models.params import State
from fedgen.runtime.store import ClientStore
from fedgen.tasks.base import ClientData

log = logging.getLogger(__name__)


def use_batched(setting: str, device: torch.device) -> bool:
    """``batched_clients``: ``on`` / ``off``, or ``auto``: on CUDA only (on a few CPU cores batched
    training measured 0.5-0.8x the speed of training the clients one by one)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


class InProcessRuntime:
    """Runs each sampled client's ``fit`` sequentially and deterministically in this process.

    With ``store``, the clients' kept states (FedPer, Ditto) live in that on-disk
    :class:`~fedgen.runtime.store.ClientStore` instead of memory (what they held so far is moved there).
    With ``batched``, :meth:`fit` trains the clients together (:meth:`fit_many`) where the algorithm
    and model allow it (:func:`fedgen.fl.batched.unsupported`), else sequentially.
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
        batched: bool = False,
        upload: Callable[[FitResult, State, int], FitResult] | None = None,
    ):
        self.client, self.data, self.seed, self.progress, self.store = client, data, seed, progress, store
        self.upload = upload
        if store is not None:
            store.update(client.kept)
            client.kept = store  # type: ignore[assignment]  # a MutableMapping standing in for the dict
        self.batched = batched
        if batched:
            why = fl_batched.unsupported(client)
            if why is not None:
                log.debug("batched multi-client training off, clients train one by one: %s", why)
                self.batched = False

    def fit(
        self, state: State, client_ids: list[int], rnd: int, max_steps: Mapping[int, int] | None = None
    ) -> list[FitResult]:
        """``max_steps[k]``: client k stops after that many local steps (a partial straggler)."""
        if self.store is not None:
            self.store.begin_round(rnd)
        if self.batched:
            results = self.fit_many(state, client_ids, rnd, max_steps)
        else:
            results = []
            limits = max_steps or {}
            for k in client_ids:
                limit = limits.get(k)
                with self.client.client.limit_steps(limit) if limit is not None else nullcontext():
                    seed = derive_seed(self.seed, "fit", rnd, k)
                    results.append(self.client.fit(state, self.data[k], seed))
                if self.progress is not None:
                    self.progress.update(1)
        if self.upload is not None:
            results = [self.upload(res, state, rnd) for res in results]
        if self.store is not None:
            self.store.end_round()
        return results

    def fit_many(
        self, state: State, client_ids: list[int], rnd: int, max_steps: Mapping[int, int] | None = None
    ) -> list[FitResult]:
        """The sequential loop's results (same seeds, batches and step limits) from one batched pass."""
        client = self.client.client
        limits = max_steps or {}
        results = fl_batched.fit_many(
            client,
            state,
            [self.data[k] for k in client_ids],
            [derive_seed(self.seed, "fit", rnd, k) for k in client_ids],
            [limits.get(k, client.step_limit) for k in client_ids],
        )
        if self.progress is not None:
            self.progress.update(len(client_ids))
        return results
