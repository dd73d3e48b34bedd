"""FedPer and Ditto on Flower (our ServerApp against Flower ClientApps in this process, every
message crossing as Flower protobuf): each client's kept state (FedPer's personal layers, Ditto's
personal adapter) lives in its node's on-disk ClientStore, and the run gives the in-process
runtime's global state and kept client states bit for bit -- also when stopped after round 1
and resumed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_raw
from fedgen.config import config_from_dict
from fedgen.experiment.run import run_experiment
from fedgen.experiment.rundir import read_state
from fedgen.runtime.store import ClientStore

pytest.importorskip("flwr")

from fedgen.deploy.client_app import make_client_app, store_for  # noqa: E402
from fedgen.deploy.launch import settings_for  # noqa: E402
from fedgen.deploy.server_app import make_server_app  # noqa: E402
from fedgen.testing.flower_inline import run_inline  # noqa: E402


def personal_cfg(root: Path, data_root: Path, algorithm: str):
    """tiny_raw with 2 blocks (FedPer keeps the last), 3 clients, 2 of them per round, 2 rounds."""
    raw = tiny_raw(root, data_root, fraction=0.67)
    raw["model"]["n_layer"] = 2
    raw["data"]["num_clients"] = 3
    raw["threads"] = 1
    raw["eval"]["max_tokens"] = 2000
    raw["algorithm"] = {"name": algorithm}
    return config_from_dict(raw)


def assert_same(a: dict, b: dict) -> None:
    """Bit-identical states (same keys, dtypes, shapes, values)."""
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (
            f"{k}: max |diff| = {(a[k].double() - b[k].double()).abs().max().item()}"
        )


def assert_same_stores(a: ClientStore, b: ClientStore) -> None:
    assert list(a) == list(b) and len(a) > 0
    for k in a:
        assert_same(a[k], b[k])


def flower_run(cfg, run_dir: Path, **settings) -> ClientStore:
    """The run on Flower, in this process; returns the nodes' client store (one, shared here)."""
    s = settings_for(cfg, run_dir, **settings)
    rc = s.to_run_config()
    t0 = time.perf_counter()
    run_inline(make_server_app(rc), make_client_app(rc), cfg.data.num_clients, rc)
    print(f"{cfg.algorithm.name} on Flower in process {settings}: {time.perf_counter() - t0:.1f} s")
    return store_for({"partition-id": 0}, s.run_key)


_REFS: dict[str, Path] = {}


def in_process(shared_root: Path, data_root: Path, algorithm: str) -> Path:
    """The in-process run (run directory) the Flower runs must reproduce, made once per algorithm."""
    if algorithm not in _REFS:
        run_dir = shared_root / f"personal-ref-{algorithm}"
        t0 = time.perf_counter()
        run_experiment(personal_cfg(shared_root, data_root, algorithm), run_dir, progress=False)
        print(f"{algorithm} in process: {time.perf_counter() - t0:.1f} s")
        _REFS[algorithm] = run_dir
    return _REFS[algorithm]


def assert_same_run(run_dir: Path, store: ClientStore, ref: Path) -> None:
    """Same global state, same kept client states (client side and server's copy), same rounds."""
    assert_same(read_state(run_dir / "global"), read_state(ref / "global"))
    assert_same_stores(store, ClientStore(ref / "client_store"))
    clients = sorted(p.name for p in (ref / "clients").iterdir())
    assert clients == sorted(p.name for p in (run_dir / "clients").iterdir())
    for name in clients:
        assert_same(read_state(run_dir / "clients" / name), read_state(ref / "clients" / name))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    for r, q in zip(rows[1:], ref_rows[1:], strict=True):
        assert (r["round"], r["clients"], r["train_loss"]) == (q["round"], q["clients"], q["train_loss"])


@pytest.mark.slow  # a 2-block tiny run in process and on Flower, per algorithm
@pytest.mark.realdata
@pytest.mark.parametrize("algorithm", ["fedper", "ditto"])
def test_kept_client_states_on_flower_equal_the_in_process_runtime(
    algorithm, shared_root, data_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    ref = in_process(shared_root, data_root, algorithm)
    run_dir = tmp_path / "flower"
    store = flower_run(personal_cfg(shared_root, data_root, algorithm), run_dir)
    assert store.root.is_relative_to(tmp_path / "flwr-home")  # the client side's own disk
    assert_same_run(run_dir, store, ref)
    first, second = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    print({k: v for k, v in second.items() if "bytes" in k and "cum" not in k})
    # whole messages as Flower sends them: arrays plus object headers and ids, config and metrics ...
    for r in first, second:
        assert r["wire_bytes_up"] > r["flower_payload_up_bytes"] + r["flower_kept_mirror_bytes"]
    assert second["wire_bytes_down"] > second["flower_payload_down_bytes"]
    if algorithm == "ditto":  # ... where equal arrays in one message cross once: round 1's zero LoRA Bs
        assert first["wire_bytes_down"] < first["flower_payload_down_bytes"]


@pytest.mark.slow  # two tiny Flower runs (stop, resume) + the in-process reference
@pytest.mark.realdata
def test_a_flower_run_stopped_after_round_1_and_resumed_equals_an_uninterrupted_one(
    shared_root, data_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    ref = in_process(shared_root, data_root, "ditto")
    cfg = personal_cfg(shared_root, data_root, "ditto")
    run_dir = tmp_path / "flower"
    store = flower_run(cfg, run_dir, stop_after=1)
    assert not (run_dir / "global").exists()
    assert json.loads((run_dir / "state.json").read_text())["round"] == 1
    assert flower_run(cfg, run_dir, resume=True).root == store.root
    assert_same_run(run_dir, store, ref)
