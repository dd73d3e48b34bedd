"""How an algorithm runs: federated rounds, local-only, centralized, and personalization.

Each driver is a short function of an :class:`~fedgen.experiment.build.Experiment` and the run
directory, and returns an :class:`Outcome`. None of them knows the task: training goes through
``exp.client`` (the one loop, :func:`fedgen.fl.client.local_train`), scores through ``exp``'s
evaluators, and federated rounds through :func:`fedgen.fl.server.federate` over a runtime.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from fedgen.config import clients_per_round
from fedgen.core.device import device_of
from fedgen.core.errors import FedgenError
from fedgen.core.seeding import derive_seed
from fedgen.experiment.build import Experiment, distribution
from fedgen.experiment.rundir import Resume, RunDir, write_state
from fedgen.experiment.summary import privacy_note
from fedgen.fl.algorithms import ClientLogic
from fedgen.fl.dp import epsilon
from fedgen.fl.secure_random import NOT_PRIVATE, not_private
from fedgen.fl.server import RoundPolicy, RoundRecord, Runtime, client_update, federate
from fedgen.fl.wire import formula_bytes, num_params
from fedgen.models.params import State, first_nonfinite
from fedgen.runtime.heterogeneous import HeterogeneousRuntime, over_selected_fraction
from fedgen.runtime.simulate import InProcessRuntime, use_batched
from fedgen.runtime.store import ClientStore
from fedgen.tasks.base import ClientData

log = logging.getLogger("fedgen")


@dataclass
class Outcome:
    """What a driver leaves: the state saved as ``global/`` and the personalization report."""

    final_state: State | None  # the global model (FedPer: its shared layers); None without one
    personalization: dict | None = None
    stopped: bool = False  # a federated run stopped early (``stop_after``): resumable, no outputs yet


@dataclass
class Clock:
    """Wall time of a run, with the time of earlier (resumed) parts added."""

    prior: float = 0.0
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = self.start or time.time()

    def seconds(self) -> float:
        return round(self.prior + time.time() - self.start, 2)


# Builds the runtime that carries a run's rounds; None: in-process (fedgen.runtime.simulate)
RuntimeFactory = Callable[[Experiment, ClientLogic], Runtime]


def round_policy(exp: Experiment) -> RoundPolicy:
    """What the server accepts and how it aggregates (the clients run it too under SecAgg+)."""
    f = exp.cfg.fl
    return RoundPolicy(
        f.min_clients,
        f.max_skipped_rounds,
        {k: len(d.train) for k, d in exp.data.items()},
        f.aggregator,
        f.trim_beta,
        f.clip_norm,
        exp.cfg.dp if exp.cfg.dp.mode != "off" else None,
    )


def run_federated(
    exp: Experiment,
    rd: RunDir,
    resume: Resume,
    clock: Clock,
    stop_after: int | None,
    progress: bool,
    make_runtime: RuntimeFactory | None = None,
) -> Outcome:
    """Rounds ``resume.round + 1 .. fl.rounds`` (or ``stop_after``), evaluated and checkpointed.

    ``make_runtime(exp, logic)`` gives the runtime (default: in-process). A runtime with a
    ``last_round`` dict (e.g. Flower's payload bytes) adds it to each round's metrics row.
    """
    cfg, f = exp.cfg, exp.cfg.fl
    logic = exp.client_logic()
    logic.kept.update(resume.kept)
    state = resume.state if resume.state is not None else logic.server_part(exp.init)
    counters = {"upload_bytes_total": 0, "download_bytes_total": 0, **resume.counters}
    upload_params = num_params(state)
    last_round = min(f.rounds, stop_after) if stop_after is not None else f.rounds
    bar = tqdm(total=max(last_round - resume.round, 0), desc=f"{exp.spec.name} rounds", disable=not progress)
    cbar = tqdm(desc="clients", disable=not progress, unit="client", leave=False)
    store = None
    policy = round_policy(exp)
    if policy.dp is not None:
        log.info("dp.mode %s: %s", cfg.dp.mode, privacy_note(cfg)["dp"]["weights"])
        if not_private(cfg):
            log.warning("this run is %s", NOT_PRIVATE)
    if make_runtime is None:
        # Per-client state (FedPer, Ditto) lives on disk, written only when it changes (ClientStore).
        store = ClientStore(rd.path / "client_store", rd.run_id) if exp.spec.personalized == "kept" else None
        upload = None
        if policy.dp is not None and policy.dp.mode == "client":

            def upload(res, ref, rnd):
                return client_update(res, ref, rnd, policy, secure=False)[0]

        batched = use_batched(cfg.batched_clients, device_of(exp.params.model))
        runtime: Runtime = InProcessRuntime(
            logic, exp.data, cfg.seed, progress=cbar, store=store, batched=batched, upload=upload
        )
    else:
        runtime = make_runtime(exp, logic)
    fraction = f.fraction
    if cfg.devices.enabled:  # simulated device tiers, dropouts, deadline (runtime/heterogeneous.py)
        steps = {k: f.local_epochs * math.ceil(len(d.train) / f.batch_size) for k, d in exp.data.items()}
        runtime = HeterogeneousRuntime(runtime, cfg.devices, cfg.seed, steps)
        if cfg.devices.over_select:
            fraction = over_selected_fraction(f.fraction, cfg.data.num_clients, cfg.devices.dropout)
    # each client's real per-round sampling probability: the clients actually drawn (over-selection
    # included) over K; dropouts are not counted as privacy (the accountant stays conservative)
    sample_rate = clients_per_round(fraction, cfg.data.num_clients) / cfg.data.num_clients

    def on_round_end(rec: RoundRecord, new_state: State) -> None:
        counters["upload_bytes_total"] += rec.upload_bytes
        counters["download_bytes_total"] += rec.download_bytes
        row: dict[str, Any] = {
            **asdict(rec),
            "upload_bytes_cum": counters["upload_bytes_total"],
            "download_bytes_cum": counters["download_bytes_total"],
            "upload_params": upload_params,
            "upload_bytes_formula": formula_bytes(upload_params) * rec.received,
            **getattr(runtime, "last_round", {}),
        }
        if policy.dp is not None:
            row["dp_epsilon"] = epsilon(cfg.dp.noise_multiplier, sample_rate, rec.round, cfg.dp.delta)
            row["dp_delta"] = cfg.dp.delta
            row["dp_sample_rate"] = sample_rate
            if not_private(cfg):
                row["dp_epsilon"], row["dp_note"] = None, NOT_PRIVATE
        final = rec.round == f.rounds
        if exp.spec.has_global and (rec.round % cfg.eval.every == 0 or final):
            row.update(exp.evaluate_global(new_state))
        if rec.round % cfg.eval.local_every == 0 or final:
            if exp.spec.has_global:
                row[f"local_test_{exp.metric}"] = distribution(
                    list(exp.evaluate_local(lambda k: new_state).values())
                )
            personal = logic.personalized(new_state)
            if personal is not None:
                row[f"local_test_{exp.metric}_personalized"] = distribution(
                    list(exp.evaluate_local(personal).values())
                )
        row["wall_seconds"] = clock.seconds()
        rd.append_metrics(row)
        rd.checkpoint(
            rec.round,
            new_state,
            {} if store is not None else logic.kept,
            {**counters, "wall_seconds": row["wall_seconds"]},
            cfg.output.keep_checkpoints,
            exp.peft_model,
        )
        bar.update(1)

    state = federate(
        runtime,
        state,
        num_clients=cfg.data.num_clients,
        rounds=last_round,
        fraction=fraction,
        seed=cfg.seed,
        start_round=resume.round + 1,
        on_round_end=on_round_end,
        policy=policy,
    )
    bar.close()
    cbar.close()
    if last_round < f.rounds:
        return Outcome(None, stopped=True)
    if exp.spec.personalized == "finetune":
        pers = personalize(exp, state, rd, progress) if cfg.personalize.enabled else None
        return Outcome(state, pers)
    personal = logic.personalized(state)
    pers = None
    if personal is not None:
        pers = personalization_report(exp, rd, state if exp.spec.has_global else None, personal, logic.kept)
    return Outcome(state, pers)  # FedPer: the shared layers


def run_local(exp: Experiment, rd: RunDir, progress: bool) -> Outcome:
    """Local-only: each client trains its own adapter on its own data, nothing is communicated."""
    epochs = exp.budget_epochs()
    kept: dict[int, State] = {}
    for k, d in tqdm(exp.data.items(), desc="local clients", disable=not progress, unit="client"):
        state = exp.client.fit(exp.init, d, derive_seed(exp.cfg.seed, "local", k), epochs=epochs).state
        kept[k] = _finite_or(state, exp.init, f"local-only client {k}")
    local = exp.evaluate_local(lambda k: kept[k])
    rd.append_metrics(
        {
            "round": 1,
            "epochs": epochs,
            f"local_test_{exp.metric}_personalized": distribution(list(local.values())),
        }
    )
    return Outcome(None, personalization_report(exp, rd, None, lambda k: kept[k], kept))


def pooled_data(exp: Experiment) -> ClientData:
    """Every client's training examples in one dataset (centralized baselines)."""
    parts = [d.train for _, d in sorted(exp.data.items())]
    return ClientData(-1, exp.objective.concat(parts), torch.empty(0))


def run_central(exp: Experiment, rd: RunDir, progress: bool) -> Outcome:
    """Centralized: all clients' training examples pooled on one machine (an upper bound)."""
    epochs = exp.budget_epochs()
    pooled = pooled_data(exp)
    if progress:
        print(f"{exp.spec.name}: {epochs} epochs over {len(pooled.train)} pooled training examples")
    state = exp.client.fit(exp.init, pooled, derive_seed(exp.cfg.seed, "central"), epochs=epochs).state
    bad = first_nonfinite(state)
    if bad is not None:
        raise FedgenError(f"{exp.spec.name}: training diverged ({bad} holds NaN/Inf); lower fl.lr")
    local = exp.evaluate_local(lambda k: state)
    rd.append_metrics(
        {
            "round": 1,
            "epochs": epochs,
            **exp.evaluate_global(state),
            f"local_test_{exp.metric}": distribution(list(local.values())),
        }
    )
    return Outcome(state)


# ------------------------------------------------------------------------------ personalization


def personalize(exp: Experiment, global_state: State, rd: RunDir, progress: bool = True) -> dict:
    """FedGen-Edge's last step, two recipes, each client on its own data:

    * **paper**: fine-tune the final global adapter ``personalize.epochs`` more epochs at ``fl.lr``;
    * **validated** (saved as the client's model): carve ``validation_fraction`` off the client's
      train split, fine-tune on the rest at each ``fl.lr x lr_multipliers`` for up to ``max_epochs``,
      keep the (lr, epochs) with the best validation figure, and keep the global adapter when no
      candidate beats it on the validation split.
    """
    cfg, p = exp.cfg, exp.cfg.personalize
    rows = []
    for k, d in tqdm(exp.data.items(), desc="personalize", disable=not progress, unit="client", leave=False):
        seed = derive_seed(cfg.seed, "personalize", k)
        paper = exp.client.fit(global_state, d, seed, p.epochs)
        paper.state = _finite_or(paper.state, global_state, f"personalization of client {k}")
        chosen, choice = validated_personalization(exp, global_state, d, seed)
        write_state(rd.path / "clients" / f"client_{k:03d}", chosen, exp.peft_model)
        if not exp.objective.has_eval_data(d.test):
            continue
        rows.append(
            {
                "client": k,
                "num_examples": paper.num_examples,
                "test_size": len(d.test),
                **choice,
                f"{exp.metric}_global": exp.local_metric(global_state, d),
                f"{exp.metric}_personalized": exp.local_metric(chosen, d),
                f"{exp.metric}_personalized_paper": exp.local_metric(paper.state, d),
            }
        )
    return _personalization_summary(exp, rd, rows)


def validated_personalization(exp: Experiment, start: State, d: ClientData, seed: int) -> tuple[State, dict]:
    """The validated recipe for one client: (its model, {"lr", "epochs"} chosen; epochs 0 = global kept)."""
    p, f = exp.cfg.personalize, exp.cfg.fl
    train, val = exp.objective.holdout(d.train, p.validation_fraction)
    if not exp.objective.has_eval_data(val) or len(train) == 0:
        return start, {"lr": None, "epochs": 0, "why": "too little data to validate"}
    bs = exp.cfg.eval.batch_size
    best: tuple[float, State, dict[str, Any]]  # (figure, state, {"lr", "epochs"})
    best = (exp.local_metric(start, ClientData(d.client_id, train, val)), start, {"lr": None, "epochs": 0})
    for mult in p.lr_multipliers:
        lr = f.lr * mult

        def score(epoch: int, lr: float = lr) -> None:
            nonlocal best
            value = exp.objective.client_metric(exp.params.model, val, bs)
            if math.isfinite(value) and value < best[0]:
                best = (value, exp.params.state(), {"lr": lr, "epochs": epoch})

        exp.client.fit(
            start, ClientData(d.client_id, train, val), seed, p.max_epochs, lr=lr, after_epoch=score
        )
    _, state, choice = best
    return state, {**choice, "validation_" + exp.metric: best[0]}


def _finite_or(state: State, fallback: State, what: str) -> State:
    """``state``, or ``fallback`` (with one log line) when training left NaN/Inf in it."""
    bad = first_nonfinite(state)
    if bad is None:
        return state
    log.warning("%s diverged (%s holds NaN/Inf): keeping the model it started from", what, bad)
    return fallback


def personalization_report(exp: Experiment, rd: RunDir, global_state, personal, kept) -> dict:
    """Per-client local-test figure of the global (if any) and personalized models; saves kept states."""
    rows = []
    for k, d in exp.data.items():
        if k in kept:
            st = kept[k]
            peft = exp.peft_model if st.keys() == exp.init.keys() else None
            write_state(rd.path / "clients" / f"client_{k:03d}", st, peft)
        if not exp.objective.has_eval_data(d.test):
            continue
        row: dict[str, Any] = {"client": k, "test_size": len(d.test), "trained": k in kept}
        if global_state is not None:
            row[f"{exp.metric}_global"] = exp.local_metric(global_state, d)
        row[f"{exp.metric}_personalized"] = exp.local_metric(personal(k), d)
        rows.append(row)
    return _personalization_summary(exp, rd, rows)


def _personalization_summary(exp: Experiment, rd: RunDir, rows: list[dict]) -> dict:
    g, p = f"{exp.metric}_global", f"{exp.metric}_personalized"
    out: dict[str, Any] = {
        "metric": exp.metric,
        "clients": rows,
        "personalized": distribution([r[p] for r in rows]),
    }
    if rows and f"{p}_paper" in rows[0]:
        out["recipes"] = {
            "personalized": "validated: lr and epochs chosen on a split of the client's train data",
            "paper_recipe": f"the paper's: {exp.cfg.personalize.epochs} more epoch(s) at fl.lr",
        }
        out["paper_recipe"] = distribution([r[f"{p}_paper"] for r in rows])
        out["kept_global_fraction"] = sum(r["epochs"] == 0 for r in rows) / len(rows)
    if rows and g in rows[0]:
        out["global"] = distribution([r[g] for r in rows])
        out["improved_fraction"] = sum(r[p] < r[g] for r in rows) / len(rows)  # lower is better
    rd.write_json("personalization.json", out)
    return out
