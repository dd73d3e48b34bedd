"""A FedGen-Edge text experiment, end to end: data -> partition -> backbone -> federation ->
personalization -> run directory (config, metrics.jsonl, summary.json, adapters, report).

Run directory layout::

    config.yaml              resolved config
    partition.json           client partition + statistics (top words per topic, ...)
    metrics.jsonl            one JSON line per round (round 0 = backbone + zero adapter)
    state.json               last completed round + cumulative counters (for --resume)
    checkpoints/round_NNNN/  global adapter after round N (PEFT format; last ``keep_checkpoints``)
    global_adapter/          final global adapter (PEFT format)
    clients/client_NNN/      personalized adapters (PEFT format)
    personalization.json     per-client local-test PPL: global vs personalized
    summary.json             headline figures (schema: SUMMARY_FIELDS)
    report.md                human-readable result table
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fedgen.config import Config, load_config, save_config
from fedgen.data.partition import Partition, build_partition, make_documents
from fedgen.data.ptb import PTB, load_ptb
from fedgen.errors import CheckpointError, FedgenError
from fedgen.fl.client import AdapterClient, ClientData, LocalTrainConfig, derive_seed
from fedgen.fl.comm import formula_bytes, num_params, serialize
from fedgen.fl.server import RoundRecord, federate
from fedgen.models.gpt import count_params, freeze, load_backbone
from fedgen.models.lora import State, adapter_state, add_lora, lora_parameters, read_adapter, save_adapter
from fedgen.runtime.simulate import InProcessRuntime
from fedgen.tasks.text import TextTask

SUMMARY_VERSION = 1
SUMMARY_FIELDS = {
    "summary_version": "schema version of this file",
    "algorithm": "federated algorithm ('fedgen' = FedGen-Edge)",
    "name": "experiment name from the config",
    "seed": "experiment seed",
    "backbone": "{source, path, params, architecture, ptb_valid_ppl_pretrain}",
    "adapter_params": "trainable LoRA parameters (= parameters uploaded per client per round)",
    "num_clients": "K",
    "clients_per_round": "round(C*K)",
    "rounds": "completed federated rounds",
    "upload_bytes_total": "sum over rounds and clients of serialized (safetensors) update bytes",
    "download_bytes_total": "sum over rounds of serialized global adapter bytes x clients sampled",
    "upload_bytes_formula_total": "formula 3.5: rounds x clients x adapter_params x 4 bytes",
    "bytes_per_upload": "serialized bytes of one client update",
    "valid_ppl_initial": "PTB valid PPL, backbone + zero adapter (round 0)",
    "test_ppl_initial": "PTB test PPL, backbone + zero adapter (round 0)",
    "valid_ppl_final": "PTB valid PPL of the final global adapter",
    "test_ppl_final": "PTB test PPL of the final global adapter",
    "local_test_ppl_initial_mean": "mean over clients of local-test PPL, backbone + zero adapter",
    "local_test_ppl_global_mean": "mean over clients of local-test PPL, final global adapter",
    "local_test_ppl_personalized_mean": "mean over clients of local-test PPL, personalized adapters",
    "local_test_ppl_personalized_median": "median of the same",
    "wall_seconds": "wall time of the run (resumed parts added up)",
}


# ------------------------------------------------------------------------------ data prep


def backbone_path(cfg: Config) -> Path:
    """Where the backbone lives: ``model.backbone``, or the cache slot ``fedgen pretrain`` fills."""
    if cfg.model.backbone != "auto":
        return Path(cfg.model.backbone)
    m = cfg.model
    key = Config(model=cfg.model, pretrain=cfg.pretrain).digest("model", "pretrain")
    return Path(cfg.output.root) / "backbones" / f"gpt-{m.n_layer}x{m.n_embd}x{m.n_head}-ctx{m.context}-{key}"


def ensure_backbone(cfg: Config, progress: bool = True) -> Path:
    path = backbone_path(cfg)
    if (path / "config.json").is_file():
        return path
    if cfg.model.backbone != "auto":
        raise FedgenError(
            f"backbone {path} not found: give an existing checkpoint dir or model.backbone: auto"
        )
    from fedgen.pretrain import pretrain_backbone

    if progress:
        print(f"No pretrained backbone for this config yet: pretraining one into {path}")
    return pretrain_backbone(cfg, path, progress)


def load_partition(cfg: Config, ptb: PTB) -> tuple[list, Partition]:
    """Pseudo-documents of PTB train and their client partition (cached by its parameters)."""
    d = cfg.data
    docs = make_documents(ptb.train, d.doc_sentences)
    if d.max_docs is not None:
        docs = docs[: d.max_docs]
    key = Config(seed=cfg.seed, data=cfg.data).digest("seed", "data")
    cache = Path(cfg.output.root) / "cache" / f"partition-{d.partition}-{key}.json"
    if cache.is_file():
        part = Partition.load(cache)
        if part.params.get("num_docs") == len(docs):
            return docs, part
    part = build_partition(
        docs,
        scheme=d.partition,
        num_clients=d.num_clients,
        alpha=d.alpha,
        num_topics=d.num_topics,
        test_fraction=d.test_fraction,
        seed=cfg.seed,
        lda_max_iter=d.lda_max_iter,
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    part.save(tmp)
    tmp.replace(cache)
    return docs, part


def client_datasets(task: TextTask, docs: list, part: Partition) -> dict[int, ClientData]:
    def stream(ids: list[int]) -> torch.Tensor:
        return task.stream([s for i in ids for s in docs[i]])

    return {
        c.client_id: ClientData(c.client_id, task.examples(stream(c.train_docs)), stream(c.test_docs))
        for c in part.clients
    }


# ------------------------------------------------------------------------------ experiment


@dataclass
class Experiment:
    """Everything a run needs, built once from a config."""

    cfg: Config
    task: TextTask
    model: Any  # PeftModel
    client: AdapterClient
    data: dict[int, ClientData]
    partition: Partition
    valid_ids: torch.Tensor
    test_ids: torch.Tensor
    backbone_meta: dict
    backbone_params: int

    @classmethod
    def build(cls, cfg: Config, progress: bool = True) -> Experiment:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        ptb = load_ptb(cfg.data.dir)
        bb_path = ensure_backbone(cfg, progress)
        base, vocab, meta = load_backbone(bb_path)
        if vocab != ptb.vocab:
            raise FedgenError(f"backbone {bb_path}: its vocab.txt is not PTB's training vocabulary")
        if base.config.n_positions < cfg.model.context:
            raise FedgenError(f"backbone {bb_path}: context {base.config.n_positions} < model.context")
        freeze(base)
        backbone_params = count_params(base)
        task = TextTask(vocab, cfg.model.context)
        docs, part = load_partition(cfg, ptb)
        if progress:
            s = part.stats["summary"]
            print(
                f"partition: {part.scheme} K={cfg.data.num_clients} alpha={cfg.data.alpha} "
                f"over {len(docs)} docs; "
                f"dominant-topic share {s['dominant_topic_share_mean']:.2f}; train tokens/client "
                f"{s['tokens_train_min']}-{s['tokens_train_max']} (median {s['tokens_train_median']:.0f})"
            )
        model = add_lora(base, cfg.lora.r, cfg.lora.alpha, cfg.lora.targets, cfg.lora.dropout)
        params = lora_parameters(model)
        assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
        f = cfg.fl
        train_cfg = LocalTrainConfig(f.local_epochs, f.batch_size, f.lr, f.weight_decay, f.max_grad_norm)
        return cls(
            cfg=cfg,
            task=task,
            model=model,
            client=AdapterClient(task, model, params, train_cfg),
            data=client_datasets(task, docs, part),
            partition=part,
            valid_ids=task.stream(ptb.valid),
            test_ids=task.stream(ptb.test),
            backbone_meta=meta,
            backbone_params=backbone_params,
        )

    def initial_state(self) -> State:
        """The server's initial global adapter: PEFT init (A random, B = 0) for the run's seed."""
        torch.manual_seed(derive_seed(self.cfg.seed, "adapter-init"))
        for mod in self.model.modules():
            if hasattr(mod, "reset_lora_parameters"):
                mod.reset_lora_parameters("default", True)
        return adapter_state(self.model)

    def evaluate_global(self, state: State) -> dict[str, float]:
        e = self.cfg.eval
        out = {}
        for split, ids in (("valid", self.valid_ids), ("test", self.test_ids)):
            out[f"{split}_ppl"] = self.client.evaluate(
                state, ids[: (e.max_tokens or len(ids)) + 1], e.batch_size
            )["ppl"]
        return out

    def evaluate_local(self, state: State) -> dict[int, float]:
        """Local-test PPL of one adapter on every client that has a test split."""
        return {
            k: self.client.evaluate(state, d.test, self.cfg.eval.batch_size)["ppl"]
            for k, d in self.data.items()
            if len(d.test) > 1
        }


def _dist(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    q = statistics.quantiles(v, n=10) if len(v) > 1 else [v[0]] * 9
    return {"mean": statistics.fmean(v), "median": statistics.median(v), "p10": q[0], "p90": q[-1]}


# ------------------------------------------------------------------------------ run dir


class RunDir:
    """Atomic writes and resume bookkeeping for one run directory."""

    def __init__(self, path: Path):
        self.path = path
        self.metrics = path / "metrics.jsonl"
        self.state_file = path / "state.json"

    def write_json(self, name: str, obj: Any) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2))
        tmp.replace(self.path / name)

    def append_metrics(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def checkpoint(self, model, state: State, rnd: int, counters: dict, keep: int) -> None:
        ckdir = self.path / "checkpoints"
        tmp = ckdir / f"round_{rnd:04d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_adapter(model, state, tmp)
        final = ckdir / f"round_{rnd:04d}"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        self.write_json("state.json", {"round": rnd, **counters})
        for old in sorted(ckdir.glob("round_[0-9][0-9][0-9][0-9]"))[:-keep]:
            shutil.rmtree(old)

    def load_resume(self) -> tuple[int, State | None, dict]:
        """(last completed round, its global adapter, counters); (0, None, {}) for a fresh run."""
        if not self.state_file.is_file():
            return 0, None, {}
        try:
            st = json.loads(self.state_file.read_text())
            rnd = int(st.pop("round"))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{self.state_file} is corrupt ({e}); delete the run dir to start over"
            ) from None
        state = read_adapter(self.path / "checkpoints" / f"round_{rnd:04d}")
        rows = [r for r in self.read_metrics() if r["round"] <= rnd]
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return rnd, state, st


# ------------------------------------------------------------------------------ main entry


def new_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output.root) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def run_experiment(
    cfg: Config | None = None,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) a FedGen-Edge text experiment. Returns summary.json's content.

    ``stop_after=N`` stops after round N as if the process had been killed (the run
    can be resumed); ``resume=True`` continues ``run_dir`` from its last checkpoint
    using the config saved there.
    """
    t0 = time.time()
    if resume:
        if run_dir is None or not (Path(run_dir) / "config.yaml").is_file():
            raise CheckpointError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
        saved = load_config(Path(run_dir) / "config.yaml")
        if cfg is not None and cfg.digest() != saved.digest():
            raise CheckpointError(f"--resume: the given config differs from {run_dir}/config.yaml")
        cfg = saved
    assert cfg is not None
    rd = RunDir(Path(run_dir) if run_dir else new_run_dir(cfg))
    rd.path.mkdir(parents=True, exist_ok=True)
    if not resume:
        if rd.state_file.exists():
            raise CheckpointError(f"{rd.path} already holds a run: pass --resume to continue it")
        save_config(cfg, rd.path / "config.yaml")
        rd.metrics.unlink(missing_ok=True)

    exp = Experiment.build(cfg, progress)
    exp.partition.save(rd.path / "partition.json")
    f = cfg.fl
    done, state, counters = rd.load_resume()
    counters = {"upload_bytes_total": 0, "download_bytes_total": 0, "wall_seconds": 0.0, **counters}
    if state is None:
        state = exp.initial_state()
        local0 = exp.evaluate_local(state)
        row = {"round": 0, **exp.evaluate_global(state), "local_test_ppl": _dist(list(local0.values()))}
        rd.append_metrics(row)
    adapter_params = num_params(state)
    last_round = min(f.rounds, stop_after) if stop_after is not None else f.rounds
    bar = tqdm(total=last_round - done, desc="rounds", disable=not progress, unit="round")
    cbar = tqdm(desc="clients", disable=not progress, unit="client", leave=False)
    prior_wall = float(counters["wall_seconds"])

    def on_round_end(rec: RoundRecord, new_state: State) -> None:
        counters["upload_bytes_total"] += rec.upload_bytes
        counters["download_bytes_total"] += rec.download_bytes
        row: dict[str, Any] = {
            **asdict(rec),
            "upload_bytes_cum": counters["upload_bytes_total"],
            "download_bytes_cum": counters["download_bytes_total"],
            "upload_bytes_formula": formula_bytes(adapter_params) * len(rec.clients),
        }
        final = rec.round == f.rounds
        if rec.round % cfg.eval.every == 0 or final:
            row.update(exp.evaluate_global(new_state))
        if rec.round % cfg.eval.local_every == 0 or final:
            row["local_test_ppl"] = _dist(list(exp.evaluate_local(new_state).values()))
        row["wall_seconds"] = round(prior_wall + time.time() - t0, 2)
        rd.append_metrics(row)
        rd.checkpoint(
            exp.model,
            new_state,
            rec.round,
            {**counters, "wall_seconds": row["wall_seconds"]},
            cfg.output.keep_checkpoints,
        )
        bar.update(1)
        bar.set_postfix({k: f"{row[k]:.1f}" for k in ("valid_ppl",) if k in row})

    runtime = InProcessRuntime(exp.client, exp.data, cfg.seed, progress=cbar)
    state = federate(
        runtime,
        state,
        num_clients=cfg.data.num_clients,
        rounds=last_round,
        fraction=f.fraction,
        seed=cfg.seed,
        start_round=done + 1,
        on_round_end=on_round_end,
    )
    bar.close()
    cbar.close()
    if last_round < f.rounds:
        return {"stopped_after_round": last_round, "run_dir": str(rd.path)}

    save_adapter(exp.model, state, rd.path / "global_adapter")
    pers = personalize(exp, state, rd, progress) if cfg.personalize.enabled else None
    summary = make_summary(exp, rd, state, pers, round(prior_wall + time.time() - t0, 2))
    rd.write_json("summary.json", summary)
    from fedgen.report.text import write_report

    write_report(rd.path, summary, rd.read_metrics(), pers)
    return summary


