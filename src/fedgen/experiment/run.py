"""An experiment end to end: task x algorithm -> driver -> run directory -> task outputs -> report.

Run directory layout::

    config.yaml              resolved config
    partition.json           client partition + statistics
    metrics.jsonl            one JSON line per round (round 0 = backbone + zero adapter)
    state.json               last completed round + cumulative counters (for --resume)
    checkpoints/round_NNNN/  global state after round N (+ kept/ client states); last few rounds
    global/                  final global state (PEFT adapter for LoRA algorithms)
    clients/client_NNN/      each client's personalized state, where the algorithm has one
    personalization.json     per-client local-test figure: global vs personalized
    summary.json             headline figures (schema: fedgen.experiment.summary.SUMMARY_FIELDS)
    run.json                 run id (random UUID) and result key (config + backbone digests + results schema)
    report.md                the task's report (result table, convergence plot, samples)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from fedgen.config import Config, load_config, save_config
from fedgen.core.errors import CheckpointError, FedgenError
from fedgen.core.files import atomic_write_text, is_interrupted_write
from fedgen.experiment.build import Experiment, distribution
from fedgen.experiment.loop import Clock, RuntimeFactory, run_central, run_federated, run_local
from fedgen.experiment.rundir import RunDir, read_run_info, read_state, write_state
from fedgen.experiment.summary import backbone_digest, make_summary, result_key
from fedgen.fl.secure_random import NOT_PRIVATE, not_private
from fedgen.models.params import State


def new_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output.root) / f"{cfg.name}-{cfg.algorithm.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def saved_run_id(run_dir: Path) -> str | None:
    """The run id recorded in ``run_dir/run.json`` (None: none recorded)."""
    return read_run_info(run_dir).get("run_id")


def _is_our_run(path: Path) -> bool:
    """A directory fedgen made: it holds the run.json (with a result key) that every run writes first."""
    return "result_key" in read_run_info(path)


def _open_run(
    cfg: Config | None, run_dir: str | Path | None, resume: bool, run_id: str | None = None
) -> tuple[Config, RunDir]:
    if resume:
        if run_dir is None or not (Path(run_dir) / "config.yaml").is_file():
            raise CheckpointError(
                f"--resume: {run_dir} is not a run directory (no config.yaml); a run killed before it "
                "wrote its config starts again with --config CONFIG --out on the same directory"
            )
        saved = load_config(Path(run_dir) / "config.yaml")
        if cfg is not None and cfg.digest() != saved.digest():
            raise CheckpointError(f"--resume: the given config differs from {run_dir}/config.yaml")
        cfg = saved
    if cfg is None:
        raise FedgenError("run_experiment needs a config (or resume=True with a run directory)")
    rd = RunDir(Path(run_dir) if run_dir else new_run_dir(cfg))
    ours_only = rd.path.is_dir() and all(is_interrupted_write(p.name) for p in rd.path.iterdir())
    if not resume and rd.path.is_dir() and not ours_only and not _is_our_run(rd.path):
        raise CheckpointError(
            f"{rd.path} is not empty and is not a fedgen run directory: refusing to write into it "
            "(its files are left untouched); choose a new or empty directory"
        )
    rd.path.mkdir(parents=True, exist_ok=True)
    if not resume:
        if rd.state_file.exists() or (rd.path / "summary.json").exists():
            raise CheckpointError(f"{rd.path} already holds a run: pass --resume to continue it")
        save_config(cfg, rd.path / "config.yaml")
        rd.run_id = run_id or uuid.uuid4().hex
        rd.write_json("run.json", {"result_key": result_key(cfg), "run_id": rd.run_id})
        rd.metrics.unlink(missing_ok=True)
    else:
        info = rd.read_json("run.json") if (rd.path / "run.json").is_file() else {}
        saved_id = info.get("run_id")
        if run_id is not None and saved_id is not None and run_id != saved_id:
            raise CheckpointError(f"--resume: {rd.path} is run {saved_id}, not run {run_id}")
        rd.run_id = saved_id or run_id or uuid.uuid4().hex  # a run from before run ids gets one now
        if saved_id is None:
            rd.write_json("run.json", {**info, "run_id": rd.run_id})
    return cfg, rd


# What `--resume RUN --set k=v` may change: where and how fast it runs, and more (or fewer, not below
# the rounds done) federated rounds; the rounds already run are those of the longer run too.
RESUME_SAFE = {
    "fl.rounds",
    "threads",
    "data.dir",
    "output.keep_checkpoints",
    "flower.round_timeout",
    "flower.wait_nodes",
}


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_config(run_dir: str | Path, overrides: list[str]) -> Config:
    """The saved config of ``run_dir`` with ``--set`` overrides applied where that is safe (see
    ``RESUME_SAFE``): saved to config.yaml and recorded in run.json (``resumed_with``). Any other
    change is refused with one line; never silently ignored."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
    saved = load_config(path)
    new = load_config(path, overrides)
    before, after = _flat(saved.to_dict()), _flat(new.to_dict())
    changed = sorted(k for k in after if after[k] != before.get(k))
    unsafe = [k for k in changed if k not in RESUME_SAFE]
    if unsafe:
        raise CheckpointError(
            f"--resume --set: {unsafe[0]} cannot change in a started run (only "
            f"{', '.join(sorted(RESUME_SAFE))}); start a new run instead"
        )
    if not changed:
        return saved
    rd = RunDir(Path(run_dir))
    done = int(rd.read_json("state.json").get("round", 0)) if rd.state_file.is_file() else 0
    if new.fl.rounds < done:
        raise CheckpointError(f"--resume --set fl.rounds={new.fl.rounds}: {done} rounds are already done")
    save_config(new, path)
    info = rd.read_json("run.json") if (rd.path / "run.json").is_file() else {}
    record = {"after_round": done, "set": {k: after[k] for k in changed}}
    rd.write_json("run.json", {**info, "resumed_with": [*info.get("resumed_with", []), record]})
    print(
        f"fedgen run --resume: applied {', '.join(f'{k}={after[k]}' for k in changed)} (recorded in run.json)"
    )
    return new


