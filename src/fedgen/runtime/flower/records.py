"""Our states and metrics as Flower records, and back (bit-exact for every dtype)."""

from __future__ import annotations

from collections import OrderedDict

from flwr.app import Array, ArrayRecord, MetricRecord

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


def to_metrics(metrics: dict) -> MetricRecord:
    """The numeric entries of a fit's metrics (non-numbers dropped)."""
    return MetricRecord(
        {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
