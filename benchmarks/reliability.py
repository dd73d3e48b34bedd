"""Reliability under faults: the demo federation with half the sampled clients dropping out, 10% slow
devices past a deadline, and a fixed schedule of corrupt updates (NaN, wrong shape, x1e6 scaled),
run side by side with the same federation without faults. Prints and writes JSON: rounds completed,
updates rejected and why, skipped rounds, PTB test PPL clean vs faulty.

``--kill``: crash and resume instead (issue 21). On the tiny real-PTB config, for FedGen-Edge, Ditto
and FedPer in-process with DP off: one uninterrupted reference run (a plain ``fedgen run`` subprocess),
then K runs killed with SIGKILL (fault injection at the N-th file write, ``FEDGEN_FAULT_KILL_AT_WRITE``,
N spread over checkpoint, metrics, client-store and other writes; or a random kill -9 after a delay
from a seeded RNG, the resumed run possibly killed again), each resumed with ``fedgen run --resume``
to completion; the final adapters (global/, clients/, client_store/) are compared bit for bit with
the reference (``torch.equal``), and so are summary.json and metrics.jsonl (wall times aside). After
every kill, before resuming, every JSON / JSONL / safetensors file of the run dir is parsed and the
torn ones counted (a torn last line of metrics.jsonl, tolerated by design, counted apart). Writes
``benchmarks/results/reliability_kill.json``.

The faulty run keeps every defence on: the server's screening (NaN / shape), update-norm
clipping (``fl.clip_norm``: a finite but x1e6 update passes screening, clipping bounds its step)
and ``fl.min_clients = 1``. Usage (repository root)::

    FEDGEN_DATA=/path/to/data python benchmarks/reliability.py [--config configs/demo.yaml]
        [--rounds 6] [--clip-norm 1.0] [--out benchmarks/results/reliability.json]
    FEDGEN_DATA=/path/to/data python benchmarks/reliability.py --kill [--kills 10] [--jobs 2]
        [--kill-rounds 3] [--algorithms fedgen,ditto,fedper]
        [--kill-out benchmarks/results/reliability_kill.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from fedgen.config import load_config  # noqa: E402
from fedgen.experiment.run import run_experiment  # noqa: E402
from fedgen.fl.client import FitResult  # noqa: E402
from fedgen.runtime.simulate import InProcessRuntime  # noqa: E402
from fedgen.testing.configs import tiny_text_raw  # noqa: E402

# (round, position among the round's answers) -> how the update is spoiled; >= 3 of each kind
SCHEDULE = {
    (1, 0): "nan",
    (2, 0): "shape",
    (2, 1): "scaled",
    (3, 0): "nan",
    (3, 1): "scaled",
    (4, 0): "shape",
    (4, 1): "nan",
    (5, 0): "scaled",
    (6, 0): "shape",
}


class CorruptingRuntime:
    """Spoils the scheduled updates of an in-process runtime (a faulty or malicious device)."""

    def __init__(self, inner, schedule: dict[tuple[int, int], str]):
        self.inner, self.schedule, self.injected = inner, schedule, []

    def fit(self, state, client_ids, rnd, **kw):
        results = self.inner.fit(state, client_ids, rnd, **kw)
        out = []
        for i, r in enumerate(results):
            kind = self.schedule.get((rnd, i))
            if kind is not None:
                s = {k: v.clone() for k, v in r.state.items()}
                key = next(iter(s))
                if kind == "nan":
                    s[key].view(-1)[0] = float("nan")
                elif kind == "shape":
                    s[key] = torch.zeros(s[key].shape[0] + 1, *s[key].shape[1:])
                else:
                    s = {k: v * 1e6 for k, v in s.items()}
                r = FitResult(r.client_id, s, r.num_examples, r.metrics)
                self.injected.append({"round": rnd, "client": r.client_id, "kind": kind})
            out.append(r)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--out", default="benchmarks/results/reliability.json")
    p.add_argument("--runs", default="runs/bench-reliability")
    p.add_argument("--margin", type=float, default=0.10, help="allowed relative PPL loss vs the clean run")
    p.add_argument("--kill", action="store_true", help="crash/resume benchmark instead (see the docstring)")
    p.add_argument("--kills", type=int, default=10, help="--kill: kill points per algorithm")
    p.add_argument("--kill-rounds", type=int, default=3)
    p.add_argument("--algorithms", default="fedgen,ditto,fedper")
    p.add_argument(
        "--jobs", type=int, default=2, help="--kill: killed/resumed runs at a time (1 thread each)"
    )
    p.add_argument("--kill-seed", type=int, default=21, help="--kill: seed of the kill schedule")
    p.add_argument("--budget-s", type=float, default=1500, help="--kill: wall-time budget of the whole run")
    p.add_argument(
        "--tail-s", type=float, default=240, help="--kill: no case starts in the budget's last seconds"
    )
    p.add_argument("--kill-out", default="benchmarks/results/reliability_kill.json")
    p.add_argument("--kill-runs", default="runs/bench-reliability-kill")
    a = p.parse_args()
    if a.kill:
        kill_main(a)
        return
    quick = [f"fl.rounds={a.rounds}", f"eval.every={a.rounds}", f"eval.local_every={a.rounds}"]
    quick += ["personalize.enabled=false", f"output.root={a.runs}"]
    faults = [
        "devices.enabled=true",
        "devices.dropout=0.5",
        "devices.over_select=false",
        "devices.step_seconds=1.0",
        "devices.deadline_s=120",
        "devices.stragglers=drop",
        # 10% of the devices are 10x slower: ~14 local steps of 10 s miss a 120 s deadline
        "devices.tiers=[{share: 0.9, speed: 1.0, bandwidth_mbps: 20},"
        " {share: 0.1, speed: 0.1, bandwidth_mbps: 2}]",
        f"fl.clip_norm={a.clip_norm}",
    ]
    runs, injected = {}, []
    for name, extra in (("clean", []), ("faulty", faults)):
        cfg = load_config(a.config, quick + extra)
        holder = {}

        def make_runtime(exp, logic, holder=holder, name=name):
            inner = InProcessRuntime(logic, exp.data, exp.cfg.seed)
            holder["rt"] = CorruptingRuntime(inner, SCHEDULE if name == "faulty" else {})
            return holder["rt"]

        t0 = time.time()
        run_dir = Path(a.runs) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        s = run_experiment(cfg, run_dir, progress=False, make_runtime=make_runtime)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
        injected = holder["rt"].injected if name == "faulty" else injected
        runs[name] = {
            "rounds_completed": s["rounds"],
            "rounds_skipped": s["rounds_skipped"],
            "updates_rejected": s["updates_rejected"],
            "updates_aggregated": sum(len(r["clients"]) for r in rows),
            "dropped": sum(len(r.get("dropped", [])) for r in rows),
            "stragglers": sum(len(r.get("stragglers", [])) for r in rows),
            "test_ppl_initial": s["test_ppl_initial"],
            "test_ppl_final": s["test_ppl_final"],
            "wall_seconds": round(time.time() - t0, 1),
        }
        print(name, json.dumps(runs[name]))
    clean, faulty = runs["clean"]["test_ppl_final"], runs["faulty"]["test_ppl_final"]
    result = {
        "config": a.config,
        "rounds": a.rounds,
        "faults": faults,
        "injected": injected,
        "runs": runs,
        "ppl_ratio_faulty_over_clean": faulty / clean,
        "ppl_gain_kept": (runs["faulty"]["test_ppl_initial"] - faulty)
        / (runs["clean"]["test_ppl_initial"] - clean),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    ok = runs["faulty"]["rounds_completed"] == a.rounds and faulty <= clean * (1 + a.margin)
    result["margin"], result["within_margin"] = a.margin, ok
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(
        f"PTB test PPL clean {clean:.2f} vs faulty {faulty:.2f} (x{faulty / clean:.3f}; margin "
        f"{a.margin:.0%}: {'PASS' if ok else 'FAIL'}); written: {a.out}"
    )
    raise SystemExit(0 if ok else 1)


# ------------------------------------------------------------------------------ crash and resume (--kill)

FAULT_ENV = "FEDGEN_FAULT_KILL_AT_WRITE"
WRITE_LOG_ENV = "FEDGEN_BENCH_WRITE_LOG"
# The reference run: a plain `fedgen run` whose only addition is a log of the files it writes, in
# order, through fedgen.core.files (the writes FEDGEN_FAULT_KILL_AT_WRITE counts).
REFERENCE_BOOT = (
    "import os, sys\n"
    "import fedgen.core.files as f\n"
    "log, die = open(os.environ['" + WRITE_LOG_ENV + "'], 'a'), f._maybe_die\n"
    "def record(fd, data):\n"
    "    log.write(os.readlink(f'/proc/self/fd/{fd}') + '\\n'); log.flush(); die(fd, data)\n"
    "f._maybe_die = record\n"
    "from fedgen.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
VOLATILE = {"wall_seconds", "run_dir"}  # differ between any two runs, interrupted or not
FLOWER_NOTE = "not run: flwr[simulation] not installed (the Flower Simulation Engine needs Ray)"


def kill_config(root: Path, data_dir: str, algorithm: str, rounds: int) -> dict:
    """fedgen.testing.configs.tiny_text_raw, smaller: eval only at the end (500 tokens), 1 thread."""
    raw = tiny_text_raw(root, data_dir, threads=1, rounds=rounds)
    # FedPer needs a shared and a personal block: 2 layers for it (as tests/test_algorithms.py)
    raw["model"]["n_layer"] = 2 if algorithm == "fedper" else 1
    raw["eval"] = {"max_tokens": 500, "every": rounds, "local_every": rounds}
    return {**raw, "algorithm": {"name": algorithm}, "dp": {"mode": "off"}}


def write_category(rel: str) -> str:
    """Which kind of write a file written by a run is (the kill points are spread over these)."""
    if rel.startswith("checkpoints/") or rel == "state.json":
        return "checkpoint"
    if rel == "metrics.jsonl":
        return "metrics"
    if rel.startswith("client_store/"):
        return "client_store"
    return "other"


def read_write_log(log: Path, run_dir: Path) -> list[str]:
    """The run's writes in order, as paths relative to the run dir (a temp file named as its target)."""
    out, base = [], str(run_dir.resolve())
    for line in log.read_text().splitlines():
        path = Path(line)
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):  # atomic write: .NAME.<random>.tmp
            name = name[1:-4].rsplit(".", 1)[0]
        rel = str(path.parent / name)
        out.append(rel[len(base) + 1 :] if rel.startswith(base + "/") else rel)
    return out


