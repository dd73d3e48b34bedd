"""Issue #21: the privacy, isolation and crash-safety guarantees, one specification per item.

Each test failed before its fix. Runs use the dummy task (tests/test_task_registry.py): fast.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fedgen.config import config_from_dict
from fedgen.core.errors import CheckpointError, ConfigError, FedgenError
from fedgen.experiment import registry
from fedgen.experiment.run import run_experiment
from fedgen.fl.client import FitResult
from fedgen.fl.dp import epsilon
from fedgen.fl.server import RoundPolicy, federate, sample_clients
from fedgen.testing.dummy_task import DummyTask, dummy_raw

TESTS = Path(__file__).resolve().parent
REF = {"a": torch.zeros(3, 4), "b": torch.zeros(5)}


@pytest.fixture
def dummy(monkeypatch):
    monkeypatch.setitem(registry._TASKS, "dummy", DummyTask)


def raw(tmp_path: Path, algorithm: str = "fedgen", rounds: int = 2, **sections: dict) -> dict:
    return dummy_raw(tmp_path, algorithm, rounds, local_epochs=1, **sections)


class _Scripted:
    def fit(self, state, client_ids, rnd):
        return [
            FitResult(k, {n: t + 0.1 for n, t in state.items()}, 10, {"train_loss": 1.0}) for k in client_ids
        ]


# ------------------------------------------------------------------------ 1. DP noise is unpredictable


def _noised(insecure: bool) -> dict:
    from fedgen.config.schema import DPConfig

    dp = DPConfig(
        mode="central", noise_multiplier=1.0, clipping_norm=1.0, insecure_reproducible_noise=insecure
    )
    policy = RoundPolicy(dp=dp)
    return federate(_Scripted(), dict(REF), num_clients=4, rounds=1, fraction=0.5, seed=0, policy=policy)


def test_two_runs_with_the_same_config_draw_different_dp_noise_by_default():
    a, b = _noised(False), _noised(False)
    assert not torch.equal(a["a"], b["a"])  # the public seed does not determine the noise


def test_reproducible_dp_noise_only_in_the_labelled_not_private_mode(dummy, tmp_path):
    a, b = _noised(True), _noised(True)
    assert torch.equal(a["a"], b["a"])
    cfg = config_from_dict(raw(tmp_path, dp={"mode": "central", "insecure_reproducible_noise": True}))
    s = run_experiment(cfg, tmp_path / "run", progress=False)
    assert "not differentially private" in s["privacy"]["warning"]
    assert "not differentially private" in (tmp_path / "run" / "report.md").read_text().splitlines()[0]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    assert all(r["dp_epsilon"] is None and "not differentially private" in r["dp_note"] for r in rows)


def test_secure_noise_has_the_calibrated_std():
    from fedgen.fl.secure_random import secure_normal

    z = secure_normal(200_001, 0.1)
    assert z.shape == (200_001,) and float(z.std()) == pytest.approx(0.1, rel=0.01)
    assert abs(float(z.mean())) < 0.002


def test_under_dp_who_takes_part_cannot_be_derived_from_the_config(dummy, tmp_path):
    draws = {tuple(sample_clients(100, 0.1, seed=0, rnd=1, secret=True)) for _ in range(5)}
    assert len(draws) > 1 and all(len(set(d)) == 10 for d in draws)  # fresh OS entropy, not the seed
    assert sample_clients(100, 0.1, seed=0, rnd=1) == sample_clients(100, 0.1, seed=0, rnd=1)  # no DP

    def sampled(dp: dict, name: str) -> list[list[int]]:
        cfg = config_from_dict(raw(tmp_path, dp=dp))
        run_experiment(cfg, tmp_path / name, progress=False)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["sampled"] for r in rows if "sampled" in r]

    private = {"mode": "central"}
    labelled = {"mode": "central", "insecure_reproducible_noise": True}
    assert sampled(labelled, "n1") == sampled(labelled, "n2")  # the labelled mode stays reproducible
    runs = [sampled(private, f"p{i}") for i in range(3)]
    assert runs[0] != runs[1] or runs[1] != runs[2]


# ------------------------------------------------------------- 2. over-selection raises the sampling rate


def test_over_selection_raises_the_accounted_sampling_rate(dummy, tmp_path):
    devices = {"enabled": True, "dropout": 0.5, "over_select": True, "step_seconds": 0.01}
    cfg = config_from_dict(raw(tmp_path, rounds=1, dp={"mode": "central"}, devices=devices))
    run_experiment(cfg, tmp_path / "run", progress=False)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[1])
    assert len(row["sampled"]) == 6  # 3 clients per round over-selected to ceil(3 / 0.5) = 6 of 6
    assert row["dp_sample_rate"] == 1.0
    assert row["dp_epsilon"] == pytest.approx(epsilon(1.0, 1.0, 1, cfg.dp.delta))


# --------------------------------------------------------------------------- 3. SecAgg+ settings checked


def _secagg(tmp_path, fl=None, **secagg) -> dict:
    r = raw(tmp_path, fl=fl or {}, flower={"secagg": {"enabled": True, **secagg}})
    r["runtime"] = "flower-sim"
    return r


@pytest.mark.parametrize(
    ("fl", "secagg", "message"),
    [
        ({"fraction": 1.0}, {"quantization_range": 2**30}, "overflows the 2\\^32 modulus"),
        ({"fraction": 0.5}, {"reconstruction_threshold": 0.05}, "more than half"),
        ({"fraction": 0.1}, {}, "at least 2 clients per round"),
    ],
)
def test_unsafe_secagg_settings_are_refused_in_one_line(dummy, tmp_path, fl, secagg, message):
    with pytest.raises(ConfigError, match=message) as e:
        config_from_dict(_secagg(tmp_path, fl, **secagg))
    assert "\n" not in str(e.value)
    assert config_from_dict(_secagg(tmp_path, {"fraction": 0.5})).flower.secagg.enabled  # defaults are safe


# ------------------------------------------------------------ 4. a client store belongs to one run


def test_a_client_store_written_by_run_a_is_refused_by_run_b(tmp_path):
    from fedgen.runtime.store import ClientStore

    a = ClientStore(tmp_path / "store", run_id="run-a")
    a[3] = {"w": torch.ones(2)}
    assert torch.equal(ClientStore(tmp_path / "store", run_id="run-a")[3]["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="written by run run-a, not by this run run-b") as e:
        ClientStore(tmp_path / "store", run_id="run-b")[3]
    assert "\n" not in str(e.value)


def test_the_run_id_is_in_run_json_kept_on_resume_and_reaches_every_node(dummy, tmp_path):
    from fedgen.deploy.launch import settings_for
    from fedgen.deploy.run_config import run_settings

    cfg = config_from_dict(raw(tmp_path, "ditto", rounds=2))
    run_experiment(cfg, tmp_path / "run", stop_after=1, progress=False)
    run_id = json.loads((tmp_path / "run" / "run.json").read_text())["run_id"]
    assert len(run_id) == 32
    assert settings_for(cfg, tmp_path / "run", resume=True).run_id == run_id
    fresh = settings_for(cfg, tmp_path / "other")
    assert fresh.run_id != run_id and run_settings(fresh.to_run_config()).run_id == fresh.run_id
    with pytest.raises(CheckpointError, match="is run"):
        run_experiment(None, tmp_path / "run", resume=True, progress=False, run_id="someone-else")
    run_experiment(None, tmp_path / "run", resume=True, progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["run_id"] == run_id


# ---------------------------------------------------- 5. on Flower a kept state is screened before storing


def test_a_nan_kept_state_on_flower_is_rejected_and_the_round_goes_on(caplog, monkeypatch):
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedgen.runtime.flower.records import to_arrays, to_metrics
    from fedgen.runtime.flower.runtime import FlowerRuntime

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)

    class Grid:
        def get_node_ids(self):
            return [1]

        def send_and_receive(self, msgs, timeout=None):
            out = []
            for i, m in enumerate(msgs):
                m.metadata.__dict__["_message_id"] = f"msg-{i}"  # as a Grid sets it when it sends
                cfg = m.content["config"]
                if "ask" in cfg:
                    reply = RecordDict({"config": ConfigRecord({"partition-ids": [0, 1]})})
                else:
                    k = int(cfg["client"])
                    kept = {"p": torch.full((2,), float("nan") if k == 0 else 1.0)}
                    reply = RecordDict(
                        {
                            "arrays": to_arrays({n: t + 1 for n, t in REF.items()}),
                            "metrics": to_metrics({"client": k, "num-examples": 5}),
                            "kept": to_arrays(kept),
                        }
                    )
                out.append(Message(reply, reply_to=m))
            return out

    mirror: dict = {}
    rt = FlowerRuntime(Grid(), 2, mirror_kept=mirror, kept_reference={"p": torch.zeros(2)})
    results = rt.fit(dict(REF), [0, 1], rnd=1)
    assert [r.client_id for r in results] == [0, 1]  # the round goes on with both updates
    assert list(mirror) == [1]  # client 0's NaN kept state was never stored
    assert "rejected the kept state of client 0" in caplog.text and "NaN" in caplog.text


# -------------------------------------------------------------- 6. --out onto a user's directory


def test_out_onto_a_non_empty_directory_that_is_not_a_run_leaves_it_untouched(dummy, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"config.yaml": "my: config\n", "report.md": "my notes\n", "metrics.jsonl": "{}\n"}
    for name, text in files.items():
        (mine / name).write_text(text)
    with pytest.raises(CheckpointError, match="not a fedgen run directory"):
        run_experiment(config_from_dict(raw(tmp_path)), mine, progress=False)
    assert {p.name: p.read_text() for p in mine.iterdir()} == files
    assert run_experiment(config_from_dict(raw(tmp_path)), tmp_path / "empty", progress=False)["rounds"] == 2


def test_a_run_killed_in_its_first_write_starts_again_in_the_same_directory(dummy, tmp_path):
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".config.yaml.k3x9_q1.tmp").write_text("half a conf")  # what a kill in write 1 leaves
    assert run_experiment(config_from_dict(raw(tmp_path)), killed, progress=False)["rounds"] == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".notes.tmp").write_text("mine")  # not the shape of our temporary files
    with pytest.raises(CheckpointError, match="not a fedgen run directory"):
        run_experiment(config_from_dict(raw(tmp_path)), tmp_path / "other", progress=False)


# -------------------------------------------------------------- 7. the result key includes the backbone


def test_the_result_key_changes_with_the_backbones_weights(dummy, tmp_path, monkeypatch):
    from fedgen.experiment.build import Experiment
    from fedgen.experiment.summary import backbone_digest, result_key

    cfg = config_from_dict(raw(tmp_path))
    a = backbone_digest(Experiment.build(cfg, progress=False))
    assert a == backbone_digest(Experiment.build(cfg, progress=False))
    real = DummyTask.setup

    def other_backbone(self, trains, progress=True):
        setup = real(self, trains, progress)
        with torch.no_grad():
            next(setup.model.parameters()).add_(1.0)  # same path, same config: other weights
        return setup

    monkeypatch.setattr(DummyTask, "setup", other_backbone)
    b = backbone_digest(Experiment.build(cfg, progress=False))
    assert a != b and result_key(cfg, a) != result_key(cfg, b)
    s = run_experiment(cfg, tmp_path / "run", progress=False)
    assert s["result_key"] == result_key(cfg, b)


# ------------------------------------------------------------------ 8. --resume --set is never dropped


def test_resume_with_set_applies_more_rounds_and_refuses_unsafe_changes(dummy, tmp_path, capsys):
    from fedgen.cli import main

    run_experiment(config_from_dict(raw(tmp_path, rounds=2)), tmp_path / "run", stop_after=1, progress=False)
    assert main(["run", "--resume", str(tmp_path / "run"), "--set", "fl.lr=0.5", "--quiet"]) == 2
    assert "fl.lr cannot change in a started run" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "run"), "--set", "fl.rounds=3", "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"] == 3
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["resumed_with"] == [{"after_round": 1, "set": {"fl.rounds": 3}}]


# --------------------------------------------------------------------------------- 9. crash safety


def test_a_torn_last_metrics_line_is_tolerated_by_resume_and_report(dummy, tmp_path, caplog):
    from fedgen.report.suite_parts import read_metrics

    cfg = config_from_dict(raw(tmp_path, rounds=3))
    run_experiment(cfg, tmp_path / "run", stop_after=1, progress=False)
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"round": 2, "train_lo')  # kill -9 in the middle of a write
    assert [r["round"] for r in read_metrics(tmp_path / "run")] == [0, 1]
    assert "torn last line" in caplog.text
    assert run_experiment(None, tmp_path / "run", resume=True, progress=False)["rounds"] == 3


def test_a_checkpoint_that_does_not_match_its_sha256_is_refused_naming_the_file(dummy, tmp_path):
    run_experiment(config_from_dict(raw(tmp_path, rounds=3)), tmp_path / "run", stop_after=1, progress=False)
    ck = tmp_path / "run" / "checkpoints" / "round_0001"
    f = next(ck.rglob("*.safetensors"))
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in a tensor: still a valid safetensors file
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{f.name} does not match its recorded SHA-256"):
        run_experiment(None, tmp_path / "run", resume=True, progress=False)


def _fedgen(*args: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path, str(TESTS)]), "OMP_NUM_THREADS": "1"}
    env.pop("FEDGEN_FAULT_KILL_AT_WRITE", None)
    if kill_at is not None:
        env["FEDGEN_FAULT_KILL_AT_WRITE"] = str(kill_at)
    return subprocess.run(
        [sys.executable, "-m", "fedgen.testing.dummy_task", *args], env=env, capture_output=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [3, 7, 12, 20])
def test_a_kill_at_the_nth_write_then_resume_gives_the_uninterrupted_result(dummy, tmp_path, kill_at):
    from fedgen.experiment.rundir import read_state

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(raw(tmp_path, rounds=4)))
    ref = _fedgen("run", "--config", str(cfg_file), "--out", str(tmp_path / "ref"), "--quiet")
    assert ref.returncode == 0, ref.stderr.decode()
    cut = _fedgen(
        "run", "--config", str(cfg_file), "--out", str(tmp_path / "cut"), "--quiet", kill_at=kill_at
    )
    assert cut.returncode == -9  # killed during a write by the fault-injection hook
    again = (
        ["run", "--resume", str(tmp_path / "cut"), "--quiet"]
        if (tmp_path / "cut" / "state.json").is_file()
        else ["run", "--config", str(cfg_file), "--out", str(tmp_path / "cut"), "--quiet"]
    )
    done = _fedgen(*again)
    assert done.returncode == 0, done.stderr.decode()
    a, b = read_state(tmp_path / "cut" / "global"), read_state(tmp_path / "ref" / "global")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_json_writes_are_atomic_under_a_kill_mid_write(tmp_path):
    (tmp_path / "x.json").write_text('{"old": true}')
    code = (
        "import sys; from fedgen.core.files import atomic_write_json as w; w(sys.argv[1], {'n': 'x' * 99999})"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "FEDGEN_FAULT_KILL_AT_WRITE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.json")], env=env, timeout=60)
    assert proc.returncode == -9
    assert json.loads((tmp_path / "x.json").read_text()) == {"old": True}  # old content, not a torn one


# ------------------------------------------------------------------ 10. nothing deleted without a flag


def test_compare_moves_stale_runs_aside_and_never_deletes_an_older_stale_copy(dummy, tmp_path):
    from fedgen.commands.compare import run_one

    cfg = config_from_dict(raw(tmp_path, rounds=1))
    run_dir = tmp_path / "cmp" / "fedgen-seed0"
    for i in range(2):  # two stale runs of the same (unknown) key in turn
        run_dir.mkdir(parents=True)
        (run_dir / "mine.txt").write_text(f"stale {i}")
        run_one(cfg, "fedgen", 0, run_dir, progress=False)
        run_dir.rename(tmp_path / "cmp" / f"done-{i}")
    kept = sorted(p.read_text() for p in (tmp_path / "cmp").glob("fedgen-seed0.stale-*/mine.txt"))
    assert kept == ["stale 0", "stale 1"]


def test_publish_onto_a_run_directory_refuses_and_deletes_nothing(tmp_path):
    from fedgen.report.publish import publish_suite

    src = tmp_path / "suite" / "text"
    src.mkdir(parents=True)
    (src / "compare.json").write_text(json.dumps({"config": {"task": "text"}, "rows": [], "table": {}}))
    run = tmp_path / "a-run"
    run.mkdir()
    (run / "report.md").write_text("my run's report")
    (run / "summary.json").write_text("{}")
    with pytest.raises(FedgenError, match="not a published suite; nothing changed"):
        publish_suite(tmp_path / "suite", run)
    assert sorted(p.name for p in run.iterdir()) == ["report.md", "summary.json"]


# ------------------------------------------------------------------ 11. private keys are born 0600


def test_private_keys_are_never_readable_by_others_not_even_before_a_chmod(tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    from fedgen.runtime.flower import pki

    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)  # a crash between write and chmod
    old = os.umask(0)
    try:
        private, _ = pki.make_node_key(tmp_path, "node")
        paths = pki.make_tls(tmp_path / "tls", ["localhost"])
    finally:
        os.umask(old)
    for key in (private, paths["key"]):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
