"""GPU check at the paper's scale, from source (``PYTHONPATH=src``): no network, no extra packages.

1. pre-trains the paper-architecture GPT-2 (6 x 768 x 12, PTB vocabulary, context 128) briefly on the
   public corpus (``$FEDGEN_DATA/pretrain``, small enough to travel with the repo);
2. runs a few rounds of FedGen-Edge (clients one by one, and batched: ``batched_clients: on``,
   one backbone pass for all of a round's clients) and of FedAvg-full at the paper's federation
   (K=100, C=0.1, E=5, batch 32) on real PTB;
3. prints and writes (JSON) per algorithm: s/round, training tokens/s, peak GPU memory, PTB PPL.

Usage: ``PYTHONPATH=src python benchmarks/gpu_check.py --data DIR [--rounds 3] [--pretrain-steps 1500]``
(``benchmarks/gpu_check.sh`` wraps it). On a machine without CUDA it runs on the CPU (slow; use
``--small`` for a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from fedgen.config import config_from_dict  # noqa: E402
from fedgen.experiment.run import run_experiment  # noqa: E402

# (run name, algorithm, batched_clients)
RUNS = (
    ("fedgen", "fedgen", "off"),
    ("fedgen-batched", "fedgen", "on"),
    ("fedavg-full", "fedavg-full", "off"),
)


def config(args, algorithm: str, batched: str = "off") -> dict:
    small = args.small
    return {
        "name": "gpu-check",
        "seed": 0,
        "device": "auto",
        "batched_clients": batched,
        "data": {"dir": args.data, "num_clients": 10 if small else 100, "max_docs": 60 if small else None},
        "model": {
            "n_layer": 1 if small else 6,
            "n_embd": 32 if small else 768,
            "n_head": 2 if small else 12,
            "context": 32 if small else 128,
        },
        "lora": {"r": 8, "alpha": 16},
        "pretrain": {
            "steps": 20 if small else args.pretrain_steps,
            "batch_size": 64,
            "lr": 6e-4,
            "warmup_steps": 10,
        },
        "fl": {
            "rounds": args.rounds,
            "fraction": 0.1 if not small else 0.3,
            "local_epochs": 1 if small else 5,
            "batch_size": 32,
            "lr": 5e-4,
        },
        "algorithm": {"name": algorithm},
        "eval": {"every": args.rounds, "local_every": 10**6, "max_tokens": 20_000, "batch_size": 32},
        "personalize": {"enabled": False},
        "output": {"root": args.out, "keep_checkpoints": 1},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("FEDGEN_DATA", "data"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--out", default="runs/gpu-check")
    p.add_argument("--json", default=None, help="result file (default OUT/gpu_check.json)")
    p.add_argument("--small", action="store_true", help="tiny model and federation (smoke test)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "runs": {},
    }
    for name, alg, batched in RUNS:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        s = run_experiment(config_from_dict(config(args, alg, batched)), Path(args.out) / name, progress=True)
        rows = [json.loads(x) for x in (Path(args.out) / name / "metrics.jsonl").read_text().splitlines()]
        walls = [r["wall_seconds"] for r in rows if r["round"] > 0]
        per_round = (walls[-1] - walls[0]) / max(len(walls) - 1, 1) if len(walls) > 1 else walls[-1]
        ctx = config(args, alg)["model"]["context"]
        tokens = sum(sum(r["num_examples"]) for r in rows if r["round"] > 0) * ctx
        tokens *= config(args, alg)["fl"]["local_epochs"]
        result["runs"][name] = {
            "seconds_per_round": round(per_round, 3),
            "train_tokens_per_second": round(tokens / max(walls[-1] - (walls[0] - per_round), 1e-9), 1),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "test_ppl_initial": s["test_ppl_initial"],
            "test_ppl_final": s["test_ppl_final"],
            "trained_params": s["trained_params"],
            "upload_bytes_total": s["upload_bytes_total"],
            "wall_seconds": round(time.time() - t0, 1),
        }
        print(name, json.dumps(result["runs"][name]))
    out = Path(args.json or Path(args.out) / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
