"""GPT-2-architecture backbone built on Hugging Face transformers.

GPT-2 fuses the query, key and value projections into one ``c_attn`` layer, so
LoRA on "query and value only" cannot target it directly. :func:`split_qkv`
swaps each fused layer for :class:`SplitQKV`, which holds real ``q_proj`` /
``k_proj`` / ``v_proj`` ``nn.Linear`` layers initialised from the fused weight
slices (same outputs). Standard PEFT ``LoraConfig(target_modules=["q_proj",
"v_proj"])`` then applies, and PEFT's save/load works unchanged.

Backbones are stored as ordinary (fused) Hugging Face GPT-2 checkpoints, plus
``vocab.txt`` (our word-level vocabulary) and ``fedgen_backbone.json`` (where the
weights came from), so any GPT-2 tool can read them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from fedgen import _quiet_transformers
from fedgen.core.errors import FedgenError
from fedgen.data.ptb import Vocab

_quiet_transformers()

BACKBONE_META = "fedgen_backbone.json"
VOCAB_FILE = "vocab.txt"


class SplitQKV(nn.Module):
    """Drop-in replacement for GPT-2's fused ``c_attn``: ``cat(q_proj(x), k_proj(x), v_proj(x))``."""

    def __init__(self, fused: Conv1D):
        super().__init__()
        d_in, d_out3 = fused.weight.shape  # Conv1D stores (in, out)
        d = d_out3 // 3
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_in, d) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                lin.weight.copy_(fused.weight[:, i * d : (i + 1) * d].T)
                lin.bias.copy_(fused.bias[i * d : (i + 1) * d])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)

    def fused(self) -> Conv1D:
        """The equivalent fused ``Conv1D`` (to save a standard GPT-2 checkpoint)."""
        d_in, d = self.q_proj.in_features, self.q_proj.out_features
        conv = Conv1D(3 * d, d_in)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([p.weight.T for p in (self.q_proj, self.k_proj, self.v_proj)], 1))
            conv.bias.copy_(torch.cat([p.bias for p in (self.q_proj, self.k_proj, self.v_proj)]))
        return conv


def split_qkv(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """Replace every block's fused ``attn.c_attn`` by :class:`SplitQKV` (in place)."""
    for block in model.transformer.h:
        attn = cast(nn.Module, block.attn)  # a submodule (typed Tensor | Module)
        if isinstance(attn.c_attn, Conv1D):
            attn.c_attn = SplitQKV(attn.c_attn)
    return model


def fuse_qkv(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """Inverse of :func:`split_qkv` (in place)."""
    for block in model.transformer.h:
        attn = cast(nn.Module, block.attn)  # a submodule (typed Tensor | Module)
        if isinstance(attn.c_attn, SplitQKV):
            attn.c_attn = attn.c_attn.fused()
    return model


def gpt2_config(
    vocab_size: int, n_layer: int, n_embd: int, n_head: int, context: int, dropout: float
) -> GPT2Config:
    """A GPT-2 config for a word-level vocabulary (``<eos>`` doubles as BOS/EOS)."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=context,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=True,
    )


def build_gpt(cfg: GPT2Config, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 LM (deterministic for ``seed``), with q/k/v split."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    return split_qkv(model)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def save_backbone(model: GPT2LMHeadModel, vocab: Vocab, path: str | Path, meta: dict[str, Any]) -> Path:
    """Save a standard GPT-2 checkpoint (safetensors) + ``vocab.txt`` + provenance metadata."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    fused = GPT2LMHeadModel(model.config)
    fused.load_state_dict(fuse_qkv(_clone(model)).state_dict())
    fused.save_pretrained(tmp, safe_serialization=True)
    vocab.save(tmp / VOCAB_FILE)
    (tmp / BACKBONE_META).write_text(json.dumps(meta, indent=2))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)
    return path


def _clone(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    c = split_qkv(GPT2LMHeadModel(model.config))
    c.load_state_dict(model.state_dict())
    return c


def load_backbone(path_or_id: str | Path) -> tuple[GPT2LMHeadModel, Vocab, dict[str, Any]]:
    """Load a GPT-2 checkpoint (local dir or HF hub id) with its word vocabulary, q/k/v split.

    Returns ``(model, vocab, meta)``; ``meta`` says where the weights came from.
    """
    p = Path(path_or_id)
    local = p.is_dir()
    if local and not (p / "config.json").is_file():
        raise FedgenError(f"backbone {p}: not a Hugging Face checkpoint (no config.json)")
    try:
        model = GPT2LMHeadModel.from_pretrained(str(path_or_id))
    except OSError as e:
        raise FedgenError(
            f"backbone {path_or_id!r} could not be loaded ({str(e).splitlines()[0]}). "
            "Give a local checkpoint directory or run `fedgen pretrain` to build one offline."
        ) from None
    vocab_path = p / VOCAB_FILE if local else None
    if vocab_path is None or not vocab_path.is_file():
        raise FedgenError(
            f"backbone {path_or_id}: no {VOCAB_FILE} beside the weights. fedgen's text task is word-level "
            "(PTB's 10k vocabulary); a BPE checkpoint such as 'gpt2' is not supported yet."
        )
    vocab = Vocab.load(vocab_path)
    if len(vocab) != model.config.vocab_size:
        raise FedgenError(
            f"backbone {p}: {VOCAB_FILE} has {len(vocab)} tokens, the model expects {model.config.vocab_size}"
        )
    meta = json.loads((p / BACKBONE_META).read_text()) if (p / BACKBONE_META).is_file() else {}
    meta.setdefault("source", "huggingface-checkpoint")
    meta["path"] = str(path_or_id)
    return split_qkv(model), vocab, meta


def freeze(model: nn.Module) -> None:
    for prm in model.parameters():
        prm.requires_grad_(False)
