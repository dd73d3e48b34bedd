"""The overhead benchmark runs end to end on a tiny config and writes a well-formed result.

Timings are not asserted here (they belong to the benchmark itself, not to tests); only that
the federated and bare variants did the same work (equal step counts, equal final adapters).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "model.context=16",
    "data.num_clients=4",
    "data.max_docs=40",
    "data.num_topics=3",
    "data.lda_max_iter=3",
    "pretrain.steps=5",
    "pretrain.warmup_steps=1",
    "pretrain.sources=[us-presidential-addresses]",
    "fl.rounds=1",
    "fl.fraction=0.5",
    "fl.local_epochs=1",
]

KEYS = {
    "benchmark",
    "config",
    "rounds",
    "clients_per_round",
    "steps",
    "threads",
    "fed_seconds",
    "bare_seconds",
    "median_fed",
    "median_bare",
    "ratio",
    "goal",
    "max_abs_diff",
    "torch",
    "machine",
}


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("overhead_benchmark", ROOT / "benchmarks" / "overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # runs the overhead benchmark script end to end
@pytest.mark.realdata
def test_overhead_benchmark_tiny(pretrain_root: Path, tmp_path: Path) -> None:
    # pretrain_root = data_root (real PTB) + the pre-training corpus the tiny backbone is trained on.
    overhead = _load_benchmark()
    out = tmp_path / "overhead.json"
    overrides = [*TINY, f"data.dir={pretrain_root}", f"output.root={tmp_path / 'runs'}"]
    argv = ["--config", str(ROOT / "configs" / "demo.yaml"), "--rounds", "1", "--repeats", "1"]
    argv += ["--threads", "1", "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]

    result = overhead.main(argv)

    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert not KEYS - set(saved), KEYS - set(saved)
    assert saved["benchmark"] == "overhead"
    assert saved["rounds"] == 1 and saved["clients_per_round"] == 2
    assert saved["steps"] > 0
    assert len(saved["fed_seconds"]) == len(saved["bare_seconds"]) == 1
    assert saved["median_fed"] > 0 and saved["median_bare"] > 0
    assert saved["ratio"] > 0
    assert saved["goal"] == 1.03
    assert saved["max_abs_diff"] <= 1e-6


def test_secagg_benchmark_tiny(tmp_path: Path, monkeypatch) -> None:
    """One SecAgg+ round on 3 tiny synthetic changes: within its stated bound, the JSON written."""
    pytest.importorskip("flwr")
    spec = importlib.util.spec_from_file_location("secagg_benchmark", ROOT / "benchmarks" / "secagg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "secagg.json"
    argv = ["secagg.py", "--params", "64", "--clients", "3", "--repeats", "1", "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    mod.main()
    r = json.loads(out.read_text())
    assert 0 < r["max_abs_diff_vs_fedavg"] <= r["bound"]
    assert r["wire_bytes_per_round_secagg"] > r["wire_bytes_per_round_plain"] > 0