def personalize(exp: Experiment, global_state: State, rd: RunDir, progress: bool = True) -> dict:
    """Each client fine-tunes the final global adapter on its local train split; save and evaluate."""
    cfg = exp.cfg
    rows = []
    for k, d in tqdm(exp.data.items(), desc="personalize", disable=not progress, unit="client", leave=False):
        res = exp.client.fit(global_state, d, derive_seed(cfg.seed, "personalize", k), cfg.personalize.epochs)
        save_adapter(exp.model, res.state, rd.path / "clients" / f"client_{k:03d}")
        if len(d.test) <= 1:
            continue
        rows.append(
            {
                "client": k,
                "num_examples": res.num_examples,
                "test_tokens": len(d.test) - 1,
                "ppl_global": exp.client.evaluate(global_state, d.test, cfg.eval.batch_size)["ppl"],
                "ppl_personalized": exp.client.evaluate(res.state, d.test, cfg.eval.batch_size)["ppl"],
            }
        )
    out = {
        "clients": rows,
        "global": _dist([r["ppl_global"] for r in rows]),
        "personalized": _dist([r["ppl_personalized"] for r in rows]),
        "improved_fraction": sum(r["ppl_personalized"] < r["ppl_global"] for r in rows) / max(len(rows), 1),
    }
    rd.write_json("personalization.json", out)
    return out


