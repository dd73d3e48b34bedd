"""An experiment end to end: data -> partition -> backbone -> FedGen-Edge or a baseline ->
personalization -> run directory (config, metrics.jsonl, summary.json, states, report).

Run directory layout::

    config.yaml              resolved config
    partition.json           client partition + statistics (top words per topic, ...)
    metrics.jsonl            one JSON line per round (round 0 = backbone + zero adapter)
    state.json               last completed round + cumulative counters (for --resume)
    checkpoints/round_NNNN/  global state after round N (+ kept/ client states); last few rounds
    global/                  final global state (PEFT adapter for LoRA algorithms)
    clients/client_NNN/      each client's personalized state, where the algorithm has one
    personalization.json     per-client local-test PPL: global vs personalized
    summary.json             headline figures (schema: SUMMARY_FIELDS)
    report.md                human-readable result table + convergence.png
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fedgen.config import Config, load_config, save_config
from fedgen.data.partition import Partition, build_partition, cached_partition, make_documents
from fedgen.data.ptb import PTB, load_ptb
from fedgen.errors import CheckpointError, FedgenError
from fedgen.fl.algorithms import (
    ALGORITHMS,
    AlgorithmSpec,
    DittoClient,
    FedAvgClient,
    FedPerClient,
    fedper_gan_personal_keys,
    fedper_personal_keys,
)
from fedgen.fl.client import Client, ClientData, LocalTrainConfig, derive_seed
from fedgen.fl.comm import formula_bytes, num_params
from fedgen.fl.server import RoundRecord, federate
from fedgen.models.gpt import count_params, freeze, load_backbone
from fedgen.models.lora import add_lora
from fedgen.models.params import ParamSet, State
from fedgen.rundir import RunDir, read_state, write_state
from fedgen.runtime.simulate import InProcessRuntime
from fedgen.tasks.text import TextTask

SUMMARY_VERSION = 2
SUMMARY_FIELDS = {
    "summary_version": "schema version of this file",
    "task": "text | image (image runs name their figures test_fdc_*, test_acc_*, local_test_fdc_*, fid)",
    "algorithm": "fedgen | fedavg-full | fedper | ditto | local | central-full | central-lora",
    "name": "experiment name from the config",
    "seed": "experiment seed",
    "backbone": "{source, path, params, architecture, ptb_valid_ppl_pretrain}",
    "adapter_params": "trainable LoRA parameters (null when the algorithm trains the full model)",
    "trained_params": "parameters trained by each client",
    "upload_params": "parameters each sampled client uploads per round (0 without communication)",
    "num_clients": "K",
    "clients_per_round": "round(C*K) (0 without communication)",
    "rounds": "completed federated rounds (0 for local / central training)",
    "local_epochs_equivalent": "epochs over a client's data (local) or the pooled data (central)",
    "upload_bytes_total": "sum over rounds and clients of serialized (safetensors) update bytes",
    "upload_note": "why upload is 0, where it is",
    "download_bytes_total": "sum over rounds of serialized global state bytes x clients sampled",
    "upload_bytes_formula_total": "formula 3.5/3.6: uploads x upload_params x 4 bytes",
    "bytes_per_upload": "serialized bytes of one client update (null without communication)",
    "valid_ppl_initial": "PTB valid PPL, backbone + zero adapter (round 0)",
    "test_ppl_initial": "PTB test PPL, backbone + zero adapter (round 0)",
    "valid_ppl_final": "PTB valid PPL of the final global model (null: no global model)",
    "test_ppl_final": "PTB test PPL of the final global model (null: no global model)",
    "local_test_ppl_initial_mean": "mean over clients of local-test PPL, backbone + zero adapter",
    "local_test_ppl_global_mean": "mean over clients of local-test PPL, final global model",
    "local_test_ppl_personalized_mean": "mean over clients of local-test PPL, personalized models",
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
    if "ptb-public" in cfg.pretrain.sources:  # the slice itself is part of the pre-training data
        key += f"-ptb{cfg.data.public_docs}x{cfg.data.doc_sentences}"
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


def ptb_documents(cfg: Config, ptb: PTB) -> tuple[list, list]:
    """PTB train as pseudo-documents: (public slice no client holds, the clients' documents)."""
    d = cfg.data
    docs = make_documents(ptb.train, d.doc_sentences)
    public, docs = docs[: d.public_docs], docs[d.public_docs :]
    if d.max_docs is not None:
        docs = docs[: d.max_docs]
    return public, docs


def load_partition(cfg: Config, ptb: PTB) -> tuple[list, Partition]:
    """The clients' pseudo-documents of PTB train and their partition (cached by its parameters)."""
    d = cfg.data
    _, docs = ptb_documents(cfg, ptb)
    key = Config(seed=cfg.seed, data=cfg.data).digest("seed", "data")
    cache = Path(cfg.output.root) / "cache" / f"partition-{d.partition}-{key}.json"

    def build() -> Partition:
        return build_partition(
            docs,
            scheme=d.partition,
            num_clients=d.num_clients,
            alpha=d.alpha,
            num_topics=d.num_topics,
            test_fraction=d.test_fraction,
            seed=cfg.seed,
            lda_max_iter=d.lda_max_iter,
        )

    return docs, cached_partition(cache, build, lambda part: part.params.get("num_docs") == len(docs))


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
    """Everything a run needs, built once from a config: data, backbone, the trained parameters."""

    cfg: Config
    spec: AlgorithmSpec
    task: TextTask
    params: ParamSet
    client: Client
    data: dict[int, ClientData]
    partition: Partition
    eval_sets: dict[str, Any]  # global evaluation data: PTB valid/test streams, or CIFAR-10 test
    backbone_meta: dict
    backbone_params: int
    init: State  # round-0 state: backbone + zero adapter (LoRA) or the backbone itself (full)
    extra: dict = field(default_factory=dict)  # task-specific (image: the CIFAR-10 arrays)

    @property
    def metric(self) -> str:
        """The per-client quality figure: "ppl" (text) or "fdc" (image FD-classifier)."""
        return self.task.metric

    @property
    def peft_model(self):
        """The PEFT model, to save LoRA states as PEFT adapters (None for full-model training)."""
        return self.params.model if self.spec.trains == "lora" else None

    @classmethod
    def build(cls, cfg: Config, progress: bool = True) -> Experiment:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        spec = ALGORITHMS[cfg.algorithm.name]
        if cfg.task == "image":
            return cls._build_image(cfg, spec, progress)
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
                f"over {len(docs)} docs; dominant-topic share {s['dominant_topic_share_mean']:.2f}; "
                f"train tokens/client {s['tokens_train_min']}-{s['tokens_train_max']} "
                f"(median {s['tokens_train_median']:.0f})"
            )
        model = base
        if spec.trains == "lora":
            model = add_lora(base, cfg.lora.r, cfg.lora.alpha, cfg.lora.targets, cfg.lora.dropout)
        limit = (cfg.eval.max_tokens or 10**12) + 1
        return cls._assemble(
            cfg,
            spec,
            task,
            model,
            data=client_datasets(task, docs, part),
            partition=part,
            eval_sets={"valid": task.stream(ptb.valid)[:limit], "test": task.stream(ptb.test)[:limit]},
            backbone_meta=meta,
            backbone_params=backbone_params,
        )

    @classmethod
    def _build_image(cls, cfg: Config, spec: AlgorithmSpec, progress: bool) -> Experiment:
        from fedgen.image_run import build_parts
        from fedgen.models.conv_lora import add_generator_lora

        parts = build_parts(cfg, spec.trains, progress)
        gan = parts.pop("model")
        model = gan
        if spec.trains == "lora":
            model = add_generator_lora(gan, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
        extra = {"cifar": parts.pop("cifar"), "local_eval": {"n": cfg.image.local_samples}}
        return cls._assemble(cfg, spec, parts.pop("task"), model, **parts, extra=extra)

    @classmethod
    def _assemble(cls, cfg: Config, spec: AlgorithmSpec, task, model, **fields) -> Experiment:
        if spec.trains == "lora":
            torch.manual_seed(derive_seed(cfg.seed, "adapter-init"))  # A random, B = 0, per seed
            for mod in model.modules():
                if hasattr(mod, "reset_lora_parameters"):
                    mod.reset_lora_parameters("default", True)
        params = ParamSet(model, spec.trains)
        f = cfg.fl
        lr = cfg.algorithm.lr_full if spec.trains == "full" and cfg.algorithm.lr_full else f.lr
        betas = (cfg.image.beta1, 0.999) if cfg.task == "image" else (0.9, 0.999)
        train_cfg = LocalTrainConfig(f.local_epochs, f.batch_size, lr, f.weight_decay, f.max_grad_norm, betas)
        return cls(
            cfg=cfg,
            spec=spec,
            task=task,
            params=params,
            client=Client(task, params, train_cfg),
            init=params.state(),
            **fields,
        )

    def evaluate_global(self, state: State) -> dict[str, float]:
        """Global figures of one model: PTB valid/test PPL, or CIFAR-10 test FD-classifier + class acc."""
        out = {}
        for split, data in self.eval_sets.items():
            r = self.client.evaluate(state, data, self.cfg.eval.batch_size)
            out.update({f"{split}_{k}": r[k] for k in self.task.global_keys})
        return out

    def local_metric(self, state: State, d: ClientData) -> float:
        """The metric of one model on one client's test split."""
        kw = self.extra.get("local_eval", {})
        return self.client.evaluate(state, d.test, self.cfg.eval.batch_size, **kw)[self.metric]

    def evaluate_local(self, state_of) -> dict[int, float]:
        """The metric on every client's test split; ``state_of(k)`` gives client k's model."""
        return {
            k: self.local_metric(state_of(k), d)
            for k, d in self.data.items()
            if self.task.has_eval_data(d.test)
        }

    def clients_per_round(self) -> int:
        return max(1, int(round(self.cfg.fl.fraction * self.cfg.data.num_clients)))

    def budget_epochs(self) -> int:
        """Epochs that give local/central training the federated run's expected sample passes.

        In the federated runs each client takes part in rounds x m/K rounds on average
        (m = clients per round) and trains E epochs each time, so every training example is
        seen rounds x (m/K) x E times in expectation. Local-only (own data) and centralized
        (pooled data) training get that many epochs (rounded, at least 1).
        """
        c = self.cfg
        return max(
            1, int(round(c.fl.rounds * self.clients_per_round() / c.data.num_clients * c.fl.local_epochs))
        )


def _dist(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    q = statistics.quantiles(v, n=10) if len(v) > 1 else [v[0]] * 9
    return {"mean": statistics.fmean(v), "median": statistics.median(v), "p10": q[0], "p90": q[-1]}


def client_logic(exp: Experiment):
    """The client-side behaviour of a federated algorithm (what is uploaded, what is kept)."""
    name = exp.spec.name
    if name == "fedper":
        blocks = exp.cfg.algorithm.fedper_personal_blocks
        if exp.cfg.task == "image":
            personal = fedper_gan_personal_keys(exp.params.keys(), blocks)
        else:
            personal = fedper_personal_keys(exp.params.keys(), exp.cfg.model.n_layer, blocks)
        return FedPerClient(exp.client, personal, {k: exp.init[k] for k in personal})
    if name == "ditto":
        return DittoClient(exp.client, exp.cfg.algorithm.ditto_lambda)
    return FedAvgClient(exp.client)


# ------------------------------------------------------------------------------ main entry


def new_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output.root) / f"{cfg.name}-{cfg.algorithm.name}-{stamp}"
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
    """Run (or resume) one experiment (``cfg.algorithm.name``). Returns summary.json's content.

    ``stop_after=N`` stops after round N as if the process had been killed (the run can be
    resumed); ``resume=True`` continues ``run_dir`` from its last checkpoint using the config
    saved there. Local and centralized training have no rounds: they restart when resumed.
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
        if rd.state_file.exists() or (rd.path / "summary.json").exists():
            raise CheckpointError(f"{rd.path} already holds a run: pass --resume to continue it")
        save_config(cfg, rd.path / "config.yaml")
        rd.metrics.unlink(missing_ok=True)

    exp = Experiment.build(cfg, progress)
    exp.partition.save(rd.path / "partition.json")
    done, state, kept, counters = rd.load_resume()
    prior_wall = float(counters.get("wall_seconds", 0.0))
    if state is None:
        rd.metrics.unlink(missing_ok=True)
        local0 = exp.evaluate_local(lambda k: exp.init)
        rd.append_metrics(
            {
                "round": 0,
                **exp.evaluate_global(exp.init),
                f"local_test_{exp.metric}": _dist(list(local0.values())),
            }
        )

    if exp.spec.mode == "federated":
        out = _run_federated(exp, rd, done, state, kept, counters, t0, prior_wall, stop_after, progress)
        if out is None:
            return {"stopped_after_round": stop_after, "run_dir": str(rd.path)}
    elif exp.spec.mode == "local":
        out = _run_local(exp, rd, progress)
    else:
        out = _run_central(exp, rd, progress)
    final_state, pers = out
    if final_state is not None:
        write_state(rd.path / "global", final_state, exp.peft_model)
    if cfg.task == "image":
        return _finish_image(exp, rd, final_state, pers, prior_wall, t0, progress)
    summary = make_summary(exp, rd, pers, round(prior_wall + time.time() - t0, 2))
    rd.write_json("summary.json", summary)
    rd.write_json("samples.json", text_samples(exp, rd))
    from fedgen.report.text import write_report

    write_report(rd.path, summary, rd.read_metrics(), pers)
    return summary


def _finish_image(exp, rd, final_state, pers, prior_wall, t0, progress) -> dict:
    """Image runs: Inception FID/KID of the global and the clients' models, sample grids, report."""
    from fedgen.image_run import final_image_metrics, sample_grids
    from fedgen.report.image import write_report

    has_clients = (rd.path / "clients").is_dir()
    personal = (lambda k: saved_model_state(exp, rd.path, k, True)) if has_clients else None
    if progress:
        print(f"final metrics: Inception FID/KID on {exp.cfg.image.fid_samples} samples per model set")
    global_state = final_state if exp.spec.has_global else None  # FedPer's is only the shared part
    fid = final_image_metrics(exp, global_state, personal)
    grids = sample_grids(exp, rd.path, global_state, personal)
    summary = make_summary(exp, rd, pers, round(prior_wall + time.time() - t0, 2))
    summary.update(fid=fid, grids=grids)
    rd.write_json("summary.json", summary)
    write_report(rd.path, summary, rd.read_metrics(), pers)
    return summary


def saved_model_state(
    exp: Experiment, run_dir: Path, client: int | None = None, never_sampled_uses_global: bool = False
) -> State:
    """A finished run's global model (``client=None``) or one client's personalized model.

    ``never_sampled_uses_global``: a client that kept no model (never sampled by FedPer or Ditto)
    gets what it would run: the global (shared) parts over the initial state.
    """
    which = run_dir / "global" if client is None else run_dir / "clients" / f"client_{client:03d}"
    if never_sampled_uses_global and not which.is_dir() and (run_dir / "global").is_dir():
        which = run_dir / "global"
    if not which.is_dir():
        raise FedgenError(
            f"{which} does not exist (this algorithm keeps no such model, or the run is unfinished)"
        )
    state = dict(exp.init)
    for part in (run_dir / "global", which):  # FedPer: shared layers + the client's personal ones
        if part.is_dir():
            state.update(read_state(part))
    return state


SAMPLE_PROMPTS = ("the company said", "in new york")


def text_samples(exp: Experiment, rd: RunDir, clients: tuple[int, ...] = (0, 1)) -> dict[str, list[str]]:
    """Sampled continuations (temperature 1, top-k 40, fixed seeds) from the run's models."""
    out: dict[str, list[str]] = {}
    names = [("global", None)] + [(f"client {k} (personalized)", k) for k in clients]
    for label, k in names:
        try:
            state = saved_model_state(exp, rd.path, k)
        except FedgenError:
            continue
        exp.params.load(state)
        out[label] = [
            exp.task.sample(exp.params.model, p, max_new_tokens=25, seed=i)
            for i, p in enumerate(SAMPLE_PROMPTS)
        ]
    return out


def _run_federated(exp, rd, done, state, kept, counters, t0, prior_wall, stop_after, progress):
    cfg, f = exp.cfg, exp.cfg.fl
    logic = client_logic(exp)
    logic.kept.update(kept)
    if state is None:
        state = logic.server_part(exp.init)
    counters = {"upload_bytes_total": 0, "download_bytes_total": 0, **counters}
    upload_params = num_params(state)
    last_round = min(f.rounds, stop_after) if stop_after is not None else f.rounds
    bar = tqdm(
        total=max(last_round - done, 0), desc=f"{exp.spec.name} rounds", disable=not progress, unit="round"
    )
    cbar = tqdm(desc="clients", disable=not progress, unit="client", leave=False)

    def on_round_end(rec: RoundRecord, new_state: State) -> None:
        counters["upload_bytes_total"] += rec.upload_bytes
        counters["download_bytes_total"] += rec.download_bytes
        row: dict[str, Any] = {
            **asdict(rec),
            "upload_bytes_cum": counters["upload_bytes_total"],
            "download_bytes_cum": counters["download_bytes_total"],
            "upload_bytes_formula": formula_bytes(upload_params) * len(rec.clients),
        }
        final = rec.round == f.rounds
        if exp.spec.has_global and (rec.round % cfg.eval.every == 0 or final):
            row.update(exp.evaluate_global(new_state))
        if rec.round % cfg.eval.local_every == 0 or final:
            if exp.spec.has_global:
                row[f"local_test_{exp.metric}"] = _dist(
                    list(exp.evaluate_local(lambda k: new_state).values())
                )
            personal = logic.personalized(new_state)
            if personal is not None:
                row[f"local_test_{exp.metric}_personalized"] = _dist(
                    list(exp.evaluate_local(personal).values())
                )
        row["wall_seconds"] = round(prior_wall + time.time() - t0, 2)
        rd.append_metrics(row)
        rd.checkpoint(
            rec.round,
            new_state,
            logic.kept,
            {**counters, "wall_seconds": row["wall_seconds"]},
            cfg.output.keep_checkpoints,
            exp.peft_model,
        )
        bar.update(1)

    state = federate(
        InProcessRuntime(logic, exp.data, cfg.seed, progress=cbar),
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
        return None
    if exp.spec.personalized == "finetune":
        return state, personalize(exp, state, rd, progress)
    personal = logic.personalized(state)
    pers = None
    if personal is not None:
        pers = _personalization_report(exp, rd, state if exp.spec.has_global else None, personal, logic.kept)
    return state, pers  # FedPer: the shared layers


def _run_local(exp: Experiment, rd: RunDir, progress: bool):
    """Local-only: each client trains its own adapter on its own data, nothing is communicated."""
    epochs = exp.budget_epochs()
    kept: dict[int, State] = {}
    for k, d in tqdm(exp.data.items(), desc="local clients", disable=not progress, unit="client"):
        kept[k] = exp.client.fit(exp.init, d, derive_seed(exp.cfg.seed, "local", k), epochs=epochs).state
    local = exp.evaluate_local(lambda k: kept[k])
    rd.append_metrics(
        {"round": 1, "epochs": epochs, f"local_test_{exp.metric}_personalized": _dist(list(local.values()))}
    )
    return None, _personalization_report(exp, rd, None, lambda k: kept[k], kept)


def pooled_data(exp: Experiment) -> ClientData:
    """Every client's training windows in one dataset (centralized baselines)."""
    return ClientData(-1, exp.task.concat([d.train for _, d in sorted(exp.data.items())]), torch.empty(0))


def _run_central(exp: Experiment, rd: RunDir, progress: bool):
    """Centralized: all clients' training windows pooled on one machine (an upper bound)."""
    epochs = exp.budget_epochs()
    pooled = pooled_data(exp)
    if progress:
        print(f"{exp.spec.name}: {epochs} epochs over {len(pooled.train)} pooled training examples")
    state = exp.client.fit(exp.init, pooled, derive_seed(exp.cfg.seed, "central"), epochs=epochs).state
    local = exp.evaluate_local(lambda k: state)
    rd.append_metrics(
        {
            "round": 1,
            "epochs": epochs,
            **exp.evaluate_global(state),
            f"local_test_{exp.metric}": _dist(list(local.values())),
        }
    )
    return state, None


def _personalization_report(exp, rd, global_state, personal, kept) -> dict:
    """Per-client local-test PPL of the global (if any) and personalized models; saves kept states."""
    rows = []
    for k, d in exp.data.items():
        if k in kept:
            st = kept[k]
            write_state(
                rd.path / "clients" / f"client_{k:03d}",
                st,
                exp.peft_model if st.keys() == exp.init.keys() else None,
            )
        if not exp.task.has_eval_data(d.test):
            continue
        row = {"client": k, "test_size": len(d.test), "trained": k in kept}
        if global_state is not None:
            row[f"{exp.metric}_global"] = exp.local_metric(global_state, d)
        row[f"{exp.metric}_personalized"] = exp.local_metric(personal(k), d)
        rows.append(row)
    return _pers_summary(exp, rd, rows)


def _pers_summary(exp: Experiment, rd: RunDir, rows: list[dict]) -> dict:
    g, p = f"{exp.metric}_global", f"{exp.metric}_personalized"
    out: dict[str, Any] = {"metric": exp.metric, "clients": rows, "personalized": _dist([r[p] for r in rows])}
    if rows and g in rows[0]:
        out["global"] = _dist([r[g] for r in rows])
        out["improved_fraction"] = sum(r[p] < r[g] for r in rows) / len(rows)  # lower is better
    rd.write_json("personalization.json", out)
    return out


def personalize(exp: Experiment, global_state: State, rd: RunDir, progress: bool = True) -> dict:
    """FedGen-Edge's last step: each client fine-tunes the final global adapter on its local train split."""
    cfg = exp.cfg
    rows = []
    for k, d in tqdm(exp.data.items(), desc="personalize", disable=not progress, unit="client", leave=False):
        res = exp.client.fit(global_state, d, derive_seed(cfg.seed, "personalize", k), cfg.personalize.epochs)
        write_state(rd.path / "clients" / f"client_{k:03d}", res.state, exp.peft_model)
        if not exp.task.has_eval_data(d.test):
            continue
        rows.append(
            {
                "client": k,
                "num_examples": res.num_examples,
                "test_size": len(d.test),
                f"{exp.metric}_global": exp.local_metric(global_state, d),
                f"{exp.metric}_personalized": exp.local_metric(res.state, d),
            }
        )
    return _pers_summary(exp, rd, rows)


def make_summary(exp: Experiment, rd: RunDir, pers: dict | None, wall: float) -> dict:
    cfg, spec, metrics = exp.cfg, exp.spec, rd.read_metrics()
    first, last = metrics[0], metrics[-1]
    federated = spec.mode == "federated"
    rounds = [m for m in metrics if m["round"] > 0] if federated else []
    n_up = sum(len(m["clients"]) for m in rounds)
    upload_params = (rounds[-1]["upload_bytes_formula"] // 4 // len(rounds[-1]["clients"])) if rounds else 0
    note = {
        "local": "none: no communication (each client trains alone)",
        "central": "n/a: raw data centralised",
    }.get(spec.mode)
    m = exp.metric
    if cfg.task == "text":
        backbone = {
            "source": exp.backbone_meta.get("source"),
            "path": exp.backbone_meta.get("path"),
            "params": exp.backbone_params,
            "architecture": {
                "n_layer": cfg.model.n_layer,
                "n_embd": cfg.model.n_embd,
                "n_head": cfg.model.n_head,
            },
            "ptb_valid_ppl_pretrain": exp.backbone_meta.get("ptb_valid_ppl"),
        }
    else:
        backbone = {
            "source": exp.backbone_meta.get("source"),
            "path": exp.backbone_meta.get("path"),
            "params": exp.backbone_params,
            "params_split": exp.backbone_meta.get("params"),
            "architecture": exp.backbone_meta.get("architecture"),
            "pretrain": exp.backbone_meta.get("pretrain"),
            "data_source": exp.backbone_meta.get("data_source"),
            "classifier": exp.backbone_meta.get("classifier"),
        }
    quality = {}
    for split in exp.eval_sets:
        for k in exp.task.global_keys:
            quality[f"{split}_{k}_initial"] = first[f"{split}_{k}"]
            quality[f"{split}_{k}_final"] = last.get(f"{split}_{k}") if spec.has_global else None
    local = f"local_test_{m}"
    return {
        "summary_version": SUMMARY_VERSION,
        "task": cfg.task,
        "algorithm": spec.name,
        "name": cfg.name,
        "seed": cfg.seed,
        "backbone": backbone,
        "adapter_params": exp.params.numel() if spec.trains == "lora" else None,
        "trained_params": exp.params.numel(),
        "upload_params": upload_params,
        "num_clients": cfg.data.num_clients,
        "clients_per_round": len(rounds[0]["clients"]) if rounds else 0,
        "rounds": rounds[-1]["round"] if rounds else 0,
        "local_epochs_equivalent": None if federated else last.get("epochs"),
        "upload_bytes_total": last["upload_bytes_cum"] if rounds else 0,
        "upload_note": note,
        "download_bytes_total": last["download_bytes_cum"] if rounds else 0,
        "upload_bytes_formula_total": formula_bytes(upload_params) * n_up,
        "bytes_per_upload": rounds[-1]["upload_bytes"] // len(rounds[-1]["clients"]) if rounds else None,
        **quality,
        f"{local}_initial_mean": first[local]["mean"],
        f"{local}_global_mean": last[local]["mean"] if spec.has_global else None,
        f"{local}_personalized_mean": pers["personalized"]["mean"] if pers else None,
        f"{local}_personalized_median": pers["personalized"]["median"] if pers else None,
        "wall_seconds": wall,
        "run_dir": str(rd.path),
    }
