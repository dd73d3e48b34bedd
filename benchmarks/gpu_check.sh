#!/usr/bin/env bash
# The prepared GPU check (issue 9): run from the repository root on a machine with torch, transformers
# and peft (no network, no install): PYTHONPATH=src, real PTB + the public corpus under $FEDGEN_DATA
# (default ./data). About 5 minutes on one H200; prints s/round, tokens/s, peak memory, PPL.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
python benchmarks/gpu_check.py --data "${FEDGEN_DATA:-data}" --rounds "${ROUNDS:-3}" \
  --pretrain-steps "${PRETRAIN_STEPS:-1500}" --out "${OUT:-runs}/gpu-check" "$@"
# batched vs one-by-one local training of 10 clients on the paper-size GPT-2 (random weights)
python benchmarks/multiclient.py --device cuda --layers 6 --embd 768 --heads 12 --context 128 \
  --clients 10 --examples 96 --batch-size 32 --epochs 2 --out "${OUT:-runs}/gpu-check/multiclient.json"
