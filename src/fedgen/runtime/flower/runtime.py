"""The server loop's runtime over Flower: ``fit(state, client_ids, round)`` as one message per client.

Each sampled client k gets a ``train`` message, sent to the SuperNode that holds partition k,
with the global state (``arrays``) and ``config`` = {round, client}. The reply carries the
trained (uploaded) state, ``num-examples`` and the fit's metrics. Which node holds which
partition is asked once per node with a ``query`` message (the ClientApp answers from its
``node_config``), so the server samples partition ids with the same
:func:`~fedgen.fl.server.sample_clients` as the in-process runtime.

Kept client states (FedPer, Ditto) live in each node's :class:`~fedgen.runtime.store.ClientStore`.
The reply also carries the client's new kept state (``kept``) so that the server can evaluate
personalized models and checkpoint them as the in-process runtime does; it is counted apart
(``flower_kept_mirror_bytes``), not as upload, and is an evaluation aid, not part of the protocol.
It is screened like an update (keys, shapes, dtypes, NaN/Inf) before it is stored; a bad one is
rejected with a logged reason and the round goes on.

Bytes of a plain round (``last_round``, added to its metrics row): ``flower_payload_down/up_bytes``,
the serialized arrays (``.npy`` bytes) of the messages sent and of the usable replies; and
``wire_bytes_down/up``, the whole messages as Flower transfers them
(:func:`~fedgen.runtime.flower.records.wire_bytes`), down counted once per recipient.

With ``secagg`` (``flower.secagg.enabled``) the runtime is *secure*: the server loop calls
:meth:`FlowerRuntime.fit_secure`, which runs one round of Flower's SecAgg+ workflow
(:func:`fedgen.runtime.flower.secagg.secure_round`) and returns only the weighted mean of the
clients' changes, with their n_k and metrics.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedgen.core.errors import FedgenError, UpdateError
from fedgen.fl.aggregate import validate_update
from fedgen.fl.client import FitResult
from fedgen.fl.server import SecureRound
from fedgen.models.params import State
from fedgen.runtime.flower.records import from_arrays, payload_bytes, to_arrays, wire_bytes

log = logging.getLogger("fedgen")


class FlowerRuntime:
    """``runtime.fit`` through a Flower ``Grid`` (simulation or deployment alike)."""

    def __init__(
        self,
        grid: Grid,
        num_clients: int,
        *,
        round_timeout: float = 600.0,
        wait_nodes: float = 120.0,
        mirror_kept: dict[int, State] | None = None,
        secagg: Any = None,
        context: Context | None = None,
        max_weight: float = 1.0,
        kept_reference: State | None = None,
    ):
        self.grid, self.num_clients, self.mirror_kept = grid, num_clients, mirror_kept
        self.secagg, self.context, self.max_weight = secagg, context, max_weight
        self.secure = secagg is not None and secagg.enabled
        # what a kept state must look like (FedPer: the personal layers' initial state; None: the global
        # state, as Ditto keeps a whole adapter); a client's earlier mirrored state takes precedence
        self.kept_reference = kept_reference
        self.round_timeout, self.wait_nodes = round_timeout, wait_nodes
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self._asked: set[int] = set()
        self.last_round: dict[str, float] = {}  # Flower payload and wire bytes, seconds of the last fit

    def _ask(self, nodes: list[int]) -> None:
        msgs = [
            Message(RecordDict({"config": ConfigRecord({"ask": "partition-ids"})}), n, MessageType.QUERY)
            for n in nodes
        ]
        for r in self.grid.send_and_receive(msgs, timeout=self.round_timeout):
            if r.has_error():
                raise FedgenError(f"node {r.metadata.src_node_id}: partition query failed: {r.error.reason}")
            for k in cast(list[int], r.content["config"]["partition-ids"]):
                k = int(k)
                other = self.node_of.get(k)
                if other is not None and other != r.metadata.src_node_id:
                    raise FedgenError(
                        f"partition {k} is claimed by nodes {other} and {r.metadata.src_node_id}"
                    )
                self.node_of[k] = r.metadata.src_node_id
        self._asked.update(nodes)

    def discover(self, needed: list[int]) -> None:
        """Map partitions to nodes until every id in ``needed`` has one (or ``wait_nodes`` passes)."""
        deadline = time.monotonic() + self.wait_nodes
        while True:
            new = sorted(set(self.grid.get_node_ids()) - self._asked)
            if new:
                self._ask(new)
            missing = [k for k in needed if k not in self.node_of]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise FedgenError(
                    f"no SuperNode holds partition(s) {missing} after {self.wait_nodes:.0f} s "
                    f"({len(self._asked)} node(s) connected; start one per partition with "
                    "--node-config partition-id=K)"
                )
            time.sleep(0.5)

    @staticmethod
    def _read(reply: Message, expected: int | None) -> FitResult:
        """A train reply as a FitResult (raises on an error reply or a malformed one)."""
        if reply.has_error():
            raise UpdateError(reply.error.reason)
        m: dict[str, Any] = dict(reply.content["metrics"])
        k, n = int(m.pop("client")), int(m.pop("num-examples"))
        if expected is not None and k != expected:
            raise UpdateError(f"reply for client {expected} claims to be client {k}")
        return FitResult(k, from_arrays(reply.content.array_records["arrays"]), n, m)

    def fit_secure(self, state: State, client_ids: list[int], rnd: int) -> SecureRound:
        """One SecAgg+ round: the server gets the clients' weighted mean change, never one update."""
        # lazy: Flower's legacy server stack that SecAgg+ needs, only for secure rounds
        from fedgen.runtime.flower.secagg import secure_round

        self.discover(list(range(self.num_clients)) if not self.node_of else client_ids)
        assert self.context is not None, "secure aggregation needs the ServerApp's context"
        clients = {self.node_of[k]: k for k in client_ids}
        res = secure_round(
            self.grid, self.context, state, clients, rnd, self.secagg, self.max_weight, self.round_timeout
        )
        for r in res.rejected:
            log.warning("round %d: client %s refused its own update: %s", rnd, r["client"], r["reason"])
        lost = sorted(
            set(client_ids) - {r.client_id for r in res.accepted} - {r["client"] for r in res.rejected}
        )
        if lost:
            log.warning("round %d: no SecAgg+ reply from client(s) %s", rnd, lost)
        self.last_round = res.bytes
        upload = int(res.bytes["secagg_masked_up_bytes"])
        return SecureRound(res.accepted, res.rejected, res.mean_change, upload)

    def _screen_kept(self, reply: Message, k: int, state: State, rnd: int) -> tuple[State | None, str | None]:
        """A reply's kept state and None, or (None, why it is refused): keys, shapes, dtypes, NaN/Inf
        against the client's earlier state (else the expected one), as :func:`validate_update` does."""
        assert self.mirror_kept is not None
        reference = self.mirror_kept.get(k) if k in self.mirror_kept else self.kept_reference
        try:
            kept = from_arrays(reply.content.array_records["kept"])
            validate_update(
                kept, reference if reference is not None else state, who=f"round {rnd} client {k} kept"
            )
        except Exception as e:  # malformed records raise several types
            return None, " ".join(str(e).split())[:300]
        return kept, None

    def fit(self, state: State, client_ids: list[int], rnd: int) -> list[FitResult]:
        self.discover(list(range(self.num_clients)) if not self.node_of else client_ids)
        t0 = time.perf_counter()
        arrays = to_arrays(state)
        msgs = [
            Message(
                RecordDict({"arrays": arrays, "config": ConfigRecord({"round": rnd, "client": k})}),
                self.node_of[k],
                MessageType.TRAIN,
                group_id=str(rnd),
            )
            for k in client_ids
        ]
        replies = list(self.grid.send_and_receive(msgs, timeout=self.round_timeout))
        client_of = {m.metadata.message_id: k for m, k in zip(msgs, client_ids, strict=True)}
        results, up, mirrored = [], 0, 0
        for r in replies:
            k = client_of.get(r.metadata.reply_to_message_id)
            try:
                res = self._read(r, k)
            except Exception as e:  # a failed, lost or malformed client: the server loop's min_clients rule
                why = r.error.reason if r.has_error() else f"malformed reply ({type(e).__name__}: {e})"
                log.warning("round %d: client %s sent no usable update, the round goes on: %s", rnd, k, why)
                continue
            up += payload_bytes(r.content.array_records["arrays"])
            results.append(res)
            if self.mirror_kept is not None and "kept" in r.content.array_records:
                kept, reason = self._screen_kept(r, res.client_id, state, rnd)
                if kept is None:  # screened like an update, before anything is stored
                    log.warning(
                        "round %d: rejected the kept state of client %s: %s", rnd, res.client_id, reason
                    )
                    continue
                self.mirror_kept[res.client_id] = kept
                mirrored += payload_bytes(r.content.array_records["kept"])
        answered = {m.metadata.reply_to_message_id for m in replies}
        missing = sorted(
            k for m, k in zip(msgs, client_ids, strict=True) if m.metadata.message_id not in answered
        )
        if missing:
            log.warning(
                "round %d: no reply from client(s) %s within %.0f s, the round goes on without them",
                rnd,
                missing,
                self.round_timeout,
            )
        self.last_round = {
            "flower_payload_down_bytes": payload_bytes(arrays) * len(client_ids),
            "flower_payload_up_bytes": up,
            "flower_kept_mirror_bytes": mirrored,
            "wire_bytes_down": sum(wire_bytes(m) for m in msgs),  # per recipient, as each node pulls it
            "wire_bytes_up": sum(wire_bytes(r) for r in replies),  # every reply, kept mirror included
            "flower_fit_seconds": round(time.perf_counter() - t0, 3),
        }
        return results
