"""Reliability under faults: the demo federation with half the sampled clients dropping out, 10% slow
devices past a deadline, and a fixed schedule of corrupt updates (NaN, wrong shape, x1e6 scaled),
run side by side with the same federation without faults. Prints and writes JSON: rounds completed,
updates rejected and why, skipped rounds, PTB test PPL clean vs faulty.

The faulty run keeps every defence on: the server's screening (NaN / shape), update-norm
clipping (``fl.clip_norm``: a finite but x1e6 update passes screening, clipping bounds its step)
and ``fl.min_clients = 1``. Usage (repository root)::

    FEDGEN_DATA=/path/to/data python benchmarks/reliability.py [--config configs/demo.yaml]
        [--rounds 6] [--clip-norm 1.0] [--out benchmarks/results/reliability.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from fedgen.config import load_config  # noqa: E402
from fedgen.experiment.run import run_experiment  # noqa: E402
from fedgen.fl.client import FitResult  # noqa: E402
from fedgen.runtime.simulate import InProcessRuntime  # noqa: E402

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
    a = p.parse_args()
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


if __name__ == "__main__":
    main()
