"""Our states and metrics as Flower records, and back (bit-exact for every dtype); message sizes."""

from __future__ import annotations

from collections import OrderedDict

from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedgen.models.params import State


def to_arrays(state: State) -> ArrayRecord:
    """A state as an ``ArrayRecord`` (keys sorted, tensors copied to numpy)."""
    return ArrayRecord(
        OrderedDict((k, Array(state[k].detach().cpu().contiguous().numpy())) for k in sorted(state))
    )


def from_arrays(record: ArrayRecord) -> State:
    """An ``ArrayRecord`` made by :func:`to_arrays` as a state (keys sorted, writable tensors)."""
    return dict(sorted((k, v.clone()) for k, v in record.to_torch_state_dict().items()))


def payload_bytes(record: ArrayRecord) -> int:
    """The serialized arrays' bytes in a message (``Array.data``: numpy ``.npy`` bytes, header included)."""
    return sum(len(a.data) for a in record.values())


def wire_bytes(msg: Message) -> int:
    """The bytes Flower 1.42 moves for ``msg`` between SuperLink and SuperNode.

    Flower sends a message as a tree of objects (``Message`` -> ``RecordDict`` -> records ->
    ``Array`` -> ``ArrayChunk``), each deflated once (its header, the child object ids and its
    protobuf body) into one ``PushObject`` / ``PullObject`` call; this is their sum. Not counted:
    the RPCs' own fields (object ids, the metadata-only message and object tree in
    ``PushMessages`` / ``PullMessages``), gRPC's 5-byte frame prefix, HTTP/2 frames and TLS records.
    """
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


def to_metrics(metrics: dict) -> MetricRecord:
    """The numeric entries of a fit's metrics (non-numbers dropped)."""
    return MetricRecord(
        {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
