"""Word-level language modelling: training batches, loss, perplexity and sampling.

A client's text is one token stream (its documents concatenated, starting with
``<eos>``). Training examples are non-overlapping windows of ``context + 1``
tokens (input + shifted target); the client's sample count n_k is the number of
such windows. Perplexity is the standard word-level one: ``exp(mean NLL)`` over
every token of the stream (each ``<eos>`` included), evaluated in consecutive
windows of ``context`` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


class LMObjective:
    """The text task's :class:`~fedgen.tasks.base.Objective`: examples, loss, evaluation, sampling."""

    metric = "ppl"  # the per-client quality figure (lower is better)
    global_keys = ("ppl",)

    def __init__(self, vocab, context: int):
        self.vocab = vocab
        self.context = context

    # -- data ---------------------------------------------------------------------------
    def stream(self, sentences: list[list[str]]) -> torch.Tensor:
        """Token ids of ``<eos>`` + the sentences (each already ending in ``<eos>``)."""
        ids = [self.vocab.eos_id]
        for s in sentences:
            ids.extend(int(i) for i in self.vocab.encode(s))
        return torch.tensor(ids, dtype=torch.long)

    def examples(self, ids: torch.Tensor) -> torch.Tensor:
        """Non-overlapping training windows ``[n, context + 1]`` of a token stream."""
        t = self.context
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
    def has_eval_data(ids: torch.Tensor) -> bool:
        """A stream needs two tokens to score one prediction."""
        return len(ids) > 1

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
        logits = model(input_ids=batch[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, ids: torch.Tensor, batch_size: int = 64, max_tokens: int | None = None
    ) -> dict[str, float]:
        """Word-level perplexity of a token stream: ``{"nll", "tokens", "ppl"}``."""
        if max_tokens is not None:
            ids = ids[: max_tokens + 1]
        x, y = ids[:-1], ids[1:].clone()
        n = len(x)
        if n == 0:
            return {"nll": float("nan"), "tokens": 0, "ppl": float("nan")}
        t = self.context
        pad = (-n) % t
        x = F.pad(x, (0, pad), value=self.vocab.eos_id).view(-1, t)
        y = F.pad(y, (0, pad), value=IGNORE).view(-1, t)
        was_training = model.training
        model.eval()
        total = 0.0
        for i in range(0, len(x), batch_size):
            logits = model(input_ids=x[i : i + batch_size]).logits
            total += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).double(),
                y[i : i + batch_size].reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            ).item()
        model.train(was_training)
        nll = total / n
        return {"nll": nll, "tokens": n, "ppl": math.exp(nll)}

    def client_metric(self, model: nn.Module, ids: torch.Tensor, batch_size: int = 64) -> float:
        """A client's figure: perplexity of its test stream."""
        return self.evaluate(model, ids, batch_size)["ppl"]

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
        """Continue ``prompt`` (normalised to PTB's conventions: lower case, OOV -> <unk>)."""
        g = torch.Generator().manual_seed(seed)
        ids = [self.vocab.eos_id] + [int(i) for i in self.vocab.encode(prompt.lower().split())]
        was_training = model.training
        model.eval()
        out: list[int] = []
        for _ in range(max_new_tokens):
            ctx = torch.tensor([(ids + out)[-self.context :]])
            logits = model(input_ids=ctx).logits[0, -1].double() / max(temperature, 1e-6)
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = -math.inf
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
            if stop_at_eos and nxt == self.vocab.eos_id:
                break
            out.append(nxt)
        model.train(was_training)
        return " ".join(self.vocab.decode(ids[1:] + out))