def _record_backbone(rd: RunDir, cfg: Config, exp: Experiment, resume: bool) -> None:
    """run.json's result key includes the backbone's weights; a resumed run must still have them."""
    digest = backbone_digest(exp)
    info = rd.read_json("run.json")
    if resume and info.get("backbone_sha256") not in (None, digest):
        raise CheckpointError(
            f"--resume: the backbone's weights changed since {rd.path} started "
            f"(sha256 {info['backbone_sha256'][:12]}... then, {digest[:12]}... now)"
        )
    rd.write_json("run.json", {**info, "result_key": result_key(cfg, digest), "backbone_sha256": digest})


def run_experiment(
    cfg: Config | None = None,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    make_runtime: RuntimeFactory | None = None,
    run_id: str | None = None,
) -> dict:
    """Run (or resume) one experiment (``cfg.algorithm.name``). Returns summary.json's content.

    ``stop_after=N`` stops after round N as if the process had been killed (the run can be
    resumed); ``resume=True`` continues ``run_dir`` from its last checkpoint using the config
    saved there. Local and centralized training have no rounds: they restart when resumed.
    ``make_runtime`` carries federated rounds elsewhere (default: in-process; see :mod:`fedgen.runtime`).
    ``run_id``: the run's id (run.json; default: a new random UUID, or the resumed run's own).
    """
    clock = Clock()
    cfg, rd = _open_run(cfg, run_dir, resume, run_id)
    exp = Experiment.build(cfg, progress)
    _record_backbone(rd, cfg, exp, resume)
    exp.setup.partition.save(rd.path / "partition.json")
    start = rd.load_resume()
    clock.prior = float(start.counters.get("wall_seconds", 0.0))
    if start.state is None:
        rd.metrics.unlink(missing_ok=True)
        local0 = exp.evaluate_local(lambda k: exp.init)
        rd.append_metrics(
            {
                "round": 0,
                **exp.evaluate_global(exp.init),
                f"local_test_{exp.metric}": distribution(list(local0.values())),
            }
        )

    if exp.spec.mode == "federated":
        outcome = run_federated(exp, rd, start, clock, stop_after, progress, make_runtime)
        if outcome.stopped:
            return {"stopped_after_round": stop_after, "run_dir": str(rd.path)}
    elif exp.spec.mode == "local":
        outcome = run_local(exp, rd, progress)
    else:
        outcome = run_central(exp, rd, progress)
    if outcome.final_state is not None:
        write_state(rd.path / "global", outcome.final_state, exp.peft_model)
    global_state = outcome.final_state if exp.spec.has_global else None  # FedPer's is only the shared part
    personal = saved_models(exp, rd.path)[1]
    extra = exp.task.finish(exp, rd.path, global_state, personal, progress)
    summary = {**make_summary(exp, rd, outcome.personalization, clock.seconds()), **extra}
    rd.write_json("summary.json", summary)
    exp.task.report.write_report(rd.path, summary, rd.read_metrics(), outcome.personalization)
    mark_not_private(rd.path, cfg)
    return summary


