"""SecAgg+ over the adapter update, with Flower's ``SecAggPlusWorkflow`` and ``secaggplus_mod``.

Server (:func:`secure_round`): one round of Flower's SecAgg+ workflow. The workflow speaks the
legacy ``Strategy`` API, so :class:`_RoundStrategy` hands it the round's sampled clients (their
nodes) and collects what it passes to ``aggregate_fit``: the unmasked weighted mean (the only
parameters it ever decodes) and each client's plain ``num_examples`` and metrics. Every message
is counted on the way (:class:`CountingGrid`).

Client (:func:`secagg_when_asked`, then the ClientApp's ``train``): the mod runs the protocol's
four stages; in the masking stage it calls ``train``, which trains, runs the server's checks on
its own update (:func:`fedgen.fl.server.client_update`) and returns the *change* from the global
state as a legacy ``FitRes``. The mod multiplies it by the quantized weight n_k / max_weight,
quantizes it and sends it masked, with the quantized weight as one more masked number; the
workflow divides the unmasked sum by the summed weights: the n_k-weighted mean of the changes.
A client that fails the checks takes part with weight 0 (so the masks still cancel) and names
its reason in its metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedgen.fl.client import FitResult
from fedgen.fl.dp import ndarrays_to_state, state_to_ndarrays
from fedgen.models.params import State

log = logging.getLogger("fedgen")

# ------------------------------------------------------------------------------------ accounting


def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message: its arrays and the bytes/str values of its config records."""
    total = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    for rec in content.config_records.values():
        for v in rec.values():
            for x in v if isinstance(v, list) else [v]:
                total += len(x) if isinstance(x, bytes) else len(x.encode()) if isinstance(x, str) else 0
    return total


class CountingGrid(Grid):
    """A ``Grid`` that passes every call to ``inner`` and counts the payload bytes it carries."""

    def __init__(self, inner: Grid):
        self.inner = inner
        self.down = self.up = self.masked_up = self.state_down = 0
        self.replies: list[Message] = []  # every reply that reached the server (what it saw)

    def set_run(self, run):  # pragma: no cover - delegation
        self.inner.set_run(run)

    @property
    def run(self):  # pragma: no cover - delegation
        return self.inner.run

    def create_message(self, *args, **kwargs):  # pragma: no cover - delegation
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages):  # pragma: no cover - the workflow uses send_and_receive
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids):  # pragma: no cover - the workflow uses send_and_receive
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        self.down += sum(content_bytes(m.content) for m in messages)
        self.state_down += sum(
            len(a.data) for m in messages for r in m.content.array_records.values() for a in r.values()
        )
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        for r in replies:
            self.replies.append(r)
            if r.has_error():
                continue
            self.up += content_bytes(r.content)
            cfg: Mapping[str, Any] = r.content.config_records.get(RECORD_KEY_CONFIGS, {})
            self.masked_up += sum(len(b) for b in cfg.get(Key.MASKED_PARAMETERS, []))
        return replies


# ---------------------------------------------------------------------------------------- server


@dataclass
class _RoundStrategy(Strategy):
    """The legacy Strategy the workflow asks for one round: fit on these nodes; keep the sum."""

    clients: dict[int, int]  # node id -> client (partition) id
    grid: Grid
    run_id: int
    rnd: int
    mean: list[np.ndarray] | None = None
    replies: list[tuple[int, FitRes]] = field(default_factory=list)
    failures: int = 0

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [
            (GridClientProxy(n, self.grid, self.run_id), FitIns(parameters, {"round": self.rnd, "client": k}))
            for n, k in self.clients.items()
        ]

    def aggregate_fit(self, server_round, results: list[tuple[ClientProxy, FitRes]], failures):
        self.failures = len(failures)
        self.replies = [(self.clients[p.node_id], r) for p, r in results]
        if results:  # the workflow set every result's parameters to the unmasked weighted mean
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):  # pragma: no cover
        return []

    def aggregate_evaluate(self, server_round, results, failures):  # pragma: no cover
        return None, {}

    def evaluate(self, server_round, parameters):  # pragma: no cover
        return None


