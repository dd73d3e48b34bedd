"""Overhead of the federated machinery over a bare PyTorch loop doing the same local training work.

Two variants run the *same* work: same backbone, same LoRA adapter, same sampled clients, same
examples, same per-client seeds (so the same batch order and dropout masks), same number of
optimizer steps, and the same n_k-weighted average at the end of every round.

(A) federated  ``fedgen.fl.server.federate`` over ``fedgen.runtime.simulate.InProcessRuntime`` with
               the client logic ``fedgen run`` uses for FedGen-Edge (``exp.spec.client_logic``):
               client sampling, per client ``Client.fit`` (adapter load with key/shape checks,
               ``local_train`` incl. its per-step ``loss.item()``, adapter extraction), and per round
               safetensors serialization of the global adapter and of every update (byte
               accounting), update validation (keys/shapes/dtypes/finite) and FedAvg. No evaluation
               and no checkpointing (``on_round_end=None``): those are not local training work.
(B) bare       a plain torch loop written here: ``copy_`` the global adapter into the LoRA
               parameters, AdamW, randperm mini-batches, cross-entropy, backward, gradient clipping,
               step; then a float64 n_k-weighted mean of the clients' adapter tensors.

The final global adapters of (A) and (B) must agree (max abs diff <= 1e-6; in practice they are
bit-identical), which shows that the same work was timed. Measurements are interleaved
(A, B, A, B, ...) after one untimed warm-up of each; the headline is median(A) / median(B).

Run from the repository root::

    FEDGEN_DATA=/path/to/data python benchmarks/overhead.py [--config C] [--set k=v ...]
        [--rounds 2] [--repeats 3] [--threads 2] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import os

# As fedgen/__init__.py does: spin-waiting OpenMP threads collapse when another process shares the
# cores. It must be set before torch is first imported, and torch is imported before fedgen here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fedgen.config import Config, clients_per_round, load_config  # noqa: E402
from fedgen.core.seeding import derive_seed  # noqa: E402
from fedgen.experiment.build import Experiment  # noqa: E402
from fedgen.experiment.registry import make_task  # noqa: E402
from fedgen.fl.server import federate, sample_clients  # noqa: E402
from fedgen.runtime.simulate import InProcessRuntime  # noqa: E402

GOAL = 1.03
TOLERANCE = 1e-6
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "overhead.json"

State = dict[str, torch.Tensor]  # an adapter: exchange key -> tensor


# ------------------------------------------------------------------------------ (A) federated


class _CountingRuntime(InProcessRuntime):
    """InProcessRuntime that also adds up the optimizer steps (used for the untimed warm-up only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0

    def fit(self, state, client_ids, rnd):
        results = super().fit(state, client_ids, rnd)
        self.steps += sum(int(r.metrics["steps"]) for r in results)
        return results


def run_federated(exp: Experiment, init: State, rounds: int, runtime: Any = None) -> State:
    cfg = exp.cfg
    if runtime is None:
        runtime = InProcessRuntime(exp.client_logic(), exp.data, cfg.seed)
    return federate(
        runtime,
        init,
        num_clients=cfg.data.num_clients,
        rounds=rounds,
        fraction=cfg.fl.fraction,
        seed=cfg.seed,
    )


# ------------------------------------------------------------------------------ (B) bare torch


def lora_param_map(model: torch.nn.Module, state: State) -> OrderedDict[str, torch.nn.Parameter]:
    """Adapter-state key -> LoRA parameter (PEFT drops the adapter name '.default' from state keys).

    Sorted by key, the order of the exchanged adapter state (and of the parameters the federated
    client hands to AdamW and ``clip_grad_norm_``; for fewer than 10 layers this is also
    ``named_parameters()`` order).
    """
    named = {name.replace(".default.", "."): p for name, p in model.named_parameters() if "lora_" in name}
    out = OrderedDict((k, named[k]) for k in sorted(named))
    if set(out) != set(state):
        raise SystemExit(
            f"overhead: LoRA parameter names {sorted(out)[:2]} do not match adapter keys {sorted(state)[:2]}"
        )
    return out


def run_bare(exp: Experiment, init: State, rounds: int) -> tuple[State, int]:
    """The same rounds as :func:`run_federated`, as a plain torch loop. Returns (final adapter, steps)."""
    cfg, f = exp.cfg, exp.cfg.fl
    model = exp.peft_model
    pmap = lora_param_map(model, init)
    params = list(pmap.values())
    glob = {k: v.clone() for k, v in init.items()}
    steps = 0
    for rnd in range(1, rounds + 1):
        updates, weights = [], []
        for k in sample_clients(cfg.data.num_clients, f.fraction, cfg.seed, rnd):
            examples = exp.data[k].train
            with torch.no_grad():
                for key, p in pmap.items():
                    p.copy_(glob[key])
            seed = derive_seed(cfg.seed, "fit", rnd, k)
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW(params, lr=f.lr, weight_decay=f.weight_decay)
            model.train()
            for _ in range(f.local_epochs):
                perm = torch.randperm(len(examples), generator=generator)
                for i in range(0, len(perm), f.batch_size):
                    batch = examples[perm[i : i + f.batch_size]]
                    logits = model(input_ids=batch[:, :-1]).logits
                    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if f.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, f.max_grad_norm)
                    opt.step()
                    steps += 1
            updates.append({key: p.detach().clone() for key, p in pmap.items()})
            weights.append(float(len(examples)))
        total = sum(weights)
        new = {}
        for key, ref in glob.items():
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for w, u in zip(weights, updates, strict=True):
                acc += w * u[key].double()
            new[key] = (acc / total).to(ref.dtype)
        glob = new
    return glob, steps


