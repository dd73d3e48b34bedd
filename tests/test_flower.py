"""Flower runtimes: the same experiment over a loopback TLS deployment (and the Simulation Engine)
gives the in-process runtime's global adapter bit for bit; credentials and TLS are enforced;
the client store keeps per-client states on disk.

Loopback only (127.0.0.1), every process stopped by its PID, FLWR_HOME in a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_raw
from fedgen.cli import main
from fedgen.config import config_from_dict, save_config
from fedgen.experiment.run import run_experiment
from fedgen.experiment.rundir import read_state
from fedgen.fl.client import FitResult
from fedgen.runtime.simulate import InProcessRuntime
from fedgen.runtime.store import ClientStore
from fedgen.tasks.base import ClientData

flwr = pytest.importorskip("flwr")

from fedgen.deploy.launch import run_deploy, run_sim, settings_for  # noqa: E402
from fedgen.deploy.local import CONNECTION, Loopback  # noqa: E402


def flower_cfg(root: Path, data_root: Path, algorithm: str = "fedgen"):
    """tiny_raw with 3 clients (one SuperNode each), 2 of them per round, 2 rounds."""
    raw = tiny_raw(root, data_root, fraction=0.67)
    raw["data"]["num_clients"] = 3
    raw["threads"] = 1
    raw["eval"]["max_tokens"] = 2000
    raw["algorithm"] = {"name": algorithm}
    raw["flower"] = {"round_timeout": 300, "wait_nodes": 90}
    return config_from_dict(raw)


def assert_same_states(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), f"max |diff| = {diff}"
    return diff


# --------------------------------------------------------------------------------- client store


class _Counter:
    """A ClientLogic that keeps, per client, how many times it was trained (in ``kept``)."""

    def __init__(self) -> None:
        self.kept: dict = {}

    def fit(self, state, data, seed):
        k = data.client_id
        prev = self.kept.get(k, {"n": torch.zeros(1)})
        self.kept[k] = {"n": prev["n"] + 1}
        return FitResult(k, {"w": state["w"] + k}, 1, {"train_loss": 0.0})


def test_client_store_writes_only_what_changed_and_resumes_a_round(tmp_path):
    store = ClientStore(tmp_path)
    store.begin_round(1)
    store[3] = {"a": torch.ones(2)}
    store[3] = {"a": torch.ones(2)}  # same state, same round: no write
    assert store.writes == 1 and list(store) == [] and 3 not in store  # round 1 sees rounds < 1 only
    store.end_round()
    assert list(store) == [3] and torch.equal(store[3]["a"], torch.ones(2))
    store.begin_round(2)
    store[3] = {"a": torch.full((2,), 2.0)}
    store.begin_round(2)  # round 2 again (a resumed run): the client's state from round 1
    assert torch.equal(store[3]["a"], torch.ones(2))
    store.end_round()
    assert torch.equal(ClientStore(tmp_path)[3]["a"], torch.full((2,), 2.0))  # on disk, newest
    del store[3]
    assert len(store) == 0


def test_in_process_runtime_keeps_client_states_in_the_store(tmp_path):
    data = {k: ClientData(k, [0], None) for k in range(3)}
    logic = _Counter()
    rt = InProcessRuntime(logic, data, seed=0, store=ClientStore(tmp_path))
    for rnd, ids in ((1, [0, 2]), (2, [2])):
        rt.fit({"w": torch.zeros(1)}, ids, rnd)
    assert isinstance(logic.kept, ClientStore) and rt.store.writes == 3
    fresh = ClientStore(tmp_path)
    assert fresh[0]["n"].item() == 1 and fresh[2]["n"].item() == 2 and 1 not in fresh


# ------------------------------------------------------------------------- loopback deployment


@pytest.fixture(scope="module")
def reference(shared_root, data_root) -> tuple:
    """The in-process run the Flower runs must reproduce."""
    cfg = flower_cfg(shared_root, data_root)
    run_experiment(cfg, shared_root / "flower-ref", progress=False)
    return cfg, read_state(shared_root / "flower-ref" / "global")


@pytest.fixture(scope="module")
def federation(tmp_path_factory, data_root, reference):
    """SuperLink + 3 SuperNodes on 127.0.0.1: TLS certificates made here, SuperNode auth on."""
    with Loopback(
        tmp_path_factory.mktemp("loopback"), num_nodes=3, env={"FEDGEN_DATA": str(data_root)}
    ) as fed:
        yield fed


@pytest.mark.slow  # SuperLink + 3 SuperNode processes over TLS: ~70 s
@pytest.mark.realdata
def test_flower_deployment_over_tls_equals_the_in_process_runtime(
    federation, reference, shared_root, monkeypatch
):
    cfg, ref = reference
    run_dir = shared_root / "flower-deploy"
    for k, v in federation.env.items():
        monkeypatch.setenv(k, v)
    t0 = time.perf_counter()
    run_deploy(settings_for(cfg, run_dir), federation.root / "app", CONNECTION, timeout=480)
    print(f"flower deployment: {time.perf_counter() - t0:.1f} s for {cfg.fl.rounds} rounds")
    assert_same_states(read_state(run_dir / "global"), ref)  # bit-identical
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [
        json.loads(x) for x in (shared_root / "flower-ref" / "metrics.jsonl").read_text().splitlines()
    ]
    for r, q in zip(rows[1:], ref_rows[1:], strict=True):
        assert (r["clients"], r["train_loss"], r["upload_bytes"]) == (
            q["clients"],
            q["train_loss"],
            q["upload_bytes"],
        )
        assert r["flower_payload_up_bytes"] > 0 and r["flower_payload_down_bytes"] > 0
        assert r["wire_bytes_up"] > r["flower_payload_up_bytes"] and r["wire_bytes_down"] > 0
        print({k: v for k, v in r.items() if "bytes" in k and "cum" not in k})


@pytest.mark.realdata
@pytest.mark.slow
def test_fedgen_deploy_local_runs_a_config_on_fewer_supernodes_than_clients_and_stops_them(
    reference, shared_root, capsys
):
    cfg, ref = reference
    config = shared_root / "deploy-local.yaml"
    save_config(cfg, config)
    run_dir = shared_root / "deploy-local"
    assert main(["deploy", "local", "--config", str(config), "--nodes", "2", "--out", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "SuperLink + 2 SuperNodes on 127.0.0.1" in out and str(run_dir) in out
    assert_same_states(read_state(run_dir / "global"), ref)  # node 0 serves clients 0 and 2
    root = out.split("logs in ")[1].split()[0]
    assert not Path(root).exists()  # the federation's files are gone ...
    assert not any(root.encode() in c for c in _cmdlines())  # ... and none of its processes is left


def _cmdlines() -> list[bytes]:
    """The command lines of this machine's processes (those that end while read are skipped)."""
    out = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(path.read_bytes())
        except OSError:
            continue
    return out


