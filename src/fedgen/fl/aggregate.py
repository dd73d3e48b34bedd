"""Server-side aggregation: pure functions over adapter state dicts.

Strategy-style, as in Flower: each aggregator maps the clients' states (and weights, where
it uses them) to a new global state and modifies nothing. :func:`fedavg` is Algorithm 1's;
:func:`coordinate_median`, :func:`trimmed_mean` and :func:`clip_update_norm` are the robust
options (issue #12). All of them expect updates already checked by :func:`validate_update`
(same keys, shapes and dtypes, finite values).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from fedgen.core.errors import UpdateError
from fedgen.models.params import all_finite

State = Mapping[str, torch.Tensor]  # read-only view of fedgen.models.params.State


def validate_update(update: State, reference: State, who: str = "client") -> None:
    """Reject an update whose keys, shapes or dtypes differ from ``reference``, or that holds NaN/Inf.

    Raises :class:`~fedgen.core.errors.UpdateError` (one line) for any malformed ``update``,
    whatever its type; reads both arguments and modifies neither.
    """
    if not isinstance(update, Mapping):
        raise UpdateError(f"{who}: update is a {type(update).__name__}, not a mapping of tensors")
    missing, extra = set(reference) - set(update), set(update) - set(reference)
    if missing or extra:
        raise UpdateError(
            f"{who}: update keys differ from the global adapter "
            f"(missing {sorted(missing, key=str)[:3]}, unexpected {_short(sorted(extra, key=str)[:3])})"
        )
    for k, ref in reference.items():
        t = update[k]
        if not isinstance(t, torch.Tensor):
            raise UpdateError(f"{who}: {k} is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided or t.device.type == "meta":
            raise UpdateError(f"{who}: {k} is a {t.layout} tensor on {t.device}, expected a dense tensor")
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise UpdateError(
                f"{who}: {k} has shape {_short(tuple(t.shape))} {t.dtype}, "
                f"expected {tuple(ref.shape)} {ref.dtype}"
            )
        if not all_finite(t):
            raise UpdateError(f"{who}: {k} contains NaN or Inf")


def _short(x: object, limit: int = 120) -> str:
    text = " ".join(repr(x).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def _check_same_keys(states: Sequence[State], who: str) -> None:
    if not states:
        raise UpdateError(f"{who}: no client updates to aggregate")
    ref = states[0]
    for i, st in enumerate(states[1:], start=1):
        if set(st) != set(ref):
            raise UpdateError(f"{who}: update {i} has other keys than update 0")
        for k, t in ref.items():
            if st[k].shape != t.shape:
                raise UpdateError(
                    f"{who}: {k} of update {i} has shape {tuple(st[k].shape)}, not {tuple(t.shape)}"
                )


def coordinate_median(states: Sequence[State]) -> OrderedDict[str, torch.Tensor]:
    """Coordinate-wise median of the clients' states (unweighted, like Flower's FedMedian).

    Every parameter of the result is the median of that parameter over the ``n`` states; for
    even ``n`` the mean of the two middle values (numpy's median), not the lower one as
    ``torch.median``. It resists up to ``ceil(n/2) - 1`` arbitrarily bad updates per
    coordinate, where FedAvg is moved without bound by a single one. Computed in float64,
    cast back to each tensor's dtype.
    """
    _check_same_keys(states, "coordinate_median")
    n = len(states)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, ref in states[0].items():
        srt = torch.stack([s[k].to(torch.float64) for s in states]).sort(dim=0).values
        mid = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
        out[k] = mid.to(ref.dtype)
    return out


def trimmed_mean(states: Sequence[State], beta: float) -> OrderedDict[str, torch.Tensor]:
    """Coordinate-wise trimmed mean (Yin et al. 2018; unweighted, like Flower's FedTrimmedAvg).

    For each parameter, drop the ``floor(beta * n)`` largest and as many smallest values over
    the ``n`` states, and average the rest. ``0 <= beta < 0.5``; ``beta=0`` trims nothing and
    equals :func:`fedavg` with equal weights, to the bit (same float64 accumulation order).
    """
    _check_same_keys(states, "trimmed_mean")
    if not (isinstance(beta, (int, float)) and 0.0 <= beta < 0.5):
        raise UpdateError(f"trimmed_mean: beta must be in [0, 0.5), got {beta!r}")
    n = len(states)
    cut = math.floor(beta * n)
    kept = n - 2 * cut  # >= 1 since beta < 0.5
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, ref in states[0].items():
        if cut == 0:
            rows = [s[k].to(torch.float64) for s in states]
        else:
            srt = torch.stack([s[k].to(torch.float64) for s in states]).sort(dim=0).values
            rows = list(srt[cut : n - cut])
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for r in rows:
            acc += 1.0 * r
        out[k] = (acc / float(kept)).to(ref.dtype)
    return out


def clip_update_norm(update: State, reference: State, max_norm: float) -> OrderedDict[str, torch.Tensor]:
    """Scale the update ``delta = update - reference`` down to L2 norm ``max_norm`` if larger.

    The norm is taken over all tensors together (one vector), in float64. Returns
    ``reference + delta * min(1, max_norm / ||delta||)``: the direction of ``delta`` is kept,
    only its length is bounded, so one client scaled by 1e6 moves the global state by at
    most ``max_norm``. An update within the bound is returned unchanged (as a copy).
    """
    if not (isinstance(max_norm, (int, float)) and math.isfinite(max_norm) and max_norm > 0):
        raise UpdateError(f"clip_update_norm: max_norm must be a finite number > 0, got {max_norm!r}")
    validate_update(update, reference, who="clip_update_norm")
    deltas = {k: update[k].to(torch.float64) - reference[k].to(torch.float64) for k in reference}
    norm = math.sqrt(sum(float((d * d).sum()) for d in deltas.values()))
    scale = 1.0 if norm <= max_norm else max_norm / norm
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, ref in reference.items():
        if scale == 1.0:
            out[k] = update[k].clone()
        else:
            out[k] = (ref.to(torch.float64) + deltas[k] * scale).to(ref.dtype)
    return out
