"""Simulated system heterogeneity (runtime/heterogeneous.py) on the dummy task: dropouts,
over-selection, deadlines with dropped or partial stragglers, simulated wall-clock."""

from __future__ import annotations

import json
import math

import pytest

from fedgen.config import config_from_dict
from fedgen.core.errors import ConfigError
from fedgen.experiment import registry
from fedgen.experiment.run import run_experiment
from fedgen.testing.dummy_task import DummyTask


@pytest.fixture
def dummy(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._TASKS, "dummy", DummyTask)

    def cfg(algorithm="fedgen", rounds=4, fraction=0.5, num_clients=10, r=2, **devices):
        return config_from_dict(
            {
                "name": "dummy",
                "task": "dummy",
                "data": {"num_clients": num_clients},
                "lora": {"r": r, "alpha": 4},
                "fl": {
                    "rounds": rounds,
                    "fraction": fraction,
                    "local_epochs": 2,
                    "batch_size": 8,
                    "lr": 0.05,
                },
                "eval": {"local_every": 100},
                "algorithm": {"name": algorithm},
                "personalize": {"enabled": False},
                "output": {"root": str(tmp_path)},
                "devices": {"enabled": True, **devices},
            }
        )

    return cfg


def rows(run_dir):
    rs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rs if r["round"] > 0]  # row 0: the initial evaluation


def test_dropouts_reduce_the_clients_per_round_deterministically(dummy, tmp_path):
    run_experiment(dummy(dropout=0.5), tmp_path / "a", progress=False)
    a = rows(tmp_path / "a")
    assert all(len(r["sampled"]) == 5 for r in a)  # m = floor(0.5 * 10), as without devices
    assert all(sorted(r["dropped"] + r["clients"]) == r["sampled"] for r in a)  # dropped send nothing
    assert sum(len(r["dropped"]) for r in a) > 0 and sum(len(r["clients"]) for r in a) < 20
    run_experiment(dummy(dropout=0.5), tmp_path / "b", progress=False)
    assert [r["dropped"] for r in rows(tmp_path / "b")] == [r["dropped"] for r in a]  # same seed: same


def test_over_selection_restores_the_expected_number_of_answers(dummy, tmp_path):
    run_experiment(
        dummy(rounds=12, dropout=0.5, over_select=True, num_clients=40, fraction=0.1),
        tmp_path / "o",
        progress=False,
    )
    over = rows(tmp_path / "o")
    assert all(len(r["sampled"]) == math.ceil(4 / 0.5) for r in over)  # ceil(m / (1 - dropout)) = 8
    answers = [len(r["clients"]) for r in over]
    assert 3 <= sum(answers) / len(answers) <= 5  # about m = 4 answer per round (8 x 0.5)


def test_a_partial_straggler_trains_fewer_steps_and_drop_discards_it(dummy, tmp_path):
    # 40 examples / batch 8 x 2 epochs = 10 steps; 1 s per step at speed 1, links fast enough to ignore
    tiers = [
        {"share": 0.5, "speed": 1.0, "bandwidth_mbps": 1000},
        {"share": 0.5, "speed": 0.25, "bandwidth_mbps": 1000},
    ]
    common = {"tiers": tiers, "deadline_s": 20.5, "step_seconds": 1.0}  # the slow tier fits 5 of 10 steps
    run_experiment(dummy(rounds=2, stragglers="partial", **common), tmp_path / "p", progress=False)
    part = rows(tmp_path / "p")
    assert any(r["stragglers"] for r in part)
    for r in part:
        assert set(r["partial_steps"]) == {str(k) for k in r["stragglers"]}
        assert all(s == 5 for s in r["partial_steps"].values())
        assert set(r["stragglers"]) <= set(r["clients"])  # their partial work is aggregated
        assert r["simulated_round_seconds"] == 20.5
    run_experiment(dummy(rounds=2, stragglers="drop", **common), tmp_path / "d", progress=False)
    drop = rows(tmp_path / "d")
    assert [r["stragglers"] for r in drop] == [r["stragglers"] for r in part]
    assert all(not set(r["stragglers"]) & set(r["clients"]) for r in drop)


def test_partial_work_really_stops_after_the_allowed_steps():
    import torch

    from fedgen.fl.client import LocalTrainConfig, local_train
    from fedgen.testing.dummy_task import RegressionObjective, TinyRegressor

    model = TinyRegressor()
    params = list(model.parameters())
    data = torch.randn(40, 5)
    full = local_train(RegressionObjective(), model, params, data, LocalTrainConfig(2, 8, 0.01), 0)
    part = local_train(
        RegressionObjective(), model, params, data, LocalTrainConfig(2, 8, 0.01, max_steps=7), 0
    )
    assert (full["steps"], part["steps"]) == (10, 7)


def test_simulated_time_of_lora_is_below_the_full_model(dummy, tmp_path):
    slow_link = {"tiers": [{"share": 1.0, "speed": 1.0, "bandwidth_mbps": 0.001}], "step_seconds": 0.01}
    lora = run_experiment(dummy("fedgen", rounds=2, r=1, **slow_link), tmp_path / "lora", progress=False)
    full = run_experiment(dummy("fedavg-full", rounds=2, **slow_link), tmp_path / "full", progress=False)
    assert lora["upload_bytes_total"] < full["upload_bytes_total"]
    assert 0 < lora["simulated_seconds_total"] < full["simulated_seconds_total"]
    assert all("simulated_round_seconds" in r for r in rows(tmp_path / "lora"))


def test_device_settings_are_checked(dummy):
    with pytest.raises(ConfigError, match="devices.step_seconds"):
        dummy(deadline_s=5.0)
    with pytest.raises(ConfigError, match="devices.tiers: the shares"):
        dummy(tiers=[{"share": 0.5}])
    with pytest.raises(ConfigError, match=r"devices.tiers\[0\].speed"):
        dummy(tiers=[{"share": 1.0, "speed": 0}])
