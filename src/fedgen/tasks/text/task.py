"""The text task: federated LoRA fine-tuning of a causal LM on Penn Treebank.

Data: PTB train cut into pseudo-documents, partitioned by LDA topics + Dirichlet(alpha)
(:mod:`fedgen.tasks.text.data`). Backbone (``model.backbone``): ``auto`` = a GPT-2 with our word
vocabulary pre-trained offline on public text (:mod:`fedgen.tasks.text.pretrain`); a named
embedded real LM (``smollm2-135m``); or any local Hugging Face causal LM directory or ``.gguf``
file with its own tokenizer (:mod:`fedgen.models.causal_lm`). Adapters: PEFT LoRA on the modules
named in ``lora.targets`` (default: attention query and value). Objective and metrics: language
modelling and word-level perplexity comparable across tokenizers (:mod:`fedgen.tasks.text.lm`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from fedgen.core.errors import ConfigError, FedgenError
from fedgen.core.files import atomic_write_text
from fedgen.data.ptb import load_ptb
from fedgen.models.causal_lm import EMBEDDED, load_causal_lm, lora_target_modules, resolve_backbone
from fedgen.models.gpt import VOCAB_FILE, count_params, freeze, load_backbone
from fedgen.models.lora import add_lora
from fedgen.tasks.base import ExperimentView, TaskSetup
from fedgen.tasks.text import report
from fedgen.tasks.text.data import client_datasets, head_sentences, load_partition, ptb_documents
from fedgen.tasks.text.export import export_text
from fedgen.tasks.text.lm import Codec, HFCodec, LMObjective, WordCodec
from fedgen.tasks.text.pretrain import pretrain_backbone

if TYPE_CHECKING:
    from fedgen.config import Config
    from fedgen.models.params import State

PRETRAIN_SOURCES = {"gutenberg", "us-presidential-addresses", "wikitext-2-valid-test", "ptb-public"}
LORA_TARGETS = {"q_proj", "k_proj", "v_proj"}
DEFAULT_TARGETS = ["q_proj", "v_proj"]  # the paper: LoRA on the attention query and value projections
OWN = "the checkpoint's own"
SAMPLE_PROMPTS = ("the stock market", "the company said")


def _first(config: Any, *names: str) -> Any:
    return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)


def _lm(exp: ExperimentView) -> LMObjective:
    """The experiment's objective, which the text task built (an :class:`LMObjective`)."""
    assert isinstance(exp.objective, LMObjective)
    return exp.objective


def architecture(model: nn.Module) -> dict[str, Any]:
    """The facts of a loaded backbone, read from the model itself (never from the config)."""
    c: Any = model.config  # every causal LM's config names these facts, under one of two names
    return {
        "model_type": c.model_type,
        "n_layer": _first(c, "num_hidden_layers", "n_layer"),
        "n_embd": _first(c, "hidden_size", "n_embd"),
        "n_head": _first(c, "num_attention_heads", "n_head"),
        "n_positions": _first(c, "max_position_embeddings", "n_positions"),
        "vocab_size": c.vocab_size,
    }


def decoder_blocks(model: nn.Module) -> tuple[str, str | None]:
    """(key prefix of the transformer blocks, key prefix of the final norm), read from the model:
    ``transformer.h`` / ``transformer.ln_f`` for GPT-2, ``model.layers`` / ``model.norm`` for Llama."""
    n_layer = architecture(model)["n_layer"]
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layer:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            norm = next(
                (
                    f"{parent}.{n}."
                    for n in ("ln_f", "norm", "final_layernorm")
                    if hasattr(model.get_submodule(parent), n)
                ),
                None,
            )
            return f"{name}.", norm
    raise FedgenError(f"backbone {type(model).__name__}: no list of {n_layer} transformer blocks found")


def load_text_backbone(path: Path) -> tuple[nn.Module, Codec, dict]:
    """A backbone checkpoint dir, its codec and its provenance: our word-level GPT-2 (a dir with
    vocab.txt) or any Hugging Face causal LM with its own tokenizer."""
    if (path / VOCAB_FILE).is_file():
        gpt, vocab, meta = load_backbone(path)
        return gpt, WordCodec(vocab), meta
    model, tokenizer, meta = load_causal_lm(path)
    meta["source"] = meta.get("description") or meta["source"]
    return model, HFCodec(tokenizer), meta