def fault_points(writes: list[str], n: int) -> list[int]:
    """``n`` write numbers (1-based) spread evenly over the write categories, then within each."""
    by_cat: dict[str, list[int]] = {}
    for i, rel in enumerate(writes, 1):
        by_cat.setdefault(write_category(rel), []).append(i)
    cats = sorted(by_cat, key=lambda c: ["checkpoint", "metrics", "client_store", "other"].index(c))
    quota = {c: n // len(cats) + (j < n % len(cats)) for j, c in enumerate(cats)}
    points = []
    for c in cats:
        idx, q = by_cat[c], min(quota[c], len(by_cat[c]))
        points += [idx[round((j + 0.5) * len(idx) / q - 0.5)] for j in range(q)]
    return sorted(points)


def safetensors_ok(path: Path) -> bool:
    """A complete safetensors file: 8-byte header size, a JSON header, every tensor's bytes present."""
    data = path.read_bytes()
    if len(data) < 8:
        return False
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError:
        return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return len(data) == 8 + n + max(ends, default=0)


def scan_run_dir(run_dir: Path) -> dict:
    """Every JSON / JSONL / safetensors file of a run dir parsed: the torn ones, a torn last jsonl line
    (tolerated by design) apart, and the temporary files interrupted writes left behind."""
    out: dict = {"files": 0, "torn": [], "torn_last_line": [], "tmp_left": []}
    if not run_dir.is_dir():
        return out
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.name.endswith(".tmp"):
            out["tmp_left"].append(rel)
            continue
        if not p.is_file() or p.suffix not in (".json", ".jsonl", ".safetensors"):
            continue
        out["files"] += 1
        if p.suffix == ".safetensors":
            if not safetensors_ok(p):
                out["torn"].append(rel)
            continue
        text = p.read_text(errors="replace")
        if p.suffix == ".json":
            try:
                json.loads(text)
            except ValueError:
                out["torn"].append(rel)
            continue
        lines = text.splitlines()
        for i, line in enumerate(lines):
            try:
                json.loads(line)
            except ValueError:
                last = i == len(lines) - 1 and not text.endswith("\n")
                (out["torn_last_line"] if last else out["torn"]).append(rel)
                break
    return out


def final_tensors(run_dir: Path) -> dict:
    """The finished run's saved states: global/, clients/ (kept or personalized) and client_store/'s
    current versions, as {relative file: {tensor name: tensor}}."""
    from safetensors.torch import load_file

    files = [f for sub in ("global", "clients") for f in sorted((run_dir / sub).rglob("*.safetensors"))]
    files += [
        f for f in sorted((run_dir / "client_store").glob("client_*.safetensors")) if ".prev." not in f.name
    ]
    return {f.relative_to(run_dir).as_posix(): load_file(str(f)) for f in files}


def tensors_equal(a: dict, b: dict) -> list[str]:
    """The files (or file:tensor) whose tensors are not bit-identical; [] when all are."""
    diff = sorted(set(a) ^ set(b))
    for f in sorted(set(a) & set(b)):
        if a[f].keys() != b[f].keys():
            diff.append(f"{f}: tensor names differ")
            continue
        for k in a[f]:
            x, y = a[f][k], b[f][k]
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                diff.append(f"{f}:{k}")
    return diff


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def results_of(run_dir: Path) -> dict:
    """summary.json, metrics.jsonl and personalization.json without their wall times and paths."""
    out = {"summary": _strip(json.loads((run_dir / "summary.json").read_text()))}
    out["metrics"] = [_strip(json.loads(x)) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pers = run_dir / "personalization.json"
    out["personalization"] = _strip(json.loads(pers.read_text())) if pers.is_file() else None
    return out


def spawn(args: list[str], env: dict[str, str], log: Path) -> int:
    """``fedgen <args>`` in a child process forked from this one, which has imported torch, PEFT and
    fedgen already (saves ~15 s of imports per run on this machine); stdout/stderr to ``log``."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.pop(FAULT_ENV, None)
        os.environ.update(env)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from fedgen.cli import main as cli_main

        code = cli_main(args) or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class KillCase:
    """One kill point: a run killed once (fault at write N, or a random kill -9, maybe again during
    its resume), resumed until it completes, then compared with the reference."""

    def __init__(self, algo: str, i: int, cfg_file: Path, run_dir: Path, plan: dict, ref: Path):
        self.algo, self.i, self.cfg_file, self.run_dir, self.plan, self.ref = (
            algo,
            i,
            cfg_file,
            run_dir,
            plan,
            ref,
        )
        self.attempts: list[dict] = []
        self.log = run_dir.with_suffix(".log")
        self.failed: str | None = None
        self.t0 = 0.0
        self.result: dict = {}

    def next_attempt(self) -> tuple[list[str], dict[str, str], float | None] | None:
        """(fedgen args, extra env, kill delay) of the next process to start; None when done."""
        if self.failed or (self.attempts and self.attempts[-1]["exit"] == 0) or len(self.attempts) >= 6:
            return None
        n = len(self.attempts)
        env: dict[str, str] = {}
        if n == 0 and self.plan["kind"] == "fault":
            env[FAULT_ENV] = str(self.plan["write"])
        delays = self.plan.get("delays", [])
        delay = delays[n] if n < len(delays) else None
        if n == 0:
            args = ["run", "--config", str(self.cfg_file), "--out", str(self.run_dir), "--quiet"]
        elif (self.run_dir / "config.yaml").is_file():
            args = ["run", "--resume", str(self.run_dir), "--quiet"]
        else:  # killed before config.yaml existed: nothing to resume, start again in the same dir
            args = ["run", "--config", str(self.cfg_file), "--out", str(self.run_dir), "--quiet"]
        return args, env, delay

    def exited(self, att: dict, status: int, killed_by_us: bool) -> None:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        att["exit"] = -sig if sig else os.WEXITSTATUS(status)
        att["killed"] = sig == signal.SIGKILL
        att["by"] = ("random" if killed_by_us else "fault") if att["killed"] else None
        att["seconds"] = round(time.time() - att.pop("t0"), 1)
        self.attempts.append(att)
        if att["killed"]:
            att["scan"] = scan_run_dir(self.run_dir)
        elif att["exit"] != 0:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            self.failed = f"{' '.join(att['args'][:2])} exited {att['exit']}: {' | '.join(tail)}"

    def finish(self) -> None:
        kills = [a for a in self.attempts if a["killed"]]
        r: dict = {
            "case": self.i,
            "plan": {k: v for k, v in self.plan.items() if k != "delays"},
            "attempts": [
                {k: a.get(k) for k in ("args", "fault_at", "kill_delay", "exit", "by", "seconds")}
                for a in self.attempts
            ],
            "kills": len(kills),
            "torn": sorted({f for a in kills for f in a["scan"]["torn"]}),
            "torn_last_line": sum(len(a["scan"]["torn_last_line"]) for a in kills),
            "tmp_left": sorted({f for a in kills for f in a["scan"]["tmp_left"]}),
            "files_scanned": sum(a["scan"]["files"] for a in kills),
            "restarted_fresh": any("--config" in a["args"] for a in self.attempts[1:]),
            "seconds": round(time.time() - self.t0, 1),
        }
        if self.failed or not self.attempts or self.attempts[-1]["exit"] != 0:
            r["error"] = self.failed or "did not complete"
            r["adapters_identical"] = r["results_identical"] = False
        else:
            diff = tensors_equal(final_tensors(self.run_dir), final_tensors(self.ref))
            r["adapters_identical"], r["adapter_diffs"] = not diff, diff[:10]
            a, b = results_of(self.run_dir), results_of(self.ref)
            r["results_identical"] = a == b
            r["results_diffs"] = [k for k in a if a[k] != b[k]]
        r["bit_identical"] = r["adapters_identical"] and r["results_identical"]
        self.result = r


def run_cases(cases: list[KillCase], jobs: int, start_by: float) -> None:
    """Runs the cases' processes, ``jobs`` at a time, killing each at its planned delay; no case
    starts after ``start_by`` (time.time()): those are left out (the budget), and not counted."""
    pending, running = deque(cases), {}  # pid -> (case, attempt, deadline)

    def start(case: KillCase) -> bool:
        nxt = case.next_attempt()
        if nxt is None:
            case.finish()
            r = case.result
            print(
                f"  {case.algo} #{case.i:02d} {r['plan']['kind']:6s} {r['plan'].get('write_file', ''):34s} "
                f"kills {r['kills']} bit-identical {r['bit_identical']} torn {len(r['torn'])} "
                f"({r['seconds']} s){' ' + r['error'] if 'error' in r else ''}",
                flush=True,
            )
            return False
        args, env, delay = nxt
        att = {"args": args, "fault_at": env.get(FAULT_ENV), "kill_delay": delay, "t0": time.time()}
        pid = spawn(args, env, case.log)
        running[pid] = (case, att, None if delay is None else att["t0"] + delay)
        return True

    while running or (pending and time.time() < start_by):
        while len(running) < jobs and pending and time.time() < start_by:
            case = pending.popleft()
            case.t0 = time.time()
            start(case)
        pid, status = os.waitpid(-1, os.WNOHANG) if running else (0, 0)
        if pid:
            case, att, deadline = running.pop(pid)
            case.exited(att, status, att.pop("sent_kill", False))
            start(case)
            continue
        now = time.time()
        for pid, (_case, att, deadline) in running.items():
            if deadline is not None and now >= deadline and not att.get("sent_kill"):
                os.kill(pid, signal.SIGKILL)
                att["sent_kill"] = True
        time.sleep(0.05)


def kill_main(a) -> None:
    t_start = time.time()
    torch.set_num_threads(1)  # this process forks the runs: no OpenMP worker threads before a fork
    import fedgen.cli  # noqa: F401  (imported once here, inherited by every forked run)
    import fedgen.commands.run  # noqa: F401
    import fedgen.tasks.text.task  # noqa: F401

    data_dir = os.environ.get("FEDGEN_DATA")
    if not data_dir:
        raise SystemExit("--kill needs FEDGEN_DATA (the real Penn Treebank)")
    root = Path(a.kill_runs).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"kill-{stamp}"
    base.mkdir(parents=True)
    import yaml

    env_sub = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env_sub.pop(FAULT_ENV, None)
    algos = [x for x in a.algorithms.split(",") if x]
    cfg_files = {}
    for algo in algos:
        cfg_files[algo] = base / f"{algo}.yaml"
        cfg_files[algo].write_text(yaml.safe_dump(kill_config(root, data_dir, algo, a.kill_rounds)))
    t = time.time()  # the tiny backbones (1 layer; 2 for FedPer): pre-trained once, cached under the root
    for cfg_file in {str(kill_config(root, data_dir, x, 1)["model"]): cfg_files[x] for x in algos}.values():
        cmd = [sys.executable, "-m", "fedgen.cli", "pretrain", "--config", str(cfg_file), "--quiet"]
        subprocess.run(cmd, env=env_sub, check=True)
    pretrain_s = round(time.time() - t, 1)
    rng = random.Random(a.kill_seed)
    report: dict = {"algorithms": {}}
    refs = {algo: base / algo / "ref" for algo in algos}
    procs, ref_s = {}, {}
    for algo in algos:  # the references, `jobs` at a time
        while len(procs) >= a.jobs:
            done = [x for x, (pr, _) in procs.items() if pr.poll() is not None]
            for x in done:
                ref_s[x] = time.time() - procs.pop(x)[1]
            time.sleep(0.2)
        refs[algo].parent.mkdir()
        cmd = [sys.executable, "-c", REFERENCE_BOOT, "run", "--config", str(cfg_files[algo])]
        env = {**env_sub, WRITE_LOG_ENV: str(base / algo / "ref.writes")}
        cmd += ["--out", str(refs[algo]), "--quiet"]
        procs[algo] = (subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL), time.time())
    for algo, (pr, t0) in procs.items():
        if pr.wait() != 0:
            raise SystemExit(f"the {algo} reference run failed")
        ref_s[algo] = time.time() - t0
    per_algo: dict[str, list[KillCase]] = {}
    meta = {}
    for algo in algos:
        writes = read_write_log(base / algo / "ref.writes", refs[algo])
        n_fault = (a.kills + 1) // 2
        points = fault_points(writes, n_fault)
        # spread order: the categories in turn, so a case list cut short by the budget still covers each
        by_cat: dict[str, list[int]] = {}
        for n in points:
            by_cat.setdefault(write_category(writes[n - 1]), []).append(n)
        order = [n for j in range(n_fault) for c in sorted(by_cat) for n in by_cat[c][j : j + 1]]
        span = max(
            ref_s[algo] - 12.0, 5.0
        )  # the run without the interpreter's imports (forked runs skip them)
        faults = [{"kind": "fault", "write": n, "write_file": writes[n - 1]} for n in order]
        randoms = []
        for _ in range(a.kills - len(points)):
            delays = [round(rng.uniform(0.5, span), 2)]
            if rng.random() < 0.5:  # the resumed run is killed again
                delays.append(round(rng.uniform(0.5, span), 2))
            randoms.append({"kind": "random", "delays": delays, "kill_delays": delays})
        plans = [p for pair in zip(faults, randoms, strict=False) for p in pair]
        plans += faults[len(randoms) :] + randoms[len(faults) :]
        per_algo[algo] = [
            KillCase(algo, i, cfg_files[algo], base / algo / f"k{i:02d}", plan, refs[algo])
            for i, plan in enumerate(plans, 1)
        ]
        cats: dict[str, int] = {}
        for w in writes:
            cats[write_category(w)] = cats.get(write_category(w), 0) + 1
        meta[algo] = {"writes": len(writes), "cats": cats}
        print(f"{algo}: reference {ref_s[algo]:.1f} s, {len(writes)} writes {cats}", flush=True)
    queue = [c for i in range(a.kills) for algo in algos for c in per_algo[algo][i : i + 1]]
    run_cases(queue, a.jobs, t_start + a.budget_s - a.tail_s)
    for algo in algos:
        rs = [c.result for c in per_algo[algo] if c.result]
        report["algorithms"][algo] = {
            "K": sum(r["kills"] > 0 for r in rs),  # kill points: cases killed at least once
            "K_planned": a.kills,
            "cases_run": len(rs),
            "cases_not_killed": sum(r["kills"] == 0 for r in rs),  # random delay past the run's end
            "bit_identical": sum(r["bit_identical"] for r in rs if r["kills"]),
            "bit_identical_all_cases": sum(r["bit_identical"] for r in rs),
            "adapters_identical": sum(r["adapters_identical"] for r in rs if r["kills"]),
            "results_identical": sum(r["results_identical"] for r in rs if r["kills"]),
            "fault_kills": sum(a2["by"] == "fault" for r in rs for a2 in r["attempts"]),
            "random_kills": sum(a2["by"] == "random" for r in rs for a2 in r["attempts"]),
            "random_kills_missed": sum(
                len(r["plan"].get("kill_delays", [])) - sum(a2["by"] == "random" for a2 in r["attempts"])
                for r in rs
                if r["plan"]["kind"] == "random"
            ),
            "resumes": sum("--resume" in a2["args"] for r in rs for a2 in r["attempts"]),
            "restarted_fresh": sum(r["restarted_fresh"] for r in rs),
            "torn_files": sum(len(r["torn"]) for r in rs),
            "torn_last_line_metrics": sum(r["torn_last_line"] for r in rs),
            "tmp_files_left": sum(len(r["tmp_left"]) for r in rs),
            "files_scanned": sum(r["files_scanned"] for r in rs),
            "errors": [f"#{r['case']}: {r['error']}" for r in rs if "error" in r],
            "reference_seconds": round(ref_s[algo], 1),
            "case_seconds_total": round(sum(r["seconds"] for r in rs), 1),
            "writes_per_run": meta[algo]["writes"],
            "writes_by_category": meta[algo]["cats"],
            "cases": rs,
        }
    report["runtimes"] = {
        "in-process": "run",
        "flower-simulation": FLOWER_NOTE,
    }
    report.update(
        {
            "benchmark": "reliability-kill",
            "config": kill_config(root, "$FEDGEN_DATA", "<algorithm>", a.kill_rounds),
            "kills_per_algorithm": a.kills,
            "jobs": a.jobs,
            "budget_seconds": a.budget_s,
            "processes": "kill points: children forked from the benchmark process after it imported torch,"
            " PEFT and fedgen, each running fedgen.cli.main(['run', ...]) (no 15 s of imports per run);"
            " references: plain `python -c` subprocesses running fedgen.cli.main (plus a write log)",
            "kill_seed": a.kill_seed,
            "pretrain_seconds": pretrain_s,
            "wall_seconds": round(time.time() - t_start, 1),
            "torch": torch.__version__,
            "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    Path(a.kill_out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.kill_out).write_text(json.dumps(report, indent=2))
    print(
        "\n| algorithm | K | bit-identical | adapters identical | torn files | torn last line | tmp left"
        " | case s (sum) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for algo, r in report["algorithms"].items():
        print(
            f"| {algo} | {r['K']} | {r['bit_identical']}/{r['K']} | {r['adapters_identical']}/{r['K']} | "
            f"{r['torn_files']} | {r['torn_last_line_metrics']} | {r['tmp_files_left']} | "
            f"{r['case_seconds_total']} |"
        )
    print(f"Flower simulation: {FLOWER_NOTE}")
    print(f"wall time {report['wall_seconds']} s; written: {a.kill_out}")


if __name__ == "__main__":
    main()
