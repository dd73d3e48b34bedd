"""Offline substitute for a public GPT-2 checkpoint: pre-train the backbone on public text.

No federated client holds this text (Project Gutenberg books, US presidential
addresses, WikiText-2 valid/test; see ``$FEDGEN_DATA/pretrain/SOURCES.md``). It is
normalised to PTB's conventions and PTB's 10k word vocabulary. The result is saved
as a standard Hugging Face GPT-2 checkpoint and labelled as our own pre-training
everywhere it is used.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from fedgen.core.seeding import derive_seed
from fedgen.data.corpus import load_pretrain_corpus
from fedgen.data.ptb import load_ptb
from fedgen.models.gpt import build_gpt, count_params, gpt2_config, save_backbone
from fedgen.tasks.text.data import head_sentences, ptb_documents
from fedgen.tasks.text.lm import LMObjective, WordCodec

if TYPE_CHECKING:
    from fedgen.config import Config

SOURCE_LABEL = "fedgen-pretrain (offline substitute for a public GPT-2 checkpoint)"


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def public_text(cfg: Config, ptb) -> tuple[list[list[str]], dict]:
    """The pre-training sentences (public corpus and/or PTB's public slice) and their statistics."""
    corpus = [s for s in cfg.pretrain.sources if s != "ptb-public"]
    sentences, stats = (
        load_pretrain_corpus(cfg.data.dir, ptb.vocab, corpus) if corpus else ([], {"sources": {}})
    )
    if "ptb-public" in cfg.pretrain.sources:
        public = [s for doc in ptb_documents(cfg, ptb)[0] for s in doc]
        words = sum(len(s) - 1 for s in public)
        stats["sources"]["ptb-public"] = {
            "documents": cfg.data.public_docs,
            "sentences": len(public),
            "words": words,
            "tokens": words + len(public),
            "oov_rate": 0.0,
        }
        sentences = sentences + public
    per = stats["sources"].values()
    words = sum(v["words"] for v in per)
    oov = sum(v["oov_rate"] * v["words"] for v in per)
    stats.update(
        sentences=len(sentences),
        words=words,
        tokens=sum(v["tokens"] for v in per),
        oov_rate=oov / words if words else 0.0,
    )
    return sentences, stats


def pretrain_backbone(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """Train a GPT-2 LM from scratch on the public corpus; save it to ``out``; return the path."""
    t0 = time.time()
    ptb = load_ptb(cfg.data.dir)
    m, p = cfg.model, cfg.pretrain
    sentences, corpus_stats = public_text(cfg, ptb)
    task = LMObjective(WordCodec(ptb.vocab), m.context, cfg.eval.stride)
    examples = task.examples(task.stream(sentences))
    model = build_gpt(
        gpt2_config(len(ptb.vocab), m.n_layer, m.n_embd, m.n_head, m.context, m.dropout), p.seed
    )
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    seed = derive_seed(p.seed, "pretrain")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(range(p.steps), desc="pretrain", disable=not progress, unit="step")
    for step in bar:
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(step, p.steps, p.warmup_steps, p.lr)
        idx = torch.randint(len(examples), (p.batch_size,), generator=g)
        loss = task.loss(model, examples[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    valid = task.evaluate(
        model, task.stream(head_sentences(ptb.valid, cfg.eval.max_tokens)), cfg.eval.batch_size
    )
    meta = {
        "source": SOURCE_LABEL,
        "corpus": {"sources": list(p.sources), **{k: v for k, v in corpus_stats.items() if k != "sources"}},
        "corpus_per_source": corpus_stats["sources"],
        "architecture": {"n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "context": m.context},
        "params": count_params(model),
        "pretrain": {
            "steps": p.steps,
            "batch_size": p.batch_size,
            "lr": p.lr,
            "windows_available": len(examples),
            "tokens_seen": p.steps * p.batch_size * m.context,
            "seed": p.seed,
        },
        "ptb_valid_ppl": valid["ppl"],
        "ptb_valid_tokens": valid["tokens"],
        "wall_seconds": round(time.time() - t0, 1),
    }
    path = save_backbone(model, ptb.vocab, out, meta)
    if progress:
        print(
            f"backbone: {meta['params']:,} params, pretrained {p.steps} steps on "
            f"{corpus_stats['tokens']:,} public tokens (OOV {corpus_stats['oov_rate']:.1%}); "
            f"PTB valid PPL {valid['ppl']:.1f}; saved to {path}"
        )
    return path
