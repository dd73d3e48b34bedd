"""Word-level perplexity that is comparable across tokenizers (word-level, BPE, SentencePiece ...).

How PTB is presented to a model with its own tokenizer (:func:`encode_lines`):

- every PTB line is its words joined by single spaces (``<unk>`` and ``N`` kept as literal text), followed
  by ``"\\n"``, which stands for PTB's ``<eos>``; the whole text is tokenized in one call, without the
  tokenizer's automatic special tokens;
- the stream starts with one prefix token that is never scored, so the first real token is predicted
  from some context: the tokenizer's BOS token if it has one, else the tokens of ``"\\n"`` (as if a
  previous line had just ended);
- the number of words is the number of PTB words plus one ``<eos>`` per line (PTB valid: 73,760).

:func:`strided_nll` scores every token after the prefix exactly once, with overlapping windows of
``context`` tokens that advance by ``stride <= context / 2`` (as in Hugging Face's perplexity guide), so
each token after the first window has at least ``context - stride`` tokens of left context.

The headline is word PPL = exp(total NLL / number of words); token PPL = exp(total NLL / number of scored
tokens) is reported beside it. Both are the same total NLL of the same text, so for a word-level
tokenizer (one token per word, ``"\\n"`` -> the ``<eos>`` token) word PPL equals token PPL exactly.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def present_lines(lines: Sequence[str]) -> str:
    """The text a subword model sees for PTB ``lines``: words joined by single spaces, ``"\\n"`` per line."""
    return "".join(" ".join(line.split()) + "\n" for line in lines)


def count_words(lines: Sequence[str]) -> int:
    """PTB words plus one ``<eos>`` per line."""
    return sum(len(line.split()) + 1 for line in lines)


def prefix_ids(tokenizer: Any) -> list[int]:
    """The unscored stream prefix: ``[BOS]`` if the tokenizer has one, else the ids of ``"\\n"``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        return [int(bos)]
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("tokenizer has no BOS token and encodes '\\n' to nothing: no stream prefix")
    return [int(i) for i in ids]


def encode_lines(tokenizer: Any, lines: Sequence[str]) -> tuple[torch.Tensor, int]:
    """Token ids (1-D ``LongTensor``: prefix + text of :func:`present_lines`) and the number of words."""
    ids = tokenizer(present_lines(lines), add_special_tokens=False)["input_ids"]
    return torch.tensor(prefix_ids(tokenizer) + list(ids), dtype=torch.long), count_words(lines)


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, first_scored, end)`` per window over a stream of ``n`` tokens.

    Window ``k`` holds tokens ``[start, end)`` and scores the targets ``[first_scored, end)``; every position
    ``1 .. n-1`` is scored exactly once. All windows have length ``min(context, n)`` (the last one is moved
    left to end at ``n``, which only adds context), so they batch without padding.
    """
    if context < 2:
        raise ValueError(f"context must be >= 2, got {context}")
    if not 1 <= stride <= context // 2:
        raise ValueError(f"stride must be in [1, context/2] = [1, {context // 2}], got {stride}")
    if n < 2:
        return []
    length = min(context, n)
    out, end = [(0, 1, length)], length
    while end < n:
        new_end = min(end + stride, n)
        out.append((new_end - length, end, new_end))
        end = new_end
    return out


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    get_base_model = getattr(model, "get_base_model", None)  # a PeftModel's
    base = get_base_model() if get_base_model is not None else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@torch.no_grad()
def strided_nll(
    model: nn.Module, ids: torch.Tensor, context: int, stride: int, batch_size: int = 8
) -> tuple[float, int]:
    """Total NLL (nats, fp64 sum) of ``ids[1:]`` given their left context, and the number of scored tokens.

    Windows come from :func:`windows` (``stride <= context / 2``), ``batch_size`` windows per forward
    pass, on the model's device. Logits are taken in fp32. The model runs in eval mode; its previous
    training mode is restored.
    """
    ids = ids.reshape(-1).long()
    spans = windows(len(ids), context, stride)
    device = next(model.parameters()).device
    keep_ok = _accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    scored = 0
    try:
        for b in range(0, len(spans), batch_size):
            batch = spans[b : b + batch_size]
            x = torch.stack([ids[s:e] for s, _, e in batch]).to(device)
            length = x.shape[1]
            # The scored targets are each window's last (end - first) tokens; their logits sit one earlier.
            keep = max(e - f for _, f, e in batch) + 1
            kwargs = {"logits_to_keep": keep} if keep_ok else {}
            logits = model(input_ids=x, **kwargs).logits[:, -keep:-1].float()
            targets = x[:, length - keep + 1 :]
            nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            pos = torch.arange(length - keep + 1, length, device=device)
            first = torch.tensor([f - s for s, f, _ in batch], device=device)
            mask = pos[None, :] >= first[:, None]
            total += nll.double()[mask].sum().cpu()
            scored += int(mask.sum())
    finally:
        model.train(was_training)
    return float(total), scored


def perplexities(total_nll: float, n_tokens: int, n_words: int) -> dict[str, float | int]:
    """``word_ppl`` = exp(nll / words), ``token_ppl`` = exp(nll / tokens), ``nll`` (total nats) and counts."""
    if n_tokens <= 0 or n_words <= 0:
        raise ValueError(f"need scored tokens and words, got tokens={n_tokens}, words={n_words}")
    return {
        "word_ppl": math.exp(total_nll / n_words),
        "token_ppl": math.exp(total_nll / n_tokens),
        "nll": float(total_nll),
        "tokens": int(n_tokens),
        "words": int(n_words),
    }


def word_perplexity(
    model: nn.Module, tokenizer: Any, lines: Sequence[str], context: int, stride: int, batch_size: int = 8
) -> dict[str, float | int]:
    """:func:`encode_lines` + :func:`strided_nll` + :func:`perplexities` for PTB ``lines``."""
    ids, n_words = encode_lines(tokenizer, lines)
    total, n_tokens = strided_nll(model, ids, context, stride, batch_size)
    return perplexities(total, n_tokens, n_words)