def make_summary(exp: Experiment, rd: RunDir, state: State, pers: dict | None, wall: float) -> dict:
    cfg, metrics = exp.cfg, rd.read_metrics()
    first, last = metrics[0], metrics[-1]
    rounds = [m for m in metrics if m["round"] > 0]
    n_up = sum(len(m["clients"]) for m in rounds)
    adapter_params = num_params(state)
    return {
        "summary_version": SUMMARY_VERSION,
        "algorithm": "fedgen",
        "name": cfg.name,
        "seed": cfg.seed,
        "backbone": {
            "source": exp.backbone_meta.get("source"),
            "path": exp.backbone_meta.get("path"),
            "params": exp.backbone_params,
            "architecture": {
                "n_layer": cfg.model.n_layer,
                "n_embd": cfg.model.n_embd,
                "n_head": cfg.model.n_head,
            },
            "ptb_valid_ppl_pretrain": exp.backbone_meta.get("ptb_valid_ppl"),
        },
        "adapter_params": adapter_params,
        "num_clients": cfg.data.num_clients,
        "clients_per_round": len(rounds[0]["clients"]) if rounds else 0,
        "rounds": last["round"],
        "upload_bytes_total": last["upload_bytes_cum"],
        "download_bytes_total": last["download_bytes_cum"],
        "upload_bytes_formula_total": formula_bytes(adapter_params) * n_up,
        "bytes_per_upload": len(serialize(state)),
        "valid_ppl_initial": first["valid_ppl"],
        "test_ppl_initial": first["test_ppl"],
        "valid_ppl_final": last["valid_ppl"],
        "test_ppl_final": last["test_ppl"],
        "local_test_ppl_initial_mean": first["local_test_ppl"]["mean"],
        "local_test_ppl_global_mean": last["local_test_ppl"]["mean"],
        "local_test_ppl_personalized_mean": pers["personalized"]["mean"] if pers else None,
        "local_test_ppl_personalized_median": pers["personalized"]["median"] if pers else None,
        "wall_seconds": wall,
        "run_dir": str(rd.path),
    }
