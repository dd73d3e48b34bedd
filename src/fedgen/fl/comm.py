"""Communication accounting: what a message really costs on the wire, and the paper's formula."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors.torch import save as st_save


def serialize(state: Mapping[str, torch.Tensor]) -> bytes:
    """The bytes a client/server sends: the state dict as safetensors (header + raw tensors)."""
    return st_save({k: v.contiguous() for k, v in state.items()})


def num_params(state: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in state.values())


def formula_bytes(params: int, bytes_per_param: int = 4) -> int:
    """Formula (3.5): payload of one message = |theta| * bytes per parameter (fp32 -> 4)."""
    return params * bytes_per_param


def upload_total_formula(rounds: int, clients_per_round: int, params: int, bytes_per_param: int = 4) -> int:
    """Total upload of a run by formula (3.5) for adapters / (3.6) for full models:
    rounds x clients per round x uploaded parameters x bytes per parameter."""
    return rounds * clients_per_round * formula_bytes(params, bytes_per_param)
