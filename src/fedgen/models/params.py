"""The parameters an algorithm trains and exchanges, as a named state dict.

Two kinds: ``"lora"`` (the LoRA tensors of a PEFT model, under PEFT's own saved key
names, so a state is a PEFT adapter) and ``"full"`` (every parameter of the model,
tied weights once). Loading checks keys and shapes; nothing is silently ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from fedgen.core.errors import CheckpointError

State = dict[str, torch.Tensor]  # an ordered name -> tensor mapping: what clients and server exchange

ADAPTER_NAME = "default"


def exchange_key(param_name: str) -> str:
    """A LoRA parameter's exchange key: PEFT's saved key (the adapter name dropped).

    ``...q_proj.lora_A.default.weight`` -> ``...q_proj.lora_A.weight``, exactly what
    ``get_peft_model_state_dict`` writes, so a state is a loadable PEFT adapter.
    """
    return param_name.replace(f".{ADAPTER_NAME}.", ".")


class ParamSet:
    """A fixed, ordered set of a model's parameters, addressed by exchange keys.

    It never changes ``requires_grad``: :meth:`mark_trainable` does that, when asked.
    """

    def __init__(self, model: nn.Module, kind: str):
        if kind not in ("lora", "full"):
            raise ValueError(f"unknown parameter set {kind!r}")
        self.model, self.kind = model, kind
        named = model.named_parameters()  # deduplicates tied weights
        pairs = [(exchange_key(n), p) for n, p in named if "lora_" in n] if kind == "lora" else list(named)
        self.params: OrderedDict[str, nn.Parameter] = OrderedDict(sorted(pairs))

    def mark_trainable(self) -> None:
        """Freeze every parameter of the model except this set's."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)

    def __len__(self) -> int:
        return len(self.params)

    def keys(self) -> list[str]:
        return list(self.params)

    def parameters(self, keys: Iterable[str] | None = None) -> list[nn.Parameter]:
        return [self.params[k] for k in (self.params if keys is None else keys)]

    def numel(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def state(self, keys: Iterable[str] | None = None) -> State:
        """Detached CPU copies of the (selected) parameters (what is exchanged and saved)."""
        ks = self.params if keys is None else keys
        return OrderedDict((k, self.params[k].detach().to("cpu", copy=True)) for k in ks)

    def load(self, state: State, partial: bool = False) -> None:
        """Copy ``state`` into the parameters. ``partial`` allows a subset of the keys."""
        extra = sorted(set(state) - set(self.params))
        missing = [] if partial else sorted(set(self.params) - set(state))
        if extra or missing:
            raise CheckpointError(
                f"state does not fit this model (missing {missing[:2]}, unexpected {extra[:2]})"
            )
        with torch.no_grad():
            for k, v in state.items():
                p = self.params[k]
                if tuple(v.shape) != tuple(p.shape):
                    raise CheckpointError(
                        f"tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(p.shape)} "
                        "(another LoRA rank or backbone?)"
                    )
                p.copy_(v)


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN/Inf; integer and bool tensors always are.

    Dtypes for which torch has no ``isfinite`` kernel (float8) are checked in float32.
    """
    if not (t.is_floating_point() or t.is_complex()):
        return True
    try:
        return bool(torch.isfinite(t).all())
    except (NotImplementedError, RuntimeError):
        return bool(torch.isfinite(t.to(torch.float32)).all())


def first_nonfinite(state: State) -> str | None:
    """The first key (in order) whose tensor holds NaN or Inf, else None."""
    for k, t in state.items():
        if isinstance(t, torch.Tensor) and not all_finite(t):
            return k
    return None
