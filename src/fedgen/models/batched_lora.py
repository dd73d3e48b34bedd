"""Several clients' LoRA adapters on one shared frozen backbone, in one forward pass.

:class:`BatchedLoRALinear` stands in for one PEFT ``lora.Linear``: the base layer is shared and each
of C clients has its own ``A[c]`` (PEFT's ``lora_A.weight``, ``[r, in]``) and ``B[c]``
(``lora_B.weight``, ``[out, r]``), with PEFT's ``scaling`` (alpha / r). The input rows are the
concatenated batches of clients ``0..n-1`` (:class:`Rows`: how many rows each); client c's rows get
``base(x) + x A[c]^T B[c]^T * scaling``, computed with one ``torch.bmm`` over the client dim (a
client with fewer rows is padded with zero rows, which are dropped again). :func:`batched_lora`
swaps these layers into a PEFT model for the duration of a block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import cast

import torch
from peft.tuners.lora import Linear as PeftLoraLinear
from torch import nn

from fedgen.models.params import ADAPTER_NAME


class Rows:
    """Which rows of a concatenated batch belong to which client: ``counts[c]`` rows for client c."""

    def __init__(self, counts: list[int], device: torch.device):
        self.counts, self.width = counts, max(counts)
        self.equal = all(c == self.width for c in counts)
        # each row's place in the padded [clients * width] layout (only needed when counts differ)
        self.pos = None
        if not self.equal:
            pos = [c * self.width + torch.arange(k) for c, k in enumerate(counts)]
            self.pos = torch.cat(pos).to(device)


class BatchedLoRALinear(nn.Module):
    """One PEFT ``lora.Linear`` for ``n_clients`` clients at once (see the module docstring)."""

    def __init__(self, lora: PeftLoraLinear, n_clients: int):
        super().__init__()
        self.base = lora.base_layer
        # PEFT's lora_A / lora_B are ModuleDicts of nn.Linear (typed as plain Modules)
        lin_a, lin_b = cast(nn.Linear, lora.lora_A[ADAPTER_NAME]), cast(nn.Linear, lora.lora_B[ADAPTER_NAME])
        a, b = lin_a.weight, lin_b.weight
        self.A = nn.Parameter(a.detach().new_zeros((n_clients, *a.shape)))
        self.B = nn.Parameter(b.detach().new_zeros((n_clients, *b.shape)))
        self.scaling = lora.scaling[ADAPTER_NAME]
        self.rows: Rows | None = None  # set before each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        rows = self.rows
        assert rows is not None, "set .rows before the forward pass"
        n, d_in, d_out = len(rows.counts), x.shape[-1], self.B.shape[1]
        h = x.to(self.A.dtype).reshape(x.shape[0], -1, d_in)  # [rows, tokens, in]
        t = h.shape[1]
        if rows.pos is not None:  # None exactly when rows.equal
            h = h.new_zeros(n * rows.width, t, d_in).index_copy(0, rows.pos, h)
        h = torch.bmm(h.reshape(n, -1, d_in), self.A[:n].transpose(1, 2))
        delta = torch.bmm(h, self.B[:n].transpose(1, 2)).reshape(-1, t, d_out)
        if rows.pos is not None:
            delta = delta.index_select(0, rows.pos)
        return (result + delta.reshape(*x.shape[:-1], d_out) * self.scaling).to(result.dtype)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every module holding LoRA weights, by name (PEFT ``lora.Linear`` or anything else)."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and ADAPTER_NAME in m.lora_A}


def unsupported(model: nn.Module, keys: list[str]) -> str | None:
    """Why :func:`batched_lora` cannot stand in for this model's adapters (None: it can).

    ``keys``: the exchanged state's keys, which must be exactly these layers' ``lora_A``/``lora_B``.
    """
    layers = lora_layers(model)
    if not layers:
        return "the model has no LoRA layers"
    for name, m in layers.items():
        if type(m) is not PeftLoraLinear or type(m.base_layer) is not nn.Linear:
            return f"{name}: only LoRA on nn.Linear is batched, not {type(m).__name__}"
        if m.fan_in_fan_out or m.merged or m.disable_adapters or list(m.active_adapters) != [ADAPTER_NAME]:
            return f"{name}: a merged, disabled, fan-in-fan-out or multi-adapter LoRA layer"
        if m.lora_variant or m.lora_B[ADAPTER_NAME].bias is not None:
            return f"{name}: a LoRA variant (DoRA, ...) or LoRA bias"
        if not isinstance(m.lora_dropout[ADAPTER_NAME], nn.Identity):
            return "LoRA dropout > 0 (its masks cannot match sequential training)"
    expected = {f"{n}.lora_{ab}.weight" for n in layers for ab in "AB"}
    if expected != set(keys):
        return "the trained parameters are not exactly the LoRA adapters"
    return None


@contextmanager
def batched_lora(model: nn.Module, n_clients: int) -> Iterator[dict[str, BatchedLoRALinear]]:
    """Within the block every PEFT LoRA layer of ``model`` is a :class:`BatchedLoRALinear` for
    ``n_clients`` clients (yielded by module name: ``{name}.lora_A.weight`` is ``layer.A[c]``);
    the PEFT layers are put back afterwards. Check :func:`unsupported` first."""
    originals = lora_layers(model)
    # cast: unsupported() has checked that every LoRA layer is a PEFT lora.Linear
    batched = {n: BatchedLoRALinear(cast(PeftLoraLinear, m), n_clients) for n, m in originals.items()}

    def put(layers: Mapping[str, nn.Module]) -> None:
        for name, layer in layers.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)

    put(batched)
    try:
        yield batched
    finally:
        put(originals)