class TextTask:
    """PTB language modelling (see the module docstring)."""

    name = "text"
    report = report

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @staticmethod
    def training_examples(cfg: Config) -> int | None:
        """Training windows over all clients (~ (1 - test_fraction) of the clients' word tokens);
        None when PTB is not in ``cfg.data.dir`` (a plan still prints, without step counts)."""
        try:
            ptb = load_ptb(cfg.data.dir, verify=False)
        except FedgenError:
            return None
        _, docs = ptb_documents(cfg, ptb)
        tokens = sum(len(s) for d in docs for s in d)
        return int(tokens * (1 - cfg.data.test_fraction) / (cfg.model.context + 1))

    @staticmethod
    def check_config(cfg: Config) -> None:
        if cfg.data.partition not in ("lda", "iid"):
            raise ConfigError(
                f"config data.partition: the text task supports lda or iid, got {cfg.data.partition!r}"
            )
        m = cfg.model
        if m.n_embd % m.n_head:
            raise ConfigError(f"config model.n_embd: {m.n_embd} must be divisible by model.n_head={m.n_head}")
        if cfg.eval.stride is not None and cfg.eval.stride > m.context // 2:
            raise ConfigError(f"config eval.stride: must be <= model.context / 2 = {m.context // 2}")
        blocks = cfg.algorithm.fedper_personal_blocks
        if m.backbone == "auto" and cfg.algorithm.name == "fedper" and blocks >= m.n_layer:
            raise ConfigError(
                f"config algorithm.fedper_personal_blocks: must be < model.n_layer={m.n_layer} "
                "(something must stay shared)"
            )
        sources = cfg.pretrain.sources
        if not sources or set(sources) - PRETRAIN_SOURCES:
            raise ConfigError(
                f"config pretrain.sources: expected a non-empty subset of {sorted(PRETRAIN_SOURCES)}"
            )
        if "ptb-public" in sources and cfg.data.public_docs == 0:
            raise ConfigError(
                "config pretrain.sources: 'ptb-public' needs data.public_docs > 0 (the public slice)"
            )
        targets = cfg.lora.targets
        if targets is not None and (not targets or (m.backbone == "auto" and set(targets) - LORA_TARGETS)):
            raise ConfigError(f"config lora.targets: expected a non-empty subset of {sorted(LORA_TARGETS)}")

    # -- backbone ------------------------------------------------------------------------------
    def backbone_path(self) -> Path:
        """``model.backbone``, or the cache slot ``fedgen pretrain`` fills for this architecture + recipe."""
        cfg = self.cfg
        if cfg.model.backbone in EMBEDDED:
            return Path(cfg.output.root) / "backbones" / f"{cfg.model.backbone}-<gguf sha>"
        if cfg.model.backbone != "auto":
            return Path(cfg.model.backbone)
        m = cfg.model
        key = cfg.digest("model", "pretrain")
        if "ptb-public" in cfg.pretrain.sources:  # the slice itself is part of the pre-training data
            key += f"-ptb{cfg.data.public_docs}x{cfg.data.doc_sentences}"
        name = f"gpt-{m.n_layer}x{m.n_embd}x{m.n_head}-ctx{m.context}-{key}"
        return Path(cfg.output.root) / "backbones" / name

    @staticmethod
    def backbone_ready(path: Path) -> bool:
        return (path / "config.json").is_file()

    def pretrain(self, out: Path, progress: bool = True) -> Path:
        """``auto``: pre-train our word-level GPT-2 into ``out``; a GGUF backbone: dequantize + cache it."""
        if self.cfg.model.backbone != "auto":
            return self.ensure_backbone(progress)
        return pretrain_backbone(self.cfg, out, progress)

    def ensure_backbone(self, progress: bool = True) -> Path:
        """The backbone's checkpoint dir: pre-trained (``auto``) or dequantized (GGUF) once, then cached."""
        if self.cfg.model.backbone != "auto":
            return resolve_backbone(
                self.cfg.model.backbone, Path(self.cfg.output.root) / "backbones", progress
            )
        path = self.backbone_path()
        if self.backbone_ready(path):
            return path
        if progress:
            print(f"No pretrained backbone for this config yet: pretraining one into {path}")
        return self.pretrain(path, progress)

    # -- experiment parts ----------------------------------------------------------------------
    def setup(self, trains: str, progress: bool = True) -> TaskSetup:
        cfg = self.cfg
        ptb = load_ptb(cfg.data.dir)
        base, codec, meta = load_text_backbone(self.ensure_backbone(progress))
        if isinstance(codec, WordCodec) and codec.vocab != ptb.vocab:
            raise FedgenError(f"backbone {meta.get('path')}: its vocab.txt is not PTB's training vocabulary")
        arch = architecture(base)
        if arch["n_positions"] is not None and arch["n_positions"] < cfg.model.context:
            raise FedgenError(
                f"backbone {meta.get('path')}: model.context={cfg.model.context} exceeds the backbone's "
                f"maximum context {arch['n_positions']}"
            )
        freeze(base)
        lm = LMObjective(codec, cfg.model.context, cfg.eval.stride)
        docs, part = load_partition(cfg, ptb)
        if progress:
            s = part.stats["summary"]
            print(
                f"partition: {part.scheme} K={cfg.data.num_clients} alpha={cfg.data.alpha} "
                f"over {len(docs)} docs; dominant-topic share {s['dominant_topic_share_mean']:.2f}; "
                f"train tokens/client {s['tokens_train_min']}-{s['tokens_train_max']} "
                f"(median {s['tokens_train_median']:.0f})"
            )
        words = cfg.eval.max_tokens
        return TaskSetup(
            objective=lm,
            model=base,
            data=client_datasets(lm, docs, part),
            partition=part,
            eval_sets={
                "valid": lm.stream(head_sentences(ptb.valid, words)),
                "test": lm.stream(head_sentences(ptb.test, words)),
            },
            backbone={
                "source": meta.get("source"),
                "path": meta.get("path"),
                "params": count_params(base),
                "architecture": arch,
                "tokenizer": "fedgen word-level PTB vocabulary" if isinstance(codec, WordCodec) else OWN,
                "ptb_valid_ppl_pretrain": meta.get("ptb_valid_ppl"),
            },
        )

    @staticmethod
    def lora_targets(cfg: Config) -> list[str]:
        """``lora.targets``, or the paper's default (query and value projections)."""
        return list(cfg.lora.targets) if cfg.lora.targets is not None else list(DEFAULT_TARGETS)

    def add_adapter(self, model: nn.Module) -> nn.Module:
        a = self.cfg.lora
        try:
            targets = lora_target_modules(model, self.lora_targets(self.cfg))
        except FedgenError as e:
            raise ConfigError(f"config lora.targets: {e}") from None
        return add_lora(model, a.r, a.alpha, targets, a.dropout)

    def personal_keys(self, model: nn.Module, keys: list[str], blocks: int) -> list[str]:
        """FedPer: the last ``blocks`` transformer blocks and the final norm (the LM head, tied to
        the input embedding in GPT-2 and SmolLM2, stays shared). Read from the backbone itself."""
        n_layer = architecture(model)["n_layer"]
        if blocks >= n_layer:
            raise FedgenError(
                f"algorithm.fedper_personal_blocks={blocks}: the backbone has {n_layer} blocks, "
                "at least one must stay shared"
            )
        layers, norm = decoder_blocks(model)
        prefixes = tuple(f"{layers}{i}." for i in range(n_layer - blocks, n_layer)) + (
            (norm,) if norm else ()
        )
        return [k for k in keys if k.startswith(prefixes)]

    # -- outputs -------------------------------------------------------------------------------
    def finish(
        self, exp: ExperimentView, run_dir: Path, global_state: State | None, personal, progress: bool = True
    ) -> dict:
        """Sampled continuations (temperature 1, top-k 40, fixed seeds) -> ``samples.json``."""
        import json

        models = [("global", global_state)] if global_state is not None else []
        if personal is not None:
            models += [(f"client {k} (personalized)", personal(k)) for k in sorted(exp.data)[:2]]
        out: dict[str, list[str]] = {}
        for label, state in models:
            exp.params.load(state)
            out[label] = [
                _lm(exp).sample(exp.params.model, p, max_new_tokens=25, seed=i)
                for i, p in enumerate(SAMPLE_PROMPTS)
            ]
        atomic_write_text(run_dir / "samples.json", json.dumps(out, indent=2))
        return {}

    def export(self, exp: ExperimentView, out: Path) -> list[str]:
        return export_text(exp, out)

    def generate(self, exp: ExperimentView, run_dir: Path, who: str, opts: Any) -> str:
        texts = [
            _lm(exp).sample(
                exp.params.model,
                opts.prompt,
                max_new_tokens=opts.max_tokens,
                temperature=opts.temperature,
                top_k=opts.top_k or None,
                seed=opts.seed + i,
            )
            for i in range(opts.num)
        ]
        return "\n".join(texts)

    def describe_partition(self) -> str:
        import json

        _, part = load_partition(self.cfg, load_ptb(self.cfg.data.dir))
        s = part.stats["summary"]
        lines = [json.dumps(s, indent=2)]
        for t, words in enumerate(part.topic_words):
            lines.append(f"topic {t:2d} ({s['topic_sizes'].get(str(t), 0):4d} docs): {' '.join(words)}")
        return "\n".join(lines)
