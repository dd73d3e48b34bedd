"""Batched multi-client local training: the sampled clients of a round train together.

The clients share the frozen backbone, so their local steps can run as one: at step t, one backbone
pass over the concatenated t-th batches of every client that still has one, each client's LoRA
delta applied to its own rows (:mod:`fedgen.models.batched_lora`), the sum of the clients' mean
losses back-propagated (client c's adapter gets exactly the gradient of its own loss), gradients
clipped per client and one AdamW step per client (:class:`ClientAdamW`). Each client sees the
batches :func:`~fedgen.fl.client.local_train` would give it (same seed, epochs, ``max_steps``); a
client with fewer batches stops early and its rows drop out of later steps. The results are those of
``Client.fit`` per client: in fp32 without dropout the adapters equal sequential training up to
float rounding. With backbone dropout the masks are drawn differently (same distribution).

Scope (:func:`unsupported` says why not): an algorithm whose client trains and uploads exactly the
received LoRA adapter (:class:`~fedgen.fl.algorithms.FedAvgClient` on LoRA: fedgen), PEFT LoRA
on ``nn.Linear`` layers without LoRA dropout, and an objective with ``example_losses`` (the text
task), whose ``begin_local`` does nothing and whose ``loss_params`` are all the trained parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import torch

from fedgen.core.device import autocast, device_of
from fedgen.core.seeding import derive_seed
from fedgen.fl.algorithms import FedAvgClient
from fedgen.fl.client import Client, FitResult, LocalTrainConfig
from fedgen.models import batched_lora
from fedgen.models.params import State
from fedgen.tasks.base import ClientData


def unsupported(logic: Any) -> str | None:
    """Why a client logic's local training cannot be batched (None: it can)."""
    if type(logic) is not FedAvgClient:
        return f"{type(logic).__name__} does more than train the received state"
    client = logic.client
    if client.params.kind != "lora":
        return "the algorithm trains the full model, not LoRA adapters"
    if not hasattr(client.task, "example_losses"):
        return f"the objective {type(client.task).__name__} has no example_losses"
    return batched_lora.unsupported(client.model, client.params.keys())


@dataclass
class Plan:
    """One client's local training as :func:`~fedgen.fl.client.local_train` would run it."""

    batches: list[Any]
    epochs: list[int]  # the epoch of each batch
    last_epoch: int  # the last epoch the loop entered (-1: none); its mean loss is train_loss


def plan(task: Any, examples: Any, cfg: LocalTrainConfig, seed: int) -> Plan:
    """The batches, in order, that ``local_train(task, ..., examples, cfg, seed)`` trains on."""
    g = torch.Generator().manual_seed(seed)
    out = Plan([], [], -1)
    for epoch in range(cfg.epochs):
        if cfg.max_steps is not None and len(out.batches) >= cfg.max_steps:
            break
        out.last_epoch = epoch
        for batch in task.batches(examples, cfg.batch_size, g):
            if cfg.max_steps is not None and len(out.batches) >= cfg.max_steps:
                break
            out.batches.append(batch)
            out.epochs.append(epoch)
    return out


class ClientAdamW:
    """``torch.optim.AdamW`` (no amsgrad) for parameters stacked over clients on dim 0.

    ``step(n)`` updates clients ``0..n-1`` only; they have all taken the same number of steps
    (clients only ever drop out at the end), so the bias corrections are shared.
    """

    def __init__(self, params: Sequence[torch.Tensor], cfg: LocalTrainConfig, eps: float = 1e-8):
        self.params, self.cfg, self.eps, self.t = list(params), cfg, eps, 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, n: int) -> None:
        self.t += 1
        lr, wd, (beta1, beta2) = self.cfg.lr, self.cfg.weight_decay, self.cfg.betas
        step_size = lr / (1 - beta1**self.t)
        bias_correction2_sqrt = (1 - beta2**self.t) ** 0.5
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            p, m, v, g = p[:n], m[:n], v[:n], cast(torch.Tensor, p.grad)[:n]  # set by backward
            if wd != 0:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.addcdiv_(m, (v.sqrt() / bias_correction2_sqrt).add_(self.eps), value=-step_size)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


