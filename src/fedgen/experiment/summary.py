"""``summary.json``: a run's headline figures, the same schema for every task and algorithm."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any

import torch

from fedgen.experiment.build import Experiment
from fedgen.experiment.rundir import RunDir
from fedgen.fl.secure_random import NOT_PRIVATE, SOURCE, not_private
from fedgen.fl.wire import formula_bytes

SUMMARY_VERSION = 3
# Bump whenever a metric's definition or the training/evaluation code changes what a run measures:
# finished runs made before then no longer match (fedgen compare reruns them).
RESULTS_SCHEMA = 1
SUMMARY_FIELDS = {
    "summary_version": "schema version of this file",
    "task": "the config's task (text: PTB perplexity figures; image: test_fdc_*, test_acc_*, fid, ...)",
    "algorithm": "fedgen | fedavg-full | fedper | ditto | local | central-full | central-lora | ...",
    "name": "experiment name from the config",
    "seed": "experiment seed",
    "backbone": "the task's facts about the loaded backbone: {source, path, params, architecture, ...}",
    "adapter_params": "trainable LoRA parameters (null when the algorithm trains the full model)",
    "trained_params": "parameters trained by each client",
    "upload_params": "parameters each sampled client uploads per round (0 without communication)",
    "num_clients": "K",
    "clients_per_round": "max(1, floor(C*K)) (0 without communication)",
    "rounds": "completed federated rounds (0 for local / central training)",
    "local_epochs_equivalent": "epochs over a client's data (local) or the pooled data (central)",
    "upload_bytes_total": "sum over rounds and clients of serialized (safetensors) update bytes",
    "upload_note": "why upload is 0, where it is",
    "download_bytes_total": "sum over rounds of serialized global state bytes x clients sampled",
    "upload_bytes_formula_total": "formula 3.5/3.6: uploads x upload_params x 4 bytes",
    "bytes_per_upload": "serialized bytes of one client update (null without communication)",
    "simulated_seconds_total": "sum of simulated_round_seconds (devices.enabled; else null)",
    "rounds_skipped": "rounds with fewer than fl.min_clients valid updates (global model unchanged)",
    "updates_rejected": "client updates the server refused, by reason: {reason: count}",
    "privacy": "{secagg: SecAgg+ on?, dp: the dp config, its weights and accountant} (null: not federated)",
    "wall_seconds": "wall time of the run (resumed parts added up)",
    "result_key": "config.result_digest() + backbone weights digest + results schema: equal keys compare",
}
# Named after the task's evaluation sets, global figures and per-client metric (text: valid/test, ppl).
TASK_FIELDS = {
    "{split}_{key}_initial": "each global figure of the backbone + zero adapter (round 0)",
    "{split}_{key}_final": "the same for the final global model (null: no global model)",
    "local_test_{metric}_initial_mean": "mean over clients of their local-test figure, backbone",
    "local_test_{metric}_global_mean": "the same with the final global model",
    "local_test_{metric}_personalized_mean": "the same with each client's personalized model",
    "local_test_{metric}_personalized_median": "median of the same",
    "local_test_{metric}_personalized_paper_mean": "FedGen-Edge: the paper's recipe (one more epoch), mean",
}


def task_fields(splits: list[str], keys: tuple[str, ...], metric: str) -> list[str]:
    """TASK_FIELDS spelled out for a task's evaluation sets, global figures and client metric."""
    out = []
    for name in TASK_FIELDS:
        if "{split}" in name:
            out += [name.format(split=s, key=k) for s in splits for k in keys]
        else:
            out.append(name.format(metric=metric))
    return out


NO_UPLOAD = {
    "local": "none: no communication (each client trains alone)",
    "central": "n/a: raw data centralised",
}


def privacy_note(cfg) -> dict[str, Any]:
    """How a run protects the clients' updates (for summary.json and the log)."""
    out: dict[str, Any] = {"secagg": cfg.flower.secagg.enabled and cfg.runtime != "in-process"}
    if cfg.dp.mode != "off":
        out["dp"] = {
            **asdict(cfg.dp),
            "weights": "uniform (DP-FedAvg: the noise is calibrated to a uniform mean of clipped changes)",
            "accountant": "opacus RDP, sampling rate m'/K per round (m' clients sampled, over-selection "
            "included; see docs/privacy.md)",
            "noise": SOURCE,
        }
        if not_private(cfg):
            out["dp"]["noise"] = "seeded from the config (dp.insecure_reproducible_noise)"
            out["warning"] = NOT_PRIVATE
    return out


