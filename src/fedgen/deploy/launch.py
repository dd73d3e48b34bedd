"""``fedgen run --runtime flower-sim | flower-deploy``: start a run on Flower and wait for it.

* ``flower-deploy``: writes a Flower app directory (``pyproject.toml`` whose ``[tool.flwr.app]``
  names our ServerApp/ClientApp and whose run config holds the resolved fedgen config) and runs
  ``flwr run APP_DIR [CONNECTION] --stream`` against a running SuperLink. The ServerApp writes
  the run directory on the SuperLink's machine.
* ``flower-sim``: Flower's Simulation Engine in this process (``flwr.simulation.run_simulation``,
  needs ``pip install fedgen-edge[flower-sim]``), one virtual SuperNode per client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import tomli_w
import yaml

from fedgen.config import Config, load_config
from fedgen.core.errors import FedgenError
from fedgen.data.ptb import data_root
from fedgen.deploy.run_config import RunSettings
from fedgen.experiment.run import new_run_dir, saved_run_id


def settings_for(
    cfg: Config, run_dir: Path, resume: bool = False, stop_after: int | None = None, run_id: str | None = None
) -> RunSettings:
    """The run config of a Flower run. ``run_id``: a resumed run's is read from its ``run.json``, a new
    run gets a random UUID (the ServerApp writes it to run.json; the nodes tag their stores with it)."""
    if run_id is None:
        run_id = (saved_run_id(Path(run_dir)) if resume else None) or uuid.uuid4().hex
    raw = cfg.to_dict()
    # Flower runs the apps in other working directories: relative paths (e.g. FEDGEN_DATA=../data, the
    # default output root "runs" holding the backbone cache) are made absolute on the launching machine.
    # A SuperNode on another machine needs the data at that path (or its own absolute data.dir).
    raw["data"]["dir"] = str(data_root(cfg.data.dir).resolve())
    raw["output"]["root"] = str(Path(cfg.output.root).resolve())
    return RunSettings(
        config_yaml=yaml.safe_dump(raw, sort_keys=False),
        run_dir=str(Path(run_dir).resolve()),
        resume=resume,
        stop_after=stop_after or 0,
        round_timeout=cfg.flower.round_timeout,
        wait_nodes=cfg.flower.wait_nodes,
        run_id=run_id,
    )


def write_app(app_dir: Path, settings: RunSettings) -> Path:
    """A Flower app directory for one run: only a ``pyproject.toml``; the code is the installed fedgen."""
    app_dir.mkdir(parents=True, exist_ok=True)
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fedgen-flower",
            "version": "1.0.0",
            "description": "FedGen-Edge on Flower (ServerApp/ClientApp from the installed fedgen package)",
            "license": "Apache-2.0",
            "dependencies": ["fedgen-edge", "flwr==1.42.*"],
        },
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {
                "app": {
                    "publisher": "fedgen",
                    "components": {
                        "serverapp": "fedgen.deploy.server_app:app",
                        "clientapp": "fedgen.deploy.client_app:app",
                    },
                    "config": settings.to_run_config(),
                }
            },
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(pyproject, multiline_strings=True))
    return app_dir


def flwr_executable() -> str:
    """``flwr`` from this interpreter's environment (or PATH)."""
    here = Path(sys.executable).parent / "flwr"
    return str(here) if here.is_file() else "flwr"


def flower_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower's commands: ``env`` (default: this process's), with this
    interpreter's ``bin`` directory first on PATH, so that ``flwr`` finds ``flower-superlink``,
    ``flwr-serverapp`` and the rest of this install without an activated venv."""
    env = dict(os.environ if env is None else env)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_deploy(
    settings: RunSettings,
    app_dir: Path,
    superlink: str | None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Submit the run to a SuperLink with ``flwr run`` and stream its log until it ends."""
    write_app(app_dir, settings)
    cmd = [flwr_executable(), "run", str(app_dir), *([superlink] if superlink else []), "--stream"]
    try:
        proc = subprocess.run(cmd, timeout=timeout, env=flower_env(env))
    except FileNotFoundError:
        raise FedgenError("the `flwr` command is missing: pip install 'flwr==1.42.*'") from None
    if proc.returncode != 0:
        raise FedgenError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); see its output above")


def run_sim(settings: RunSettings, num_clients: int, client_cpus: float = 1.0) -> None:
    """The run on Flower's Simulation Engine in this process: one virtual SuperNode per client."""
    try:
        from flwr.simulation import run_simulation
    except ImportError as e:  # pragma: no cover - depends on the install
        raise FedgenError(
            f"flower-sim needs Flower's simulation extra: pip install 'fedgen-edge[flower-sim]' ({e})"
        ) from None
    # lazy: the apps import Flower's Python API, needed here only for the Simulation Engine
    from fedgen.deploy.client_app import make_client_app
    from fedgen.deploy.server_app import make_server_app

    rc = settings.to_run_config()
    run_simulation(
        server_app=make_server_app(rc),
        client_app=make_client_app(rc),
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0}},
    )


def run_on_flower(
    cfg: Config | None,
    out: str | None,
    resume_dir: str | None,
    stop_after: int | None,
    runtime: str,
    superlink: str | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """``fedgen run`` on Flower (``runtime``: flower-sim | flower-deploy); returns summary.json's content.

    ``superlink`` (a connection name of ``flwr``'s config) replaces ``flower.superlink``; ``env``
    the environment ``flwr run`` sees (``fedgen deploy local``: its own ``FLWR_HOME``).
    """
    if resume_dir is not None:
        saved = Path(resume_dir) / "config.yaml"
        if not saved.is_file():
            raise FedgenError(f"--resume: {resume_dir} is not a run directory (no config.yaml)")
        cfg = cfg or load_config(saved)
        run_dir = Path(resume_dir)
    else:
        assert cfg is not None
        run_dir = Path(out) if out else new_run_dir(cfg)
    settings = settings_for(cfg, run_dir, resume=resume_dir is not None, stop_after=stop_after)
    if runtime == "flower-sim":
        run_sim(settings, cfg.data.num_clients, cfg.flower.client_cpus)
    else:
        with tempfile.TemporaryDirectory(prefix="fedgen-flower-app-") as app_dir:
            run_deploy(settings, Path(app_dir), superlink or cfg.flower.superlink, env=env)
    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    if stop_after is not None and (run_dir / "state.json").is_file():
        return {"stopped_after_round": stop_after, "run_dir": str(run_dir)}
    raise FedgenError(
        f"the Flower run left no {summary}: it failed (see the log above), or the ServerApp wrote "
        "the run directory on the SuperLink's machine"
    )
