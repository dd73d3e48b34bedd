"""What a Flower run carries in its run config, and the per-process experiment cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from fedgen.config import Config, config_from_dict
from fedgen.experiment.build import Experiment
from fedgen.fl.algorithms import ClientLogic

# [tool.flwr.app.config] keys of the generated app (see fedgen.deploy.launch)
KEYS = ("fedgen-config", "run-dir", "resume", "stop-after", "round-timeout", "wait-nodes", "run-id")


@dataclass(frozen=True)
class RunSettings:
    config_yaml: str  # the resolved fedgen config (YAML)
    run_dir: str  # the run directory, on the ServerApp's machine
    resume: bool = False
    stop_after: int = 0  # 0: run every round
    round_timeout: float = 600.0  # seconds the server waits for a round's replies
    wait_nodes: float = 120.0  # seconds the server waits for SuperNodes holding every partition
    run_id: str = ""  # run.json's run id (a random UUID, kept on resume); "" only from older launchers

    @property
    def run_key(self) -> str:
        """Identifies the run for the clients' stores: a resumed run finds its clients' states, a new
        run (even in the same directory) gets a store of its own."""
        return self.run_id or self.run_dir

    def config(self) -> Config:
        return config_from_dict(yaml.safe_load(self.config_yaml))

    def to_run_config(self) -> dict[str, Any]:
        return {
            "fedgen-config": self.config_yaml,
            "run-dir": self.run_dir,
            "resume": self.resume,
            "stop-after": self.stop_after,
            "round-timeout": self.round_timeout,
            "wait-nodes": self.wait_nodes,
            "run-id": self.run_id,
        }


def run_settings(run_config: Any, default: dict | None = None) -> RunSettings:
    """The settings in a Flower ``context.run_config`` (or ``default`` where it has none)."""
    rc = dict(run_config or {})
    if "fedgen-config" not in rc:
        if default is None:
            raise ValueError(
                "the run config has no 'fedgen-config': start runs with `fedgen run --runtime ...`"
            )
        rc = default
    return RunSettings(
        config_yaml=str(rc["fedgen-config"]),
        run_dir=str(rc["run-dir"]),
        resume=bool(rc.get("resume", False)),
        stop_after=int(rc.get("stop-after", 0)),
        round_timeout=float(rc.get("round-timeout", 600.0)),
        wait_nodes=float(rc.get("wait-nodes", 120.0)),
        run_id=str(rc.get("run-id", "")),
    )


_CACHE: dict[str, tuple[Any, ClientLogic]] = {}


def experiment_for(settings: RunSettings):
    """This process's (Experiment, ClientLogic) for the run's config, built once per process."""
    key = hashlib.sha256(settings.config_yaml.encode()).hexdigest()
    if key not in _CACHE:
        exp = Experiment.build(settings.config(), progress=False)
        _CACHE[key] = (exp, exp.client_logic())
    return _CACHE[key]
