"""In-process simulation: every sampled client trains in turn on this machine."""

from __future__ import annotations

from fedgen.fl.algorithms import ClientLogic
from fedgen.fl.client import ClientData, FitResult, derive_seed
from fedgen.models.params import State


class InProcessRuntime:
    """Runs each sampled client's ``fit`` sequentially and deterministically in this process."""

    def __init__(self, client: ClientLogic, data: dict[int, ClientData], seed: int, progress=None):
        self.client, self.data, self.seed, self.progress = client, data, seed, progress

    def fit(self, state: State, client_ids: list[int], rnd: int) -> list[FitResult]:
        results = []
        for k in client_ids:
            results.append(self.client.fit(state, self.data[k], derive_seed(self.seed, "fit", rnd, k)))
            if self.progress is not None:
                self.progress.update(1)
        return results
