"""The text task's export: the merged LM as a Hugging Face checkpoint with a tokenizer.

GPT-2 backbones: LoRA merged, q/k/v fused back into GPT-2's ``c_attn``
(:func:`fedgen.models.gpt.fuse_qkv`), saved with ``save_pretrained`` (safetensors), plus a
``tokenizer.json`` built with the ``tokenizers`` library from our word vocabulary (newline ->
``<eos>``, ``<eos>`` prepended as fedgen does), so that ``GPT2LMHeadModel.from_pretrained(OUT)``
and ``AutoTokenizer.from_pretrained(OUT)`` work. Other Hugging Face causal LMs: merged and saved
as they are, with the backbone's own tokenizer files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import cast

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerFast

from fedgen.core.errors import FedgenError
from fedgen.data.ptb import Vocab
from fedgen.models.gpt import VOCAB_FILE, SplitQKV, fuse_qkv
from fedgen.models.lora import merged_copy
from fedgen.tasks.base import ExperimentView

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def word_tokenizer(itos: list[str], eos: str = "<eos>", unk: str = "<unk>"):
    """A ``PreTrainedTokenizerFast`` over our word vocabulary: whitespace split, newline = ``eos``,
    ``eos`` prepended as the LM's start token (as in training and in fedgen's sampling)."""
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(itos)}, unk_token=unk))
    tok.normalizer = normalizers.Replace("\n", f" {eos} ")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos_id = itos.index(eos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A $B", special_tokens=[(eos, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, eos_token=eos, bos_token=eos, pad_token=eos
    )


def export_text(exp: ExperimentView, out: Path) -> list[str]:
    """Write the loaded model and its tokenizer into ``out``; returns the file names written."""
    model = cast(PreTrainedModel, merged_copy(exp.params.model))  # text backbones are transformers LMs
    if any(isinstance(m, SplitQKV) for m in model.modules()):  # our word-level GPT-2 (split q/k/v)
        gpt = fuse_qkv(cast(GPT2LMHeadModel, model))
        model = GPT2LMHeadModel(gpt.config)  # a plain GPT-2 (fresh c_attn Conv1D modules), same weights
        model.load_state_dict(gpt.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    backbone = Path(exp.setup.backbone.get("path") or "")
    if (backbone / "tokenizer.json").is_file():  # a Hugging Face LM with its own tokenizer
        for name in TOKENIZER_FILES:
            if (backbone / name).is_file():
                shutil.copyfile(backbone / name, out / name)
    elif (backbone / VOCAB_FILE).is_file():
        word_tokenizer(Vocab.load(backbone / VOCAB_FILE).itos).save_pretrained(out)
        shutil.copyfile(backbone / VOCAB_FILE, out / VOCAB_FILE)
    else:
        raise FedgenError(
            f"backbone {backbone}: no tokenizer.json or {VOCAB_FILE} to export a tokenizer from"
        )
    return sorted(p.name for p in out.iterdir() if p.is_file())
