"""Seconds per round of the same federated work on the in-process runtime and on Flower.

The same config, sampled clients, seeds and local steps run (A) in-process
(:class:`fedgen.runtime.simulate.InProcessRuntime`) and (B) on a Flower deployment over loopback
(:class:`fedgen.deploy.local.Loopback`: SuperLink + one SuperNode per client, TLS,
SuperNode auth), optionally (C) on Flower's Simulation Engine (``--sim``). Per round we time
``runtime.fit`` (send the global state, every sampled client trains, replies back), which is what
the runtime changes; evaluation and checkpoints are the same code in every runtime and are left
out. For (B)/(C) this is ``flower_fit_seconds`` from metrics.jsonl (``FlowerRuntime.fit``); the
whole run's wall time and the federation's start-up are reported beside it. The final global
adapters must be bit-identical, which shows that the same work was timed.

Run from the repository root::

    FEDGEN_DATA=/path/to/data python benchmarks/runtimes.py [--clients 3] [--rounds 2] [--sim]
        [--set k=v ...] [--out benchmarks/results/runtimes.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from fedgen.config import apply_overrides, config_from_dict  # noqa: E402
from fedgen.experiment.run import run_experiment  # noqa: E402
from fedgen.experiment.rundir import read_state  # noqa: E402
from fedgen.runtime.simulate import InProcessRuntime  # noqa: E402


def tiny(root: Path, data: str, clients: int, rounds: int) -> dict:
    """The tests' tiny real-PTB config (1-layer d=64 backbone), one client per SuperNode."""
    return {
        "name": "bench-runtimes",
        "seed": 0,
        "threads": 1,
        "data": {"dir": data, "num_clients": clients, "max_docs": 120, "num_topics": 4, "lda_max_iter": 5},
        "model": {"n_layer": 1, "n_embd": 64, "n_head": 2, "context": 32},
        "lora": {"r": 4, "alpha": 8},
        "pretrain": {"steps": 120, "batch_size": 32, "lr": 0.003, "warmup_steps": 10},
        "fl": {"rounds": rounds, "fraction": 0.67, "local_epochs": 1, "batch_size": 16, "lr": 0.01},
        "eval": {"max_tokens": 2000, "local_every": 1000},
        "personalize": {"enabled": False},
        "output": {"root": str(root), "keep_checkpoints": 1},
        "flower": {"round_timeout": 300, "wait_nodes": 120},
    }


class Timed:
    """Wraps a runtime; records the seconds of each ``fit``."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, []

    def fit(self, state, client_ids, rnd):
        t0 = time.perf_counter()
        out = self.inner.fit(state, client_ids, rnd)
        self.seconds.append(time.perf_counter() - t0)
        return out


def fit_seconds(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["flower_fit_seconds"] for r in rows if r["round"] > 0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sim", action="store_true", help="also Flower's Simulation Engine (needs Ray)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--root", help="output root (default: a temporary directory)")
    p.add_argument("--out", default="benchmarks/results/runtimes.json")
    a = p.parse_args()
    from fedgen.data.ptb import data_root
    from fedgen.deploy.launch import run_deploy, run_sim, settings_for
    from fedgen.deploy.local import CONNECTION, Loopback

    root = Path(a.root or tempfile.mkdtemp(prefix="fedgen-bench-runtimes-"))
    cfg = config_from_dict(apply_overrides(tiny(root, str(data_root(None)), a.clients, a.rounds), a.set))
    out: dict = {"config": cfg.to_dict(), "python": sys.version.split()[0], "torch": torch.__version__}

    timed: list[Timed] = []

    def in_process(exp, logic):
        timed.append(Timed(InProcessRuntime(logic, exp.data, exp.cfg.seed)))
        return timed[-1]

    t0 = time.perf_counter()
    run_experiment(cfg, root / "in-process", progress=False, make_runtime=in_process)
    out["in_process"] = {"fit_seconds": timed[0].seconds, "wall_s": time.perf_counter() - t0}
    ref = read_state(root / "in-process" / "global")

    t0 = time.perf_counter()
    with Loopback(root / "loopback", cfg.data.num_clients) as fed:
        up = time.perf_counter() - t0
        os.environ.update(fed.env)
        t1 = time.perf_counter()
        run_deploy(settings_for(cfg, root / "deploy"), root / "app", CONNECTION, timeout=1800)
        out["flower_deploy"] = {
            "fit_seconds": fit_seconds(root / "deploy"),
            "wall_s": time.perf_counter() - t1,
            "federation_start_s": up,
        }
    runs = {"flower_deploy": root / "deploy"}
    if a.sim:
        t0 = time.perf_counter()
        run_sim(settings_for(cfg, root / "sim"), cfg.data.num_clients)
        out["flower_sim"] = {"fit_seconds": fit_seconds(root / "sim"), "wall_s": time.perf_counter() - t0}
        runs["flower_sim"] = root / "sim"

    base = statistics.median(out["in_process"]["fit_seconds"])
    out["in_process"]["s_per_round"] = base
    for name, run_dir in runs.items():
        st = read_state(run_dir / "global")
        out[name]["bit_identical_to_in_process"] = all(torch.equal(st[k], ref[k]) for k in ref)
        out[name]["s_per_round"] = statistics.median(out[name]["fit_seconds"])
        out[name]["ratio_to_in_process"] = out[name]["s_per_round"] / base
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    for name in ("in_process", *runs):
        r = out[name]
        print(
            f"{name:14s} {r['s_per_round']:7.2f} s/round  "
            f"x{r['s_per_round'] / base:5.2f}  wall {r['wall_s']:.1f} s"
        )
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
