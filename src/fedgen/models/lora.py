"""LoRA adapters via Hugging Face PEFT, and adapter state <-> PEFT safetensors.

The federated "model" is the adapter state (:class:`fedgen.models.params.ParamSet`): an
ordered ``dict[str, Tensor]`` with PEFT's own saved key names, so a saved adapter is a
plain PEFT adapter directory that ``PeftModel.from_pretrained`` loads onto the same
(q/k/v-split) backbone.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from fedgen.core.errors import CheckpointError
from fedgen.core.files import atomic_save_safetensors, atomic_write_text
from fedgen.models.params import State, first_nonfinite


def lora_config(r: int, alpha: float, targets: list[str], dropout: float = 0.0) -> LoraConfig:
    """PEFT LoRA on ``targets``; B starts at zero, so the adapted model equals the backbone."""
    return LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT types it int; it is only used as alpha / r
        lora_dropout=dropout,
        target_modules=list(targets),
        bias="none",
        init_lora_weights=True,  # A: Kaiming-uniform, B: zeros -> adapted model == backbone
    )


def add_lora(model: nn.Module, r: int, alpha: float, targets: list[str], dropout: float = 0.0) -> PeftModel:
    """Wrap a frozen backbone with LoRA on ``targets`` (B initialised to zero)."""
    return get_peft_model(model, lora_config(r, alpha, targets, dropout))


def save_adapter(model: PeftModel, state: State, path: str | Path) -> Path:
    """Write ``state`` as a PEFT adapter directory (adapter_model.safetensors + adapter_config.json)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(state, path / "adapter_model.safetensors")
    cfg = model.peft_config["default"].to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"])
    atomic_write_text(path / "adapter_config.json", json.dumps(cfg, indent=2, sort_keys=True, default=str))
    return path


def read_adapter(path: str | Path) -> State:
    """Read the adapter tensors of a PEFT adapter directory (or a .safetensors file).

    A missing, unreadable or corrupt file, or one holding NaN/Inf, raises one
    :class:`~fedgen.core.errors.CheckpointError` line; dtypes and shapes are as stored (the server
    checks them against the global state with ``validate_update``).
    """
    path = Path(path)
    f = path / "adapter_model.safetensors" if path.is_dir() else path
    if not f.is_file():
        raise CheckpointError(f"no adapter at {path}")
    try:
        sd = load_file(str(f))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"adapter {f} is corrupt: {' '.join(str(e).split())[:200]}") from None
    bad = first_nonfinite(sd)
    if bad is not None:
        raise CheckpointError(f"adapter {f} is corrupt: {bad} contains NaN or Inf")
    # PEFT saves without the adapter name; our in-memory keys carry none either.
    return OrderedDict((k, sd[k]) for k in sorted(sd))


def init_adapter(model: nn.Module, seed: int) -> None:
    """Re-initialise every LoRA layer from ``seed`` (A random, B = 0): the adapter is a pure function
    of the seed, whatever consumed the global RNG before."""
    import torch

    torch.manual_seed(seed)
    for mod in model.modules():
        reset = getattr(mod, "reset_lora_parameters", None)
        if reset is not None:
            reset("default", True)


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with any LoRA merged into its base weights (eval mode)."""
    model = copy.deepcopy(model)
    merge = getattr(model, "merge_and_unload", None)  # a PEFT model; a plain one has no LoRA
    if merge is not None:
        model = merge()
    return model.eval()
