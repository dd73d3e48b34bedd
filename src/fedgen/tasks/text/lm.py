"""Language modelling on PTB for any tokenizer: training windows, loss, word-level perplexity, sampling.

A client's text is one token stream (:class:`TextStream`: its sentences encoded by the backbone's
:class:`Codec`, after one unscored prefix token). Training examples are non-overlapping windows
of ``context + 1`` tokens (input + shifted target); the client's sample count n_k is the number of
such windows.

**Perplexity** (:mod:`fedgen.metrics.word_ppl`): the headline is *word-level* PPL = exp(total NLL
of the text / number of PTB words, each ``<eos>`` counted as a word), so backbones with different
tokenizers are comparable; token-level PPL is reported beside it. Every token after the prefix
is scored exactly once, with overlapping windows of ``context`` tokens that advance by
``stride <= context / 2`` (each token has at least ``context - stride`` tokens of left context,
except in the first window). For our word-level vocabulary (one token per word, ``<eos>`` a
token) word PPL equals token PPL exactly.

**How PTB is shown to a subword model** (:class:`HFCodec`): each PTB sentence is its words joined
by single spaces (``<unk>`` and ``N`` kept as literal text) followed by ``"\\n"`` for ``<eos>``;
the stream starts with the tokenizer's BOS token (or ``"\\n"`` if it has none).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedgen.core.device import autocast, device_of
from fedgen.metrics.word_ppl import encode_lines, perplexities, prefix_ids, strided_nll


@dataclass
class TextStream:
    """Token ids (``[0]`` is an unscored prefix) and the number of PTB words (incl. ``<eos>``) they hold."""

    ids: torch.Tensor
    words: int

    def __len__(self) -> int:
        return len(self.ids)


class Codec(Protocol):
    """How PTB sentences become token ids for a backbone, and back."""

    def encode(self, sentences: list[list[str]]) -> TextStream: ...
    def encode_prompt(self, text: str) -> tuple[list[int], int]: ...  # (ids, prefix length)
    def decode(self, ids: list[int]) -> str: ...
    def ends_line(self, token: int) -> bool: ...


class WordCodec:
    """Our word-level PTB vocabulary: one token per word, ``<eos>`` a token and the stream prefix."""

    def __init__(self, vocab):
        self.vocab = vocab

    def encode(self, sentences: list[list[str]]) -> TextStream:
        ids = [self.vocab.eos_id]
        for s in sentences:  # each sentence already ends in <eos>
            ids.extend(int(i) for i in self.vocab.encode(s))
        return TextStream(torch.tensor(ids, dtype=torch.long), len(ids) - 1)

    def encode_prompt(self, text: str) -> tuple[list[int], int]:
        """PTB's conventions: lower case, OOV -> ``<unk>``."""
        return [self.vocab.eos_id] + [int(i) for i in self.vocab.encode(text.lower().split())], 1

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab.decode(ids))

    def ends_line(self, token: int) -> bool:
        return token == self.vocab.eos_id