def _refused(fed: Loopback, name: str, timeout: float = 90) -> str:
    proc = fed.procs[name]
    try:
        proc.wait(timeout)
    except Exception:
        fed.stop(name)
        pytest.fail(f"{name} was not refused within {timeout} s:\n{fed.log(name)[-1500:]}")
    fed.stop(name)
    assert proc.returncode != 0
    return fed.log(name)


@pytest.mark.slow  # needs the loopback TLS federation (processes)
def test_a_supernode_with_an_unregistered_key_is_refused(federation):
    from fedgen.runtime.flower.pki import make_node_key

    key, _ = make_node_key(federation.root / "keys", "intruder")  # never registered
    federation.supernode("intruder", 0, key, retries=1)
    log = _refused(federation, "intruder")
    assert "Failed to activate SuperNode" in log, log[-1500:]


@pytest.mark.slow  # needs the loopback TLS federation (processes)
def test_a_plaintext_supernode_cannot_connect_to_the_tls_superlink(federation):
    federation.supernode("plaintext", 0, None, tls=False, retries=1)
    log = _refused(federation, "plaintext")
    assert "could not establish a connection" in log, log[-1500:]


# ------------------------------------------------------------------------------- simulation


@pytest.mark.slow  # Ray + the reference run
@pytest.mark.realdata
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="flwr[simulation] (Ray) not installed")
def test_flower_simulation_equals_the_in_process_runtime(reference, shared_root, tmp_path, monkeypatch):
    cfg, ref = reference
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = shared_root / "flower-sim"
    t0 = time.perf_counter()
    run_sim(settings_for(cfg, run_dir), cfg.data.num_clients, client_cpus=1.0)
    print(f"flower simulation: {time.perf_counter() - t0:.1f} s for {cfg.fl.rounds} rounds")
    assert (run_dir / "global").is_dir(), "the simulated ServerApp did not finish"
    assert_same_states(read_state(run_dir / "global"), ref)
    assert os.environ["FLWR_HOME"].startswith(str(tmp_path))
