"""The experiment core is task-agnostic: a third task, defined here, runs through it unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from fedgen import registry
from fedgen.compare import compare
from fedgen.config import ConfigError, config_from_dict
from fedgen.fl.client import ClientData
from fedgen.run import run_experiment
from fedgen.rundir import read_state
from fedgen.tasks.base import TaskSetup

DIM = 4


class TinyRegressor(nn.Module):
    """The dummy task's "backbone": a 2-layer MLP (``inp`` shared, ``out`` FedPer-personal)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(DIM, 8), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.inp(x))).squeeze(-1)


class RegressionObjective:
    """Mean squared error of ``y`` from ``x`` (rows of ``[x_1..x_4, y]``)."""

    metric = "mse"
    global_keys = ("mse",)

    def batches(self, examples: torch.Tensor, batch_size: int, generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(len(examples), generator=generator)
        for i in range(0, len(perm), batch_size):
            yield examples[perm[i : i + batch_size]]

    def concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts)

    def holdout(self, examples: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        n_val = int(len(examples) * fraction)
        return examples[: len(examples) - n_val], examples[len(examples) - n_val :]

    def has_eval_data(self, data: torch.Tensor) -> bool:
        return len(data) > 0

    def loss_params(self, named: dict) -> list:
        return list(named.values())

    def begin_local(self, model, named, cfg) -> None:
        return None

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(batch[:, :DIM]), batch[:, DIM])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: torch.Tensor, batch_size: int) -> dict[str, float]:
        return {"mse": F.mse_loss(model(data[:, :DIM]), data[:, DIM]).item()}

    def client_metric(self, model: nn.Module, data: torch.Tensor, batch_size: int) -> float:
        return self.evaluate(model, data, batch_size)["mse"]


class Partition(dict):
    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self))


def _write_report(run_dir: Path, summary: dict, metrics: list[dict], pers: dict | None) -> Path:
    out = run_dir / "report.md"
    out.write_text(f"# dummy {summary['algorithm']}: test mse {summary['test_mse_final']}\n")
    return out


class DummyTask:
    """Linear regression with a client-specific target shift: everything a task must provide."""

    name = "dummy"
    report = SimpleNamespace(
        compare_columns=[("test_mse_final", "test MSE"), ("upload_bytes_total", "upload total")],
        paper={},
        result_table=lambda s: f"| test MSE | {s['test_mse_final']} |",
        write_report=_write_report,
        compare_notes=lambda cfg: "dummy task",
        flatten=lambda s: {
            "test_mse_final": s.get("test_mse_final"),
            "upload_bytes_total": s.get("upload_bytes_total"),
        },
    )

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.data.num_clients > 50:
            raise ConfigError("config data.num_clients: the dummy task has at most 50 clients")

    def backbone_path(self) -> Path:
        return Path(self.cfg.output.root) / "dummy-backbone"

    def backbone_ready(self, path: Path) -> bool:
        return True

    def pretrain(self, out: Path, progress: bool = True) -> Path:
        return out

    def setup(self, trains: str, progress: bool = True) -> TaskSetup:
        torch.manual_seed(0)
        model = TinyRegressor()
        for p in model.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(self.cfg.seed)
        w = torch.randn(DIM, generator=g)

        def rows(n: int, shift: float) -> torch.Tensor:
            x = torch.randn(n, DIM, generator=g)
            return torch.cat([x, (x @ w + shift).unsqueeze(1)], 1)

        k = self.cfg.data.num_clients
        data = {c: ClientData(c, rows(40, c / k), rows(10, c / k)) for c in range(k)}
        return TaskSetup(
            objective=RegressionObjective(),
            model=model,
            data=data,
            partition=Partition(clients=k),
            eval_sets={"test": rows(64, 0.5)},
            backbone={"source": "random MLP (test)", "params": sum(p.numel() for p in model.parameters())},
        )

    def add_adapter(self, model: nn.Module) -> nn.Module:
        a = self.cfg.lora
        return get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, target_modules=["inp", "out"]))

    def personal_keys(self, model: nn.Module, keys: list[str], blocks: int) -> list[str]:
        return [k for k in keys if k.startswith("out.")]

    def finish(self, exp, run_dir: Path, global_state, personal, progress: bool = True) -> dict:
        return {"dummy_clients_with_own_model": sum(1 for k in exp.data if personal is not None)}

    def generate(self, exp, run_dir: Path, who: str, opts) -> str:
        return "no samples"

    def describe_partition(self) -> str:
        return "dummy"


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
        config_from_dict({"task": "nope"})
    with pytest.raises(ConfigError, match="data.num_clients: the dummy task"):
        config_from_dict({"task": "dummy", "data": {"num_clients": 51}})
    with pytest.raises(ConfigError, match="unknown algorithm 'fedsgd'"):
        config_from_dict({"algorithm": {"name": "fedsgd"}})


def test_compare_never_mixes_runs_made_with_other_settings(dummy, tmp_path, capsys, monkeypatch):
    import dataclasses

    import fedgen.compare as cmp

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
