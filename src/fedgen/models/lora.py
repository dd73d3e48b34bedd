"""LoRA adapters via Hugging Face PEFT, and adapter state <-> PEFT safetensors.

The federated "model" is the adapter state: an ordered ``dict[str, Tensor]`` with
PEFT's own key names (``get_peft_model_state_dict``), so a saved adapter is a
plain PEFT adapter directory that ``PeftModel.from_pretrained`` loads onto the
same (q/k/v-split) backbone.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from fedgen.errors import CheckpointError
from fedgen.fl.aggregate import first_nonfinite

State = dict[str, torch.Tensor]


def lora_config(r: int, alpha: float, targets: list[str], dropout: float = 0.0) -> LoraConfig:
    """PEFT LoRA on ``targets``; B starts at zero, so the adapted model equals the backbone."""
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        bias="none",
        init_lora_weights=True,  # A: Kaiming-uniform, B: zeros -> adapted model == backbone
    )


def add_lora(model: nn.Module, r: int, alpha: float, targets: list[str], dropout: float = 0.0) -> PeftModel:
    """Wrap a frozen backbone with LoRA on ``targets`` (B initialised to zero)."""
    return get_peft_model(model, lora_config(r, alpha, targets, dropout))


def adapter_state(model: PeftModel) -> State:
    """The trainable adapter tensors (detached copies), in a stable key order."""
    sd = get_peft_model_state_dict(model)
    return OrderedDict((k, sd[k].detach().clone()) for k in sorted(sd))


def load_adapter_state(model: PeftModel, state: State) -> None:
    """Copy ``state`` into the model's adapter in place (keys and shapes must match exactly)."""
    expected = get_peft_model_state_dict(model)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"adapter does not fit this model (missing {missing[:2]}, unexpected {extra[:2]})"
        )
    for k, ref in expected.items():
        if tuple(state[k].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"adapter tensor {k} has shape {tuple(state[k].shape)}, the model expects {tuple(ref.shape)} "
                "(was it trained with another LoRA rank or backbone?)"
            )
    set_peft_model_state_dict(model, state)


def lora_parameters(model: PeftModel) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


def save_adapter(model: PeftModel, state: State, path: str | Path) -> Path:
    """Write ``state`` as a PEFT adapter directory (adapter_model.safetensors + adapter_config.json)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "adapter_model.safetensors"))
    cfg = model.peft_config["default"].to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"])
    (path / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    return path


def read_adapter(path: str | Path) -> State:
    """Read the adapter tensors of a PEFT adapter directory (or a .safetensors file).

    A missing, unreadable or corrupt file, or one holding NaN/Inf, raises one
    :class:`~fedgen.errors.CheckpointError` line; dtypes and shapes are as stored (the server
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
