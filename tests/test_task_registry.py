"""The experiment core is task-agnostic: a third task, defined here, runs through it unchanged."""

from __future__ import annotations

import json

import pytest

from fedgen.commands.compare import compare
from fedgen.config import config_from_dict
from fedgen.core.errors import ConfigError
from fedgen.experiment import registry
from fedgen.experiment.build import Experiment
from fedgen.experiment.run import run_experiment
from fedgen.experiment.rundir import read_state
from fedgen.testing.dummy_task import DIM, DummyTask


@pytest.fixture
def dummy(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._TASKS, "dummy", DummyTask)

    def cfg(algorithm: str = "fedgen", **personalize):
        return config_from_dict(
            {
                "name": "dummy",
                "task": "dummy",
                "data": {"num_clients": 6},
                "lora": {"r": 2, "alpha": 4},
                "fl": {"rounds": 3, "fraction": 0.5, "local_epochs": 2, "batch_size": 8, "lr": 0.05},
                "eval": {"local_every": 1},
                "algorithm": {"name": algorithm},
                "personalize": personalize or {"enabled": True},
                "output": {"root": str(tmp_path)},
            }
        )

    return cfg


@pytest.mark.parametrize("algorithm", ["fedgen", "central-lora", "fedper", "ditto", "local"])
def test_a_third_task_runs_end_to_end_through_the_generic_core(dummy, tmp_path, algorithm):
    s = run_experiment(dummy(algorithm), tmp_path / algorithm, progress=False)
    assert s["task"] == "dummy" and s["algorithm"] == algorithm
    assert s["backbone"]["source"] == "random MLP (test)"
    assert "dummy_clients_with_own_model" in s  # the task's own end-of-run fields
    assert (tmp_path / algorithm / "report.md").read_text().startswith("# dummy")
    if algorithm in ("fedgen", "central-lora", "ditto"):
        assert s["test_mse_final"] < s["test_mse_initial"]  # it learned
    if algorithm == "fedgen":
        assert s["rounds"] == 3 and s["upload_bytes_total"] > 0
        assert s["adapter_params"] == 2 * (DIM + 8) + 2 * (8 + 1)  # LoRA r=2: r x (in + out) on inp, out
    if algorithm == "fedper":
        kept = read_state(sorted((tmp_path / algorithm / "clients").iterdir())[0])  # a sampled client
        assert set(kept) == {"out.weight", "out.bias"}  # the task's personal keys stay on the client


def test_a_third_task_is_compared_beside_its_backbone(dummy, tmp_path):
    result = compare(dummy(), ["central-lora", "fedgen"], [0], tmp_path / "cmp", progress=False)
    assert list(result["table"]) == ["backbone", "central-lora", "fedgen"]
    assert (
        result["table"]["fedgen"]["test_mse_final"]["mean"]
        < result["table"]["backbone"]["test_mse_final"]["mean"]
    )
    assert "dummy task" in (tmp_path / "cmp" / "compare.md").read_text()


def test_personalization_can_be_switched_off(dummy, tmp_path):
    on = run_experiment(dummy("fedgen"), tmp_path / "on", progress=False)
    pers = json.loads((tmp_path / "on" / "personalization.json").read_text())
    assert {"personalized", "paper_recipe", "kept_global_fraction"} <= set(pers)  # both recipes reported
    assert on["local_test_mse_personalized_paper_mean"] == pers["paper_recipe"]["mean"]
    off = run_experiment(dummy("fedgen", enabled=False), tmp_path / "off", progress=False)
    assert on["local_test_mse_personalized_mean"] is not None and (tmp_path / "on" / "clients").is_dir()
    assert off["local_test_mse_personalized_mean"] is None and not (tmp_path / "off" / "clients").exists()
    assert off["test_mse_final"] == on["test_mse_final"]  # the federation itself is unchanged


def test_unknown_tasks_and_the_tasks_own_checks_are_config_errors(dummy):
    with pytest.raises(ConfigError, match="unknown task 'nope'.*dummy"):
        registry.check_config(config_from_dict({"task": "nope"}))
    with pytest.raises(ConfigError, match="data.num_clients: the dummy task"):
        registry.check_config(config_from_dict({"task": "dummy", "data": {"num_clients": 51}}))
    with pytest.raises(ConfigError, match="unknown algorithm 'fedsgd'"):
        registry.check_config(config_from_dict({"algorithm": {"name": "fedsgd"}}))
    with pytest.raises(ConfigError, match="unknown algorithm 'fedsgd'"):
        Experiment.build(config_from_dict({"algorithm": {"name": "fedsgd"}}))  # no run without the check


def test_compare_never_mixes_runs_made_with_other_settings(dummy, tmp_path, capsys, monkeypatch):
    import dataclasses

    import fedgen.commands.compare as cmp

    first = compare(dummy(), ["fedgen"], [0], tmp_path / "cmp", progress=False)
    again = compare(dummy(), ["fedgen"], [0], tmp_path / "cmp", progress=False)  # same settings: reused
    assert again["rows"] == first["rows"]
    cfg = dummy()
    changed = dataclasses.replace(cfg, fl=dataclasses.replace(cfg.fl, lr=0.01))
    calls = []
    real = cmp.run_experiment
    monkeypatch.setattr(cmp, "run_experiment", lambda *a, **k: calls.append(a) or real(*a, **k))
    third = compare(changed, ["fedgen"], [0], tmp_path / "cmp", progress=False)
    assert len(calls) == 1  # rerun, not reused
    assert third["table"]["fedgen"]["test_mse_final"] != first["table"]["fedgen"]["test_mse_final"]
    assert any(p.name.startswith("fedgen-seed0.stale-") for p in (tmp_path / "cmp").iterdir())  # kept aside
    assert "made with other settings" in capsys.readouterr().out


def test_validated_personalization_keeps_the_global_model_when_nothing_beats_it(dummy, tmp_path):
    """A learning rate that can only hurt: every client keeps the global model."""
    s = run_experiment(dummy("fedgen", lr_multipliers=[1e4], max_epochs=1), tmp_path / "run", progress=False)
    pers = json.loads((tmp_path / "run" / "personalization.json").read_text())
    assert pers["kept_global_fraction"] == 1.0
    assert all(r["mse_personalized"] == r["mse_global"] for r in pers["clients"])
    assert s["local_test_mse_personalized_mean"] == s["local_test_mse_global_mean"]


def test_fednova_aggregation_runs_end_to_end(dummy, tmp_path):
    import dataclasses

    cfg = dummy("fedgen", enabled=False)
    cfg = dataclasses.replace(cfg, fl=dataclasses.replace(cfg.fl, aggregator="fednova"))
    s = run_experiment(cfg, tmp_path / "nova", progress=False)
    assert s["rounds"] == 3 and s["test_mse_final"] < s["test_mse_initial"]
