"""Our Flower ServerApp and ClientApps in one process, messages passed by function call.

For tests and measurements where neither Ray (``flwr[simulation]``) nor a SuperLink is at hand:
:class:`InlineGrid` is a ``Grid`` whose nodes are Flower ``ClientApp`` objects, each called
(mods included, e.g. ``secaggplus_mod``) with its own persistent ``Context``, as a SuperNode
would. Only the transport is ours; the apps, mods and workflows are Flower's and fedgen's own.
Every message crosses as Flower's protobuf (``flwr.common.serde``), as on the wire, so nothing
is shared between the two sides; ``wire_down`` / ``wire_up`` count those bytes (each message as one
protobuf; Flower's gRPC transport sends it as objects, see ``records.wire_bytes``). A handler that
raises answers with an error reply, as a SuperNode does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.task_identity import TaskIdentity

SUPERLINK = 1  # the server's node id in the messages' metadata (Flower's SUPERLINK_NODE_ID)


class InlineGrid(Grid):
    """A ``Grid`` over ``apps`` (node id -> ClientApp) with one ``Context`` per node."""

    def __init__(
        self,
        apps: dict[int, ClientApp],
        node_configs: dict[int, dict],
        run_config: dict,
        run_id: int = 1,
        intercept: Callable[[Message], Message | None] | None = None,
    ):
        self.apps, self.run_id, self.intercept = apps, run_id, intercept
        self.contexts = {
            n: Context(run_id, n, dict(node_configs[n]), RecordDict(), dict(run_config)) for n in apps
        }
        self.wire_down = self.wire_up = 0

    def _cross(self, msg: Message, down: bool) -> Message:
        """``msg`` serialized and parsed back, as a SuperLink and a SuperNode would."""
        data = message_to_proto(msg).SerializeToString()
        if down:
            self.wire_down += len(data)
        else:
            self.wire_up += len(data)
        proto = ProtoMessage()
        proto.ParseFromString(data)
        return message_from_proto(proto)

    def set_run(self, run) -> None:  # pragma: no cover - one fixed run
        pass

    @property
    def run(self):  # pragma: no cover - one fixed run
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover - deprecated in Flower
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError("InlineGrid answers send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError("InlineGrid answers send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        replies = []
        for msg in messages:
            md = msg.metadata.__dict__
            md["_message_id"] = str(uuid4())
            node = msg.metadata.dst_node_id
            received = self._cross(msg, down=True)
            reply: Message | None
            try:
                reply = self.apps[node](received, self.contexts[node])
            except Exception as e:  # a SuperNode turns a failing ClientApp into an error reply
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=received)
            if self.intercept is not None:
                reply = self.intercept(reply)
            if reply is not None:  # None: the reply was lost on the way
                replies.append(self._cross(reply, down=False))
        return replies


def run_inline(
    server_app: ServerApp, client_app: ClientApp, num_nodes: int, run_config: dict, **grid_kwargs
) -> InlineGrid:
    """Run ``server_app`` against ``num_nodes`` copies of ``client_app`` (node k: partition k).

    Sets this process's Flower ``TaskIdentity`` (run, task, node), as ``run_simulation`` does.
    """
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK
    nodes = {100 + k: {"partition-id": k} for k in range(num_nodes)}
    grid = InlineGrid(dict.fromkeys(nodes, client_app), nodes, run_config, **grid_kwargs)
    server_app(grid, Context(grid.run_id, SUPERLINK, {}, RecordDict(), dict(run_config)))
    return grid
