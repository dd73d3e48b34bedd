"""Client-steps per second of a round's local training: batched multi-client vs one client at a time.

The same clients, starting adapter, data, seeds and local steps run through
:class:`fedgen.runtime.simulate.InProcessRuntime` twice per repeat: one by one (``Client.fit`` per
client) and batched (``fit_many``: one backbone pass per step for every client, see
:mod:`fedgen.fl.batched`). Clients hold unequal numbers of training windows, so they have
different numbers of batches, a partial last batch, and drop out of the batched pass at different
steps. Printed side by side: client-steps/s of each, their ratio (batched / sequential) and the max
|diff| of the resulting adapters (fp32 on CPU: float rounding only; CUDA trains under bf16 autocast).
Dropout is switched off in the backbone so both see the same computation.

Backbones: ``--backbone tiny`` (a random word-level GPT-2 over PTB's vocabulary: ``--layers``,
``--embd``, ``--heads``) or ``--backbone DIR`` (any Hugging Face causal-LM directory with its
tokenizer, e.g. SmolLM2-135M's). Data: the start of PTB train ($FEDGEN_DATA or ``--data``); without
PTB, ``--random-data`` uses random tokens (tiny backbone only). Run from the repository root::

    FEDGEN_DATA=/path/to/data python benchmarks/multiclient.py [--clients 4] [--examples 48]
        [--batch-size 8] [--epochs 1] [--device auto|cpu|cuda] [--repeats 3]
        [--out benchmarks/results/multiclient.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fedgen.core.device import resolve  # noqa: E402
from fedgen.fl.algorithms import FedAvgClient  # noqa: E402
from fedgen.fl.client import Client, LocalTrainConfig  # noqa: E402
from fedgen.models.lora import add_lora, init_adapter  # noqa: E402
from fedgen.models.params import ParamSet  # noqa: E402
from fedgen.runtime.simulate import InProcessRuntime  # noqa: E402
from fedgen.tasks.base import ClientData
from fedgen.tasks.text.lm import HFCodec, LMObjective, WordCodec  # noqa: E402


def backbone(a) -> tuple[nn.Module, object, int | None]:
    """(frozen model, codec or None, vocabulary size) for ``--backbone``."""
    if a.backbone == "tiny":
        from fedgen.models.gpt import build_gpt, gpt2_config

        vocab = None if a.random_data else _ptb(a).vocab
        size = 10_000 if vocab is None else len(vocab)
        cfg = gpt2_config(size, a.layers, a.embd, a.heads, a.context, dropout=0.0)
        return build_gpt(cfg, 0), (None if vocab is None else WordCodec(vocab)), size
    from fedgen.models.causal_lm import load_causal_lm

    model, tokenizer, _ = load_causal_lm(a.backbone)
    for m in model.modules():  # dropout off: both variants then compute the same thing
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model, HFCodec(tokenizer), None


def _ptb(a):
    from fedgen.data.ptb import load_ptb

    return load_ptb(a.data)


def client_windows(a, codec, vocab_size: int | None) -> list[torch.Tensor]:
    """Client i gets ``examples * (1 - i / (2 * clients))`` consecutive windows of PTB train."""
    sizes = [max(1, round(a.examples * (1 - i / (2 * a.clients)))) for i in range(a.clients)]
    need = sum(sizes)
    lm = LMObjective(codec, a.context)
    if codec is None:
        g = torch.Generator().manual_seed(0)
        windows = torch.randint(0, vocab_size, (need, a.context + 1), generator=g)
    else:
        train = _ptb(a).train
        n = 0
        while True:  # enough sentences for `need` windows
            n = max(2 * n, 200)
            windows = lm.examples(lm.stream(train[:n]))
            if len(windows) >= need or n >= len(train):
                break
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [windows[s : s + k] for s, k in zip(starts, sizes, strict=True)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny", help="tiny | a Hugging Face causal-LM directory")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--context", type=int, default=32)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--examples", type=int, default=48, help="training windows of the largest client")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default=None, help="data root (default: $FEDGEN_DATA or ./data)")
    p.add_argument("--random-data", action="store_true", help="random tokens instead of PTB (tiny only)")
    p.add_argument("--out", default="benchmarks/results/multiclient.json")
    a = p.parse_args()
    if a.random_data and a.backbone != "tiny":
        p.error("--random-data needs --backbone tiny (a tokenizer's vocabulary is not ours to draw)")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve(a.device)
    model, codec, vocab_size = backbone(a)
    model = add_lora(model, a.r, 2.0 * a.r, ["q_proj", "v_proj"])
    init_adapter(model, 0)
    model.to(device)
    params = ParamSet(model, "lora")
    params.mark_trainable()
    train = LocalTrainConfig(a.epochs, a.batch_size, lr=5e-4, max_grad_norm=1.0)
    client = Client(LMObjective(codec, a.context), params, train)
    data = {k: ClientData(k, w, None) for k, w in enumerate(client_windows(a, codec, vocab_size))}
    state, ids = params.state(), list(data)
    logic = FedAvgClient(client)
    runtimes = {
        "sequential": InProcessRuntime(logic, data, seed=0),
        "batched": InProcessRuntime(logic, data, seed=0, batched=True),
    }
    assert runtimes["batched"].batched, "this setup cannot be batched"
    seconds: dict[str, list[float]] = {name: [] for name in runtimes}
    results = {}
    for rnd in range(a.repeats + 1):  # round 0: warm-up, untimed
        for name, rt in runtimes.items():
            t0 = time.perf_counter()
            results[name] = rt.fit(state, ids, rnd)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rnd > 0:
                seconds[name].append(time.perf_counter() - t0)
    steps = [r.metrics["steps"] for r in results["sequential"]]
    assert steps == [r.metrics["steps"] for r in results["batched"]], "unequal work"
    diff = max(
        (b.state[k] - s.state[k]).abs().max().item()
        for s, b in zip(results["sequential"], results["batched"], strict=True)
        for k in s.state
    )
    rate = {name: sum(steps) / statistics.median(s) for name, s in seconds.items()}
    out = {
        "benchmark": "multiclient",
        "backbone": a.backbone,
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "client_examples": [len(d.train) for d in data.values()],
        "client_steps": steps,
        "seconds": seconds,
        "client_steps_per_second": rate,
        "ratio_batched_to_sequential": rate["batched"] / rate["sequential"],
        "max_abs_diff": diff,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(f"{'':12s}{'client-steps/s':>16s}{'median s':>10s}")
    for name in runtimes:
        print(f"{name:12s}{rate[name]:16.2f}{statistics.median(seconds[name]):10.3f}")
    print(f"batched / sequential x{out['ratio_batched_to_sequential']:.2f}   max |diff| {diff:.2e}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