@torch.no_grad()
def clip_per_client(params: Sequence[torch.Tensor], n: int, max_norm: float) -> None:
    """``clip_grad_norm_`` of each of clients ``0..n-1`` over its slices of ``params``."""
    grads = [cast(torch.Tensor, p.grad) for p in params]  # set by backward
    norms = torch.stack([g[:n].flatten(1).norm(dim=1) for g in grads], dim=1)
    coef = (max_norm / (norms.norm(dim=1) + 1e-6)).clamp(max=1.0)
    for g in grads:
        g[:n].mul_(coef.view(-1, *[1] * (g.dim() - 1)))


def fit_many(
    client: Client,
    state: State,
    data: Sequence[ClientData],
    seeds: Sequence[int],
    max_steps: Sequence[int | None],
) -> list[FitResult]:
    """``client.fit(state, data[i], seeds[i])`` (stopping after ``max_steps[i]`` steps) for every i,
    batched (see the module docstring; check :func:`unsupported` first)."""
    task, model, params = client.task, client.model, client.params
    cfgs = [replace(client.train_cfg, max_steps=m) for m in max_steps]
    plans = [plan(task, d.train, c, s) for d, c, s in zip(data, cfgs, seeds, strict=True)]
    order = sorted(range(len(data)), key=lambda i: -len(plans[i].batches))  # slot j: client order[j]
    device = device_of(model)
    losses: list[list[float]] = [[] for _ in data]
    with batched_lora.batched_lora(model, len(data)) as layers:
        stacked = {}
        for name, layer in layers.items():
            stacked[f"{name}.lora_A.weight"], stacked[f"{name}.lora_B.weight"] = layer.A, layer.B
        with torch.no_grad():
            for key, p in stacked.items():
                p.copy_(state[key].to(p))
        opt = ClientAdamW(list(stacked.values()), client.train_cfg)
        torch.manual_seed(derive_seed(*seeds, "batched"))  # backbone dropout masks, if any
        model.train()
        for t in range(len(plans[order[0]].batches) if order else 0):
            active = [i for i in order if len(plans[i].batches) > t]  # a prefix of the slots
            batches = [plans[i].batches[t] for i in active]
            rows = batched_lora.Rows([len(b) for b in batches], device)
            for layer in layers.values():
                layer.rows = rows
            with autocast(device):
                per_example = task.example_losses(model, torch.cat(batches))
            loss = torch.stack([part.mean() for part in per_example.split(rows.counts)])
            opt.zero_grad()
            loss.sum().backward()
            if client.train_cfg.max_grad_norm:
                clip_per_client(opt.params, len(active), client.train_cfg.max_grad_norm)
            opt.step(len(active))
            for i, value in zip(active, loss.tolist(), strict=True):
                losses[i].append(value)
        slot = {i: j for j, i in enumerate(order)}
        results = []
        for i, d in enumerate(data):
            st = OrderedDict((k, stacked[k][slot[i]].detach().to("cpu", copy=True)) for k in params.params)
            metrics = {"train_loss": _last_epoch_loss(plans[i], losses[i]), "steps": len(plans[i].batches)}
            results.append(FitResult(d.client_id, st, len(d.train), metrics))
    if results:
        params.load(results[-1].state)  # as after sequential fits: the last client's adapter
    return results


def _last_epoch_loss(p: Plan, losses: list[float]) -> float:
    """``local_train``'s ``train_loss``: the example-weighted mean loss of the last epoch entered."""
    if p.last_epoch < 0:
        return float("nan")
    pairs = [(v, len(b)) for v, b, e in zip(losses, p.batches, p.epochs, strict=True) if e == p.last_epoch]
    return sum(v * n for v, n in pairs) / max(sum(n for _, n in pairs), 1)
