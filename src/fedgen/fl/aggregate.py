"""Server-side aggregation: pure functions over adapter state dicts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from fedgen.errors import UpdateError

State = Mapping[str, torch.Tensor]  # read-only view of fedgen.models.params.State


def validate_update(update: State, reference: State, who: str = "client") -> None:
    """Reject an update whose keys, shapes or dtypes differ from ``reference``, or that holds NaN/Inf."""
    missing, extra = set(reference) - set(update), set(update) - set(reference)
    if missing or extra:
        raise UpdateError(
            f"{who}: update keys differ from the global adapter "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})"
        )
    for k, ref in reference.items():
        t = update[k]
        if not isinstance(t, torch.Tensor):
            raise UpdateError(f"{who}: {k} is a {type(t).__name__}, not a tensor")
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise UpdateError(
                f"{who}: {k} has shape {tuple(t.shape)} {t.dtype}, expected {tuple(ref.shape)} {ref.dtype}"
            )
        if not torch.isfinite(t).all():
            raise UpdateError(f"{who}: {k} contains NaN or Inf")


def fedavg(states: Sequence[State], weights: Sequence[float]) -> OrderedDict[str, torch.Tensor]:
    """Weighted mean ``sum_k w_k * s_k / sum_k w_k`` per tensor (FedAvg with w_k = n_k).

    Accumulates in float64 in the given order, divides once, then casts back to each
    tensor's dtype. The server passes results sorted by client id, so the result does
    not depend on the order in which clients answered.
    """
    if not states:
        raise UpdateError("fedavg: no client updates to aggregate")
    if len(states) != len(weights):
        raise UpdateError(f"fedavg: {len(states)} updates but {len(weights)} weights")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise UpdateError(f"fedavg: weights must be non-negative with a positive sum, got {list(weights)}")
    total = w.sum()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for wi, s in zip(w, states, strict=True):
            acc += wi * s[k].to(torch.float64)
        out[k] = (acc / total).to(ref.dtype)
    return out