@dataclass
class SecureResult:
    """What the server learned from one SecAgg+ round."""

    mean_change: State | None
    accepted: list[FitResult]
    rejected: list[dict]
    bytes: dict[str, float]


def secure_round(
    grid: Grid,
    context: Context,
    state: State,
    clients: dict[int, int],
    rnd: int,
    settings: Any,
    max_weight: float,
    timeout: float | None,
) -> SecureResult:
    """One SecAgg+ round over the nodes in ``clients`` (node id -> client id); see the module doc."""
    counting = CountingGrid(grid)
    strategy = _RoundStrategy(clients, counting, context.run_id, rnd)
    legacy = LegacyContext(
        Context(context.run_id, context.node_id, context.node_config, RecordDict(), context.run_config),
        strategy=strategy,
    )
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(state_to_ndarrays(state)), keep_input=True
    )
    t0 = time.perf_counter()
    SecAggPlusWorkflow(
        _share_setting(settings.num_shares),
        _share_setting(settings.reconstruction_threshold),
        max_weight=max_weight,
        clipping_range=settings.clipping_range,
        quantization_range=settings.quantization_range,
        timeout=timeout,
    )(counting, legacy)
    errors = sorted({r.error.reason for r in counting.replies if r.has_error()}, key=str)
    for reason in errors:
        log.warning("round %d: a SecAgg+ reply was an error: %s", rnd, reason)
    accepted, rejected = [], []
    for k, res in sorted(strategy.replies, key=lambda x: x[0]):
        m: dict[str, Any] = dict(res.metrics)
        reason = m.pop("rejected", "")
        if reason:
            rejected.append({"client": k, "reason": str(reason)})
        else:
            n = int(m.pop("num-examples"))
            accepted.append(FitResult(k, {}, n, m))
    mean = None
    if strategy.mean is not None and accepted:  # float64, added to the global state by the server loop
        mean = {
            k: torch.from_numpy(np.asarray(a, dtype=np.float64))
            for k, a in zip(sorted(state), strategy.mean, strict=True)
        }
    return SecureResult(
        mean,
        accepted,
        rejected,
        {
            "flower_payload_down_bytes": counting.down,
            "flower_payload_up_bytes": counting.up,
            "secagg_masked_up_bytes": counting.masked_up,
            # keys, encrypted shares, unmasking shares: all but the global state and the masked vectors
            "secagg_protocol_bytes": counting.down - counting.state_down + counting.up - counting.masked_up,
            "flower_fit_seconds": round(time.perf_counter() - t0, 3),
        },
    )


def _share_setting(v: float) -> int | float:
    """Config value -> Flower's: <= 1 a fraction (float), > 1 a count (int)."""
    return float(v) if v <= 1 else int(v)


# ---------------------------------------------------------------------------------------- client


def secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round; the others pass through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure(msg: Message) -> bool:
    """A SecAgg+ round's train message (legacy ``FitIns`` records)."""
    return "fitins.config" in msg.content.config_records


def read_fitins(msg: Message, reference: State) -> tuple[State, int, int]:
    """(global state, round, client) of a SecAgg+ train message; keys and dtypes from ``reference``."""
    ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    state = ndarrays_to_state(parameters_to_ndarrays(ins.parameters), reference)
    return state, int(ins.config["round"]), int(ins.config["client"])


def fitres_reply(
    msg: Message, change: State, weight: int, metrics: dict[str, Any], reason: str | None
) -> Message:
    """The reply ``secaggplus_mod`` masks: the change (zeros with weight 0 for a refused update)."""
    arrays = [a.astype(np.float64) for a in state_to_ndarrays(change)]
    if reason is not None:
        arrays, weight = [np.zeros_like(a) for a in arrays], 0
        metrics = {**metrics, "rejected": reason}
    metrics = {
        k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), weight, metrics)
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)