def result_key(cfg, backbone: str | None = None) -> str:
    """What a run's results depend on: the result-affecting config, the backbone's weights
    (``backbone``: :func:`backbone_digest`; None: the config part alone) and the results schema."""
    if backbone is None:
        return f"{cfg.result_digest()}-r{RESULTS_SCHEMA}"
    return f"{cfg.result_digest()}-b{backbone[:12]}-r{RESULTS_SCHEMA}"


def backbone_digest(exp: Experiment) -> str:
    """SHA-256 of the backbone's weights as loaded (every tensor of the freshly built model but the
    adapter's, with its name, dtype and shape): two checkpoints at one path, or ``backbone: auto``
    pre-trained anew, give different digests."""
    h = hashlib.sha256()
    for name, t in sorted(exp.params.model.state_dict().items()):
        if "lora_" in name:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_summary(exp: Experiment, rd: RunDir, pers: dict | None, wall: float) -> dict:
    """summary.json's content, read from the run's metrics.jsonl and personalization report."""
    cfg, spec, metrics = exp.cfg, exp.spec, rd.read_metrics()
    first, last = metrics[0], metrics[-1]
    federated = spec.mode == "federated"
    rounds = [m for m in metrics if m["round"] > 0] if federated else []
    rejected = [r["reason"] for m in rounds for r in m.get("rejected", [])]
    n_up = sum(_received(m) for m in rounds)
    upload_params = rounds[-1]["upload_params"] if rounds else 0
    clean = [m for m in rounds if _received(m) and not m.get("rejected")]  # every update well-formed
    quality = {}
    for split in exp.setup.eval_sets:
        for k in exp.objective.global_keys:
            quality[f"{split}_{k}_initial"] = first[f"{split}_{k}"]
            quality[f"{split}_{k}_final"] = last.get(f"{split}_{k}") if spec.has_global else None
    local = f"local_test_{exp.metric}"
    return {
        "summary_version": SUMMARY_VERSION,
        "task": cfg.task,
        "algorithm": spec.name,
        "name": cfg.name,
        "seed": cfg.seed,
        "backbone": exp.setup.backbone,
        "adapter_params": exp.params.numel() if spec.trains == "lora" else None,
        "trained_params": exp.params.numel(),
        "upload_params": upload_params,
        "num_clients": cfg.data.num_clients,
        "clients_per_round": len(rounds[0].get("sampled", rounds[0]["clients"])) if rounds else 0,
        "rounds": rounds[-1]["round"] if rounds else 0,
        "local_epochs_equivalent": None if federated else last.get("epochs"),
        "upload_bytes_total": last["upload_bytes_cum"] if rounds else 0,
        "upload_note": NO_UPLOAD.get(spec.mode),
        "download_bytes_total": last["download_bytes_cum"] if rounds else 0,
        "upload_bytes_formula_total": formula_bytes(upload_params) * n_up,
        "bytes_per_upload": clean[-1]["upload_bytes"] // _received(clean[-1]) if clean else None,
        "simulated_seconds_total": _simulated_total(metrics),
        "rounds_skipped": sum(1 for m in metrics if m.get("skipped")),
        "updates_rejected": _by_reason(rejected),
        **quality,
        f"{local}_initial_mean": first[local]["mean"],
        f"{local}_global_mean": last[local]["mean"] if spec.has_global else None,
        f"{local}_personalized_mean": pers["personalized"]["mean"] if pers else None,
        f"{local}_personalized_median": pers["personalized"]["median"] if pers else None,
        f"{local}_personalized_paper_mean": pers["paper_recipe"]["mean"]
        if pers and "paper_recipe" in pers
        else None,
        "privacy": privacy_note(cfg) if federated else None,
        "wall_seconds": wall,
        "result_key": _saved_result_key(rd) or result_key(cfg),
        "run_dir": str(rd.path),
    }


def _saved_result_key(rd: RunDir) -> str | None:
    """run.json's result key (it includes the backbone's digest)."""
    try:
        return rd.read_json("run.json").get("result_key")
    except (OSError, ValueError, AttributeError):
        return None


def _by_reason(reasons: list[str]) -> dict[str, int]:
    """Rejection reasons grouped by kind (the part after the client's name), counted."""
    out: dict[str, int] = {}
    for r in reasons:
        kind = r.split(": ", 1)[-1].split(" (")[0]
        out[kind] = out.get(kind, 0) + 1
    return out


def _received(row: dict) -> int:
    """Updates that arrived in a round (older metrics rows: the aggregated clients)."""
    return row.get("received", len(row["clients"]))


def _simulated_total(metrics: list[dict]) -> float | None:
    """Sum of the rounds' simulated wall-clock (``devices.enabled``), else None."""
    times = [m["simulated_round_seconds"] for m in metrics if "simulated_round_seconds" in m]
    return round(sum(times), 6) if times else None
