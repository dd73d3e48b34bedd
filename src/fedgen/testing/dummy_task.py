"""A third task, small enough for unit tests: linear regression with a client-specific target
shift. It implements everything a task must provide (:mod:`fedgen.tasks.base`), so tests and
benchmarks can run the whole experiment core on it in seconds. Register it with
``registry.register_task("dummy", DummyTask)``; ``python -m fedgen.testing.dummy_task ARGS`` is the
``fedgen`` command with it registered (for tests that run the CLI in a subprocess)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from fedgen.core.errors import ConfigError
from fedgen.tasks.base import ClientData, TaskSetup

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
    global_keys: tuple[str, ...] = ("mse",)

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
    def training_examples(cfg) -> int | None:
        return 40 * cfg.data.num_clients

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

    def export(self, exp, out: Path) -> list[str]:
        (out / "regressor.json").write_text(
            json.dumps({k: v.tolist() for k, v in exp.params.state().items()})
        )
        return ["regressor.json"]

    def generate(self, exp, run_dir: Path, who: str, opts) -> str:
        return "no samples"

    def describe_partition(self) -> str:
        return "dummy"


def dummy_raw(
    root: Path, algorithm: str = "fedgen", rounds: int = 2, local_epochs: int = 1, **sections: dict
) -> dict:
    """A dummy-task experiment (6 clients, 3 per round, no personalization, clients scored at the
    start and the end) writing under ``root``; ``sections`` update the config's sections."""
    out: dict = {
        "name": "dummy",
        "task": "dummy",
        "data": {"num_clients": 6},
        "lora": {"r": 2, "alpha": 4},
        "fl": {"rounds": rounds, "fraction": 0.5, "local_epochs": local_epochs, "batch_size": 8, "lr": 0.05},
        "eval": {"local_every": 1000},
        "algorithm": {"name": algorithm},
        "personalize": {"enabled": False},
        "output": {"root": str(root), "keep_checkpoints": 2},
    }
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


if __name__ == "__main__":
    import sys

    from fedgen.cli import main
    from fedgen.experiment import registry

    registry.register_task("dummy", DummyTask)
    sys.exit(main(sys.argv[1:]))
