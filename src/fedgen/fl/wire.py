"""Communication accounting: what a message really costs on the wire, and the paper's formula."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedgen.core.errors import UpdateError
from fedgen.fl.aggregate import validate_update
from fedgen.models.params import first_nonfinite


def serialize(state: Mapping[str, torch.Tensor]) -> bytes:
    """The bytes a client/server sends: the state dict as safetensors (header + raw tensors)."""
    return st_save({k: v.contiguous() for k, v in state.items()})


def deserialize(
    data: bytes, reference: Mapping[str, torch.Tensor] | None = None, who: str = "client"
) -> OrderedDict[str, torch.Tensor]:
    """The state dict in a message made by :func:`serialize`, keys sorted.

    Any malformed message raises one :class:`~fedgen.core.errors.UpdateError` line: not bytes,
    not safetensors (random or truncated bytes, a bad header, declared shapes that do not fit
    the payload or overflow), or tensors holding NaN/Inf. With ``reference`` (the global
    state) the keys, shapes and dtypes must also match it (:func:`validate_update`), so e.g.
    int8 or float16 tensors where float32 is expected are rejected. ``data`` is only read.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UpdateError(f"{who}: message is a {type(data).__name__}, not bytes")
    try:
        sd = st_load(bytes(data))
    except Exception as e:  # SafetensorError, and e.g. KeyError for dtypes torch lacks
        text = " ".join(str(e).split())[:200]
        raise UpdateError(f"{who}: not a valid safetensors message ({type(e).__name__}: {text})") from None
    state = OrderedDict((k, sd[k]) for k in sorted(sd))
    if reference is not None:
        validate_update(state, reference, who=who)
    else:
        bad = first_nonfinite(state)
        if bad is not None:
            raise UpdateError(f"{who}: {bad} contains NaN or Inf")
    return state


def num_params(state: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in state.values())


def formula_bytes(params: int, bytes_per_param: int = 4) -> int:
    """Formula (3.5): payload of one message = |theta| * bytes per parameter (fp32 -> 4)."""
    return params * bytes_per_param


def upload_total_formula(rounds: int, clients_per_round: int, params: int, bytes_per_param: int = 4) -> int:
    """Total upload of a run by formula (3.5) for adapters / (3.6) for full models:
    rounds x clients per round x uploaded parameters x bytes per parameter."""
    return rounds * clients_per_round * formula_bytes(params, bytes_per_param)
