"""Client side: the one local training loop, and a client that turns a state into an update.

Nothing here knows how messages travel: the in-process simulator calls
:meth:`Client.fit` directly, and a Flower ClientApp can wrap the same call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from fedgen.core.device import autocast, device_of
from fedgen.models.params import ParamSet, State
from fedgen.tasks.base import ClientData


@dataclass
class LocalTrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int | None = None  # stop after this many optimiser steps (a straggler's partial work)


@dataclass
class FitResult:
    client_id: int
    state: State
    num_examples: int
    metrics: dict = field(default_factory=dict)


def local_train(
    task,
    model: nn.Module,
    params: Sequence[nn.Parameter],
    examples: Any,
    cfg: LocalTrainConfig,
    seed: int,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    before_step: Callable[[Any], float] | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train ``params`` for ``cfg.epochs`` epochs with AdamW; every other parameter stays frozen.

    ``extra_loss`` (e.g. a proximal term) is added to the task loss at each step;
    ``before_step(batch)`` runs before each step (the GAN task's discriminator step);
    ``after_epoch(epoch)`` after each epoch (1-based), e.g. to score a validation split.
    With ``cfg.max_steps`` training stops after that many steps, mid-epoch if need be (the loss
    is then the mean over the last, partial epoch). Returns that loss and the number of steps.
    """
    torch.manual_seed(seed)  # dropout masks, GAN noise
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    model.train()
    device = device_of(model)
    steps, last_epoch_loss = 0, float("nan")
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
        for batch in task.batches(examples, cfg.batch_size, g):
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            if before_step is not None:
                before_step(batch)
            with autocast(device):
                loss = task.loss(model, batch)
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            steps += 1
            total += loss.item() * len(batch)
            count += len(batch)
        last_epoch_loss = total / max(count, 1)
        if after_epoch is not None:
            after_epoch(epoch + 1)
    return {"train_loss": last_epoch_loss, "steps": steps}


class Client:
    """A device: a model and the parameters it trains. State in -> trained state + n_k + metrics out."""

    def __init__(self, task, params: ParamSet, train_cfg: LocalTrainConfig):
        self.task, self.params, self.train_cfg = task, params, train_cfg
        self.model = params.model
        self.step_limit: int | None = None  # set by limit_steps: every fit stops after this many steps

    @contextmanager
    def limit_steps(self, max_steps: int | None) -> Iterator[None]:
        """Within the block every :meth:`fit` trains at most ``max_steps`` steps (None: no limit)."""
        old, self.step_limit = self.step_limit, max_steps
        try:
            yield
        finally:
            self.step_limit = old

    def fit(
        self,
        state: State,
        data: ClientData,
        seed: int,
        epochs: int | None = None,
        prox: tuple[float, State] | None = None,
        lr: float | None = None,
        after_epoch: Callable[[int], None] | None = None,
    ) -> FitResult:
        """Start from ``state``, train locally, return the new state.

        ``prox=(lam, anchor)`` adds Ditto's proximal term ``lam/2 * ||theta - anchor||^2``;
        ``epochs`` / ``lr`` override the client's defaults; ``after_epoch`` see :func:`local_train`.
        """
        self.params.load(state)
        pairs = (("epochs", epochs), ("lr", lr), ("max_steps", self.step_limit))
        overrides = {k: v for k, v in pairs if v is not None}
        cfg = LocalTrainConfig(**{**vars(self.train_cfg), **overrides}) if overrides else self.train_cfg
        extra = None
        if prox is not None:
            lam, anchor = prox
            anchored = [(p, anchor[k]) for k, p in self.params.params.items()]

            def extra() -> torch.Tensor:
                # cast: a sum over at least one parameter is a Tensor, not sum()'s start value 0
                return cast(torch.Tensor, 0.5 * lam * sum(((p - a) ** 2).sum() for p, a in anchored))

        named = self.params.params
        aux = self.task.begin_local(self.model, named, cfg)
        metrics = local_train(
            self.task,
            self.model,
            self.task.loss_params(named),
            data.train,
            cfg,
            seed,
            extra,
            aux,
            after_epoch,
        )
        return FitResult(data.client_id, self.params.state(), len(data.train), metrics)

    def evaluate(self, state: State, data: Any, batch_size: int = 64, **kw) -> dict[str, float]:
        self.params.load(state)
        return self.task.evaluate(self.model, data, batch_size, **kw)