class HFCodec:
    """A Hugging Face tokenizer (BPE, SentencePiece, ...): PTB lines as text, ``"\\n"`` for ``<eos>``."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.newline = set(tokenizer("\n", add_special_tokens=False)["input_ids"])

    def encode(self, sentences: list[list[str]]) -> TextStream:
        lines = [" ".join(s[:-1] if s and s[-1] == "<eos>" else s) for s in sentences]
        ids, words = encode_lines(self.tokenizer, lines)
        return TextStream(ids, words)

    def encode_prompt(self, text: str) -> tuple[list[int], int]:
        prefix = prefix_ids(self.tokenizer)
        return prefix + list(self.tokenizer(text, add_special_tokens=False)["input_ids"]), len(prefix)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def ends_line(self, token: int) -> bool:
        return token in self.newline or token == self.tokenizer.eos_token_id


class LMObjective:
    """The text task's :class:`~fedgen.tasks.base.Objective`: examples, loss, evaluation, sampling."""

    metric = "ppl"  # the per-client quality figure: word-level perplexity (lower is better)
    global_keys = ("ppl", "word_ppl", "token_ppl")  # "ppl" is the word-level headline

    def __init__(self, codec: Codec, context: int, stride: int | None = None):
        self.codec, self.context = codec, context
        self.stride = stride or max(1, context // 2)

    # -- data ---------------------------------------------------------------------------
    def stream(self, sentences: list[list[str]]) -> TextStream:
        return self.codec.encode(sentences)

    def examples(self, stream: TextStream) -> torch.Tensor:
        """Non-overlapping training windows ``[n, context + 1]`` of a token stream."""
        ids, t = stream.ids, self.context
        n = (len(ids) - 1) // t
        if n == 0:
            return torch.empty(0, t + 1, dtype=torch.long)
        idx = torch.arange(n).unsqueeze(1) * t + torch.arange(t + 1)
        return ids[idx]

    def batches(self, examples: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator:
        """Shuffled mini-batches (the last one may be smaller)."""
        perm = torch.randperm(len(examples), generator=generator)
        for i in range(0, len(perm), batch_size):
            yield examples[perm[i : i + batch_size]]

    @staticmethod
    def concat(parts: list[torch.Tensor]) -> torch.Tensor:
        """Several clients' examples as one set (centralized baselines)."""
        return torch.cat(parts)

    @staticmethod
    def holdout(examples: torch.Tensor, fraction: float) -> tuple[torch.Tensor, TextStream]:
        """Split off the last ``fraction`` of a client's windows (contiguous text) as a validation stream.

        Its ``words`` is its token count: validation only compares candidates on the same text, so
        token-level PPL ranks them exactly as word-level PPL would."""
        n_val = int(len(examples) * fraction)
        if n_val == 0 or n_val == len(examples):
            return examples, TextStream(torch.empty(0, dtype=torch.long), 0)
        val = examples[len(examples) - n_val :]
        ids = torch.cat([val[0], val[1:, 1:].reshape(-1)])  # consecutive windows share one token
        return examples[: len(examples) - n_val], TextStream(ids, len(ids) - 1)

    @staticmethod
    def has_eval_data(stream: TextStream) -> bool:
        """A stream needs two tokens to score one prediction."""
        return len(stream) > 1

    # -- training -----------------------------------------------------------------------
    @staticmethod
    def loss_params(named: dict[str, nn.Parameter]) -> list[nn.Parameter]:
        """The trained parameters the loss optimises: all of them."""
        return list(named.values())

    @staticmethod
    def begin_local(model: nn.Module, named: dict[str, nn.Parameter], cfg) -> None:
        """No per-session setup for language modelling (no step runs before each optimiser step)."""
        return None

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a batch of windows."""
        batch = batch.to(device_of(model))
        logits = model(input_ids=batch[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1))

    def example_losses(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Per-window token cross-entropies ``[n, context]``: the mean over any rows is :meth:`loss`
        of those rows (batched multi-client training, :mod:`fedgen.fl.batched`)."""
        batch = batch.to(device_of(model))
        logits = model(input_ids=batch[:, :-1]).logits
        flat = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1), reduction="none"
        )
        return flat.view(len(batch), -1)

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self, model: nn.Module, stream: TextStream, batch_size: int = 64) -> dict[str, float]:
        """Word-level (headline ``ppl`` = ``word_ppl``) and token-level perplexity of a stream."""
        if len(stream) < 2:
            nan = float("nan")
            return {"ppl": nan, "word_ppl": nan, "token_ppl": nan, "tokens": 0, "words": 0}
        with autocast(device_of(model)):
            total, scored = strided_nll(model, stream.ids, self.context, self.stride, batch_size)
        p = perplexities(total, scored, stream.words)
        return {**p, "ppl": p["word_ppl"], "nll": total / stream.words}

    def client_metric(self, model: nn.Module, stream: TextStream, batch_size: int = 64) -> float:
        """A client's figure: word-level perplexity of its test stream."""
        return self.evaluate(model, stream, batch_size)["ppl"]

    # -- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        prompt: str,
        *,
        max_new_tokens: int = 40,
        temperature: float = 1.0,
        top_k: int | None = 40,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> str:
        """Continue ``prompt`` until the end of the line (or ``max_new_tokens``); prompt + continuation."""
        g = torch.Generator().manual_seed(seed)
        ids, start = self.codec.encode_prompt(prompt)
        was_training = model.training
        model.eval()
        out: list[int] = []
        for _ in range(max_new_tokens):
            ctx = torch.tensor([(ids + out)[-self.context :]], device=device_of(model))
            logits = model(input_ids=ctx).logits[0, -1].double().cpu() / max(temperature, 1e-6)
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = -math.inf
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
            if stop_at_eos and self.codec.ends_line(nxt):
                break
            out.append(nxt)
        model.train(was_training)
        return self.codec.decode(ids[start:] + out)
