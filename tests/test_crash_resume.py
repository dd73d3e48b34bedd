"""Crash safety: ``kill -9`` at a random point of ``fedgen run``, then ``fedgen run --resume``,
gives bit-identical adapters; Ditto's and FedPer's kept per-client states resume too."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fedgen.config import config_from_dict
from fedgen.experiment import registry
from fedgen.experiment.run import run_experiment
from fedgen.experiment.rundir import read_state
from fedgen.testing.dummy_task import DummyTask, dummy_raw

TESTS = Path(__file__).resolve().parent


def raw(tmp_path: Path, algorithm: str = "fedgen", rounds: int = 3, **sections: dict) -> dict:
    return dummy_raw(tmp_path, algorithm, rounds, local_epochs=2, **sections)


def fedgen(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path, str(TESTS)]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fedgen.testing.dummy_task", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def same_states(a: Path, b: Path) -> None:
    sa, sb = read_state(a), read_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k  # bit-identical


@pytest.fixture
def dummy(monkeypatch):
    monkeypatch.setitem(registry._TASKS, "dummy", DummyTask)


@pytest.mark.slow  # kill -9 of a `fedgen run` subprocess, then a resumed one
def test_kill_9_at_a_random_point_then_resume_gives_bit_identical_adapters(dummy, tmp_path):
    rounds = 60
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(raw(tmp_path, rounds=rounds)))
    ref = run_experiment(config_from_dict(raw(tmp_path, rounds=rounds)), tmp_path / "ref", progress=False)
    assert ref["rounds"] == rounds
    run = tmp_path / "killed"
    delay = random.uniform(0.0, 1.0)
    proc = fedgen("run", "--config", str(cfg_file), "--out", str(run), "--quiet")
    deadline = time.monotonic() + 120
    while not (run / "state.json").is_file():  # the first checkpoint
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (run / "summary.json").exists(), f"the run finished before the kill ({delay=:.3f})"
    resumed = fedgen("run", "--resume", str(run), "--quiet")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    same_states(run / "global", tmp_path / "ref" / "global")
    finished = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(finished) == rounds + 1  # round 0 + every round once: no duplicated or lost rows


@pytest.mark.parametrize("algorithm", ["ditto", "fedper"])
def test_kept_per_client_state_resumes_bit_identically(dummy, tmp_path, algorithm):
    cfg = config_from_dict(raw(tmp_path, algorithm, rounds=4))
    run_experiment(cfg, tmp_path / "ref", progress=False)
    out = run_experiment(cfg, tmp_path / "cut", stop_after=2, progress=False)
    assert out["stopped_after_round"] == 2
    store = list((tmp_path / "cut" / "client_store").glob("client_*.safetensors"))
    assert store  # the clients' kept states are on disk, in the client store (not in each checkpoint)
    assert not (tmp_path / "cut" / "checkpoints" / "round_0002" / "kept").exists()
    run_experiment(None, tmp_path / "cut", resume=True, progress=False)
    same_states(tmp_path / "cut" / "global", tmp_path / "ref" / "global")
    ref_clients = sorted(p.name for p in (tmp_path / "ref" / "clients").iterdir())
    assert ref_clients == sorted(p.name for p in (tmp_path / "cut" / "clients").iterdir())
    for name in ref_clients:
        same_states(tmp_path / "cut" / "clients" / name, tmp_path / "ref" / "clients" / name)