def mark_not_private(run_dir: Path, cfg: Config) -> None:
    """report.md of a run with ``dp.insecure_reproducible_noise`` starts by saying it is not private."""
    report = run_dir / "report.md"
    if not_private(cfg) and report.is_file():
        text = report.read_text()
        if NOT_PRIVATE not in text:
            atomic_write_text(report, f"> **Warning: {NOT_PRIVATE}.**\n\n{text}")


def saved_models(exp: Experiment, run_dir: Path) -> tuple[State | None, Callable[[int], State] | None]:
    """A finished run's global state (None where the algorithm has no global model) and
    ``personal(k)``: client k's deployed state (None where the run kept no client models)."""
    has_global = exp.spec.has_global and (run_dir / "global").is_dir()
    global_state = saved_model_state(exp, run_dir) if has_global else None
    if not (run_dir / "clients").is_dir():
        return global_state, None
    return global_state, lambda k: saved_model_state(exp, run_dir, k, True)


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


def recompute_fid(run_dir: str | Path, n: int | None = None, progress: bool = True) -> tuple[str, list[str]]:
    """``fedgen fid``: the task's Inception FID/KID of a finished run's saved models on ``n`` samples
    per model set, written to ``fid.json`` and into summary.json + report.md. Returns (table, files)."""
    rd = RunDir(Path(run_dir))
    if not (rd.path / "config.yaml").is_file():
        raise FedgenError(f"{rd.path} is not a run directory (no config.yaml)")
    exp = Experiment.build(load_config(rd.path / "config.yaml"), progress=False)
    fid_of = getattr(exp.task, "fid", None)
    if fid_of is None:
        raise FedgenError(f"the {exp.cfg.task} task has no FID")
    global_state, personal = saved_models(exp, rd.path)
    if global_state is None and personal is None:
        raise FedgenError(f"{rd.path} holds no saved model (is the run finished?)")
    fid = fid_of(exp, global_state, personal, n, progress=progress)
    rd.write_json("fid.json", fid)
    if not (rd.path / "summary.json").is_file():
        return json.dumps({k: v for k, v in fid.items() if k != "per_client"}, indent=2), ["fid.json"]
    summary = {**rd.read_json("summary.json"), "fid": fid}
    rd.write_json("summary.json", summary)
    pers = rd.read_json("personalization.json") if (rd.path / "personalization.json").is_file() else None
    exp.task.report.write_report(rd.path, summary, rd.read_metrics(), pers)
    mark_not_private(rd.path, exp.cfg)
    return exp.task.report.result_table(summary), ["fid.json", "summary.json", "report.md"]