# ------------------------------------------------------------------------------ helpers


def expected_steps(exp: Experiment, rounds: int) -> int:
    f, cfg = exp.cfg.fl, exp.cfg
    return sum(
        f.local_epochs * math.ceil(len(exp.data[k].train) / f.batch_size)
        for rnd in range(1, rounds + 1)
        for k in sample_clients(cfg.data.num_clients, f.fraction, cfg.seed, rnd)
    )


def max_abs_diff(a: State, b: State) -> float:
    if set(a) != set(b):
        raise SystemExit("overhead: federated and bare adapters have different keys")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def timed(fn, *args) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info(threads: int, load_start: float | None) -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "requested_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        # 1-minute load average before the run and at its end (the benchmark itself adds ~threads):
        # well above that at the end means other processes competed for the cores.
        "loadavg_1m_start": load_start,
        "loadavg_1m_end": _loadavg(),
    }


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML (default: demo)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    # 2 rounds (not 3): with 3, the demo config took 10.6 min on a shared 2-core machine (8 runs of
    # 222 steps at ~0.35 s/step), over the ~5-8 min budget. The ratio does not depend on it much:
    # the federated machinery's cost is per round and per client, like the training work.
    ap.add_argument("--rounds", type=int, default=2, help="federated rounds per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="timed (A, B) pairs after one warm-up each")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.threads < 1:
        ap.error("--rounds, --repeats and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    load_start = _loadavg()
    cfg: Config = load_config(args.config, [*args.set, f"threads={args.threads}"])
    torch.set_num_threads(args.threads)

    task = make_task(cfg)
    bb = task.backbone_path()
    if not task.backbone_ready(bb):
        print(f"No cached backbone for this config: pretraining one into {bb} (one-off, not timed)")
    t_build = time.perf_counter()
    exp = Experiment.build(cfg, progress=False)
    t_build = time.perf_counter() - t_build
    if exp.spec.name != "fedgen":
        raise SystemExit(f"overhead: benchmarks algorithm 'fedgen' (LoRA), not {exp.spec.name!r}")
    init = exp.init  # round-0 global adapter (PEFT init for the run's seed)
    m = clients_per_round(cfg.fl.fraction, cfg.data.num_clients)
    n_steps = expected_steps(exp, args.rounds)
    print(
        f"built experiment '{cfg.name}' in {t_build:.1f}s: K={cfg.data.num_clients}, {m} clients/round, "
        f"{args.rounds} rounds, {n_steps} optimizer steps per variant, {torch.get_num_threads()} threads"
    )

    # Untimed warm-up of each variant; it also checks step counts and equivalence.
    counter = _CountingRuntime(exp.client_logic(), exp.data, cfg.seed)
    fed_ref = run_federated(exp, init, args.rounds, counter)
    bare_ref, bare_steps = run_bare(exp, init, args.rounds)
    if not counter.steps == bare_steps == n_steps:
        raise SystemExit(
            f"overhead: step counts differ: federated {counter.steps}, bare {bare_steps}, expected {n_steps}"
        )
    diffs = [max_abs_diff(fed_ref, bare_ref)]

    fed_s: list[float] = []
    bare_s: list[float] = []
    for i in range(args.repeats):
        ta, fed = timed(run_federated, exp, init, args.rounds)
        tb, (bare, steps) = timed(run_bare, exp, init, args.rounds)
        assert steps == n_steps
        diffs += [max_abs_diff(fed, bare), max_abs_diff(fed, fed_ref)]
        fed_s.append(ta)
        bare_s.append(tb)
        print(f"  repeat {i + 1}/{args.repeats}: federated {ta:7.3f}s  bare {tb:7.3f}s  ratio {ta / tb:.4f}")

    diff = max(diffs)
    med_a, med_b = statistics.median(fed_s), statistics.median(bare_s)
    ratio = med_a / med_b
    result = {
        "benchmark": "overhead",
        "config": str(args.config),
        "overrides": list(args.set),
        "config_digest": cfg.digest(),
        "rounds": args.rounds,
        "clients_per_round": m,
        "local_epochs": cfg.fl.local_epochs,
        "batch_size": cfg.fl.batch_size,
        "steps": n_steps,
        "threads": args.threads,
        "repeats": args.repeats,
        "fed_seconds": fed_s,
        "bare_seconds": bare_s,
        "per_repeat_ratio": [a / b for a, b in zip(fed_s, bare_s, strict=True)],
        "median_fed": med_a,
        "median_bare": med_b,
        "ratio": ratio,
        "goal": GOAL,
        "max_abs_diff": diff,
        "torch": torch.__version__,
        "machine": machine_info(args.threads, load_start),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(f"{'variant':<12}{'median s':>10}{'min s':>10}{'max s':>10}{'s/step':>10}")
    for name, xs in (("federated", fed_s), ("bare", bare_s)):
        med = statistics.median(xs)
        print(f"{name:<12}{med:>10.3f}{min(xs):>10.3f}{max(xs):>10.3f}{med / n_steps:>10.4f}")
    verdict = "OK" if ratio <= GOAL else "ABOVE GOAL"
    print(f"ratio median(fed)/median(bare) = {ratio:.4f}  (goal <= {GOAL}: {verdict})")
    print(f"max |fed - bare| over final adapters = {diff:.3g}  (tolerance {TOLERANCE})")
    print(f"wrote {out}")
    if diff > TOLERANCE:
        raise SystemExit(f"overhead: federated and bare results differ by {diff:.3g} > {TOLERANCE}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
