"""SecAgg+ and differential privacy.

* Config: SecAgg+ refuses what needs single updates (robust aggregators, central DP clipping) in
  one line; the privacy settings at their defaults leave every result key unchanged.
* DP-FedAvg with Flower's functions: clipping bounds each change, the noise is seeded with std
  z*C/m, the weights are uniform, the RDP accountant's epsilon behaves.
* SecAgg+ (Flower's workflow and mod, apps in this process over Flower's protobuf): the new
  global adapter is plain FedAvg's within the quantization error, and nothing that reaches the
  server holds a single client's update.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_raw
from fedgen.config import config_from_dict
from fedgen.core.errors import ConfigError
from fedgen.experiment.registry import check_config
from fedgen.experiment.run import run_experiment
from fedgen.experiment.rundir import read_state
from fedgen.fl.client import FitResult
from fedgen.fl.dp import add_noise, clip_change, epsilon
from fedgen.fl.server import RoundPolicy, federate

pytest.importorskip("flwr")

REF = {"a": torch.zeros(3, 4), "b": torch.zeros(5)}


def raw_cfg(tmp: Path, **sections) -> dict:
    raw = tiny_raw(tmp, tmp, fraction=0.5)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("aggregator", ["median", "trimmed-mean", "fednova"])
def test_secagg_refuses_aggregators_that_need_single_updates(tmp_path, aggregator):
    raw = raw_cfg(tmp_path, fl={"aggregator": aggregator}, flower={"secagg": {"enabled": True}})
    raw["runtime"] = "flower-sim"
    with pytest.raises(ConfigError, match=f"fl.aggregator: {aggregator} .* only receives their sum") as e:
        config_from_dict(raw)
    assert "\n" not in str(e.value)


def test_secagg_needs_a_flower_runtime_and_client_side_dp(tmp_path):
    raw = raw_cfg(tmp_path, flower={"secagg": {"enabled": True}})
    with pytest.raises(ConfigError, match="needs runtime: flower-sim or flower-deploy"):
        config_from_dict(raw)
    raw["runtime"] = "flower-deploy"
    raw["dp"] = {"mode": "central"}
    with pytest.raises(ConfigError, match="use dp.mode: client"):
        config_from_dict(raw)
    raw["dp"] = {"mode": "client"}
    assert config_from_dict(raw).dp.mode == "client"
    raw["algorithm"] = {"name": "fedper"}
    with pytest.raises(ConfigError, match="fedper keeps per-client states"):
        check_config(config_from_dict(raw))
    raw["algorithm"] = {"name": "fedgen"}
    raw["devices"] = {"enabled": True}
    with pytest.raises(ConfigError, match="devices.enabled: simulated devices are not combined"):
        config_from_dict(raw)


def test_privacy_defaults_leave_the_result_key_unchanged_and_count_when_on(tmp_path):
    base = config_from_dict(raw_cfg(tmp_path))
    explicit = config_from_dict(
        raw_cfg(tmp_path, dp={"mode": "off", "noise_multiplier": 3.0}, flower={"secagg": {"enabled": False}})
    )
    assert explicit.result_digest() == base.result_digest()
    dp = config_from_dict(raw_cfg(tmp_path, dp={"mode": "central"}))
    secagg = raw_cfg(tmp_path, flower={"secagg": {"enabled": True}})
    secagg["runtime"] = "flower-sim"
    assert len({base.result_digest(), dp.result_digest(), config_from_dict(secagg).result_digest()}) == 3


# -------------------------------------------------------------------------------------------- DP


def test_dp_clipping_bounds_the_change_and_keeps_its_direction():
    update = {"a": torch.full((3, 4), 2.0), "b": torch.full((5,), -1.0)}
    clipped = clip_change(update, REF, 0.5)
    norm = math.sqrt(sum(float((clipped[k] ** 2).sum()) for k in clipped))
    assert norm == pytest.approx(0.5, rel=1e-6)
    assert torch.allclose(clipped["a"] / clipped["a"][0, 0], torch.ones(3, 4))
    assert clipped["b"].lt(0).all() and clipped["a"].dtype == torch.float32
    small = {"a": torch.full((3, 4), 0.01), "b": torch.zeros(5)}
    assert torch.equal(clip_change(small, REF, 0.5)["a"], small["a"])


def test_dp_noise_is_seeded_with_std_noise_times_clip_over_m():
    big = {"w": torch.zeros(200_000)}
    a, b = add_noise(big, 1.0, 0.5, 5, seed=7), add_noise(big, 1.0, 0.5, 5, seed=7)
    assert torch.equal(a["w"], b["w"])  # reproducible
    assert float(a["w"].std()) == pytest.approx(1.0 * 0.5 / 5, rel=0.01)
    assert not torch.equal(a["w"], add_noise(big, 1.0, 0.5, 5, seed=8)["w"])
    assert add_noise(big, 0.0, 0.5, 5, seed=7) is big  # no noise: unchanged
    before = np.random.get_state()[1].copy()
    add_noise(big, 1.0, 0.5, 5, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)  # numpy's global state restored


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    e1, e10 = epsilon(1.0, 0.25, 1, 1e-5), epsilon(1.0, 0.25, 10, 1e-5)
    assert 0 < e1 < e10
    assert epsilon(2.0, 0.25, 10, 1e-5) < e10
    assert epsilon(0.0, 0.25, 10, 1e-5) is None  # no noise: no guarantee


class _Scripted:
    """Client k returns the global state + (k+1) * 1.0 everywhere, with n_k = 10 * (k+1)."""

    def fit(self, state, client_ids, rnd):
        return [
            FitResult(k, {n: t + (k + 1) for n, t in state.items()}, 10 * (k + 1), {"train_loss": 1.0})
            for k in client_ids
        ]


def test_central_dp_averages_the_clipped_changes_with_uniform_weights():
    from fedgen.config.schema import DPConfig

    dp = DPConfig(mode="central", noise_multiplier=0.0, clipping_norm=1.0)
    out = federate(
        _Scripted(), dict(REF), num_clients=4, rounds=1, fraction=0.5, seed=0, policy=RoundPolicy(dp=dp)
    )
    # every change has norm sqrt(17) * (k+1) > 1: each is clipped to norm 1, same direction,
    # so the uniform mean is the unit vector, whatever the clients' n_k
    unit = 1 / math.sqrt(17)
    assert all(torch.allclose(out[k], torch.full_like(REF[k], unit)) for k in REF)


def test_under_secure_aggregation_the_client_runs_the_servers_checks_on_its_own_update():
    from fedgen.config.schema import DPConfig
    from fedgen.fl.server import client_update

    policy = RoundPolicy(client_sizes={3: 10}, clip_norm=2.0)
    nan = FitResult(3, {"a": torch.full((3, 4), float("nan")), "b": torch.zeros(5)}, 10)
    assert client_update(nan, REF, 1, policy, secure=True) == (
        None,
        "round 1 client 3: a contains NaN or Inf",
    )
    too_many = FitResult(3, dict(REF), 11)
    assert "holds 10 training examples" in client_update(too_many, REF, 1, policy, secure=True)[1]
    big = FitResult(3, {"a": torch.full((3, 4), 5.0), "b": torch.zeros(5)}, 10)
    sent, reason = client_update(big, REF, 1, policy, secure=True)
    assert reason is None and float(sent.state["a"].norm()) == pytest.approx(2.0)  # fl.clip_norm
    assert client_update(big, REF, 1, policy, secure=False)[0] is big  # not secure: the server checks
    dp = RoundPolicy(dp=DPConfig(mode="client", clipping_norm=0.5))
    assert float(client_update(big, REF, 1, dp, secure=False)[0].state["a"].norm()) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------- SecAgg+


def secagg_cfg(root: Path, data_root: Path, secagg: bool = True):
    """tiny_raw with 3 clients, 2 per round, 1 round (each client starts from the same global)."""
    raw = tiny_raw(root, data_root, fraction=0.67, rounds=1)
    raw["data"]["num_clients"] = 3
    raw["threads"] = 1
    raw["eval"]["max_tokens"] = 2000
    raw["personalize"] = {"enabled": False}
    raw["runtime"] = "flower-sim" if secagg else "in-process"
    raw["flower"] = {"secagg": {"enabled": secagg}}
    return config_from_dict(raw)


@pytest.mark.slow  # a tiny in-process run + the same round on Flower with SecAgg+
@pytest.mark.realdata
def test_secagg_gives_fedavg_within_the_quantization_error_and_the_server_sees_only_the_sum(
    shared_root, data_root, monkeypatch
):
    from fedgen.deploy.client_app import make_client_app
    from fedgen.deploy.launch import settings_for
    from fedgen.deploy.server_app import make_server_app
    from fedgen.runtime.flower import runtime as flower_runtime
    from fedgen.testing.flower_inline import run_inline

    cfg = secagg_cfg(shared_root, data_root)
    run_experiment(
        secagg_cfg(shared_root, data_root, secagg=False), shared_root / "secagg-ref", progress=False
    )

    replies, seen = [], []  # what reached the server: Flower replies, and what the server loop got
    monkeypatch.setattr("fedgen.fl.server.aggregate", lambda *a, **k: pytest.fail("aggregate() saw updates"))
    fit_secure = flower_runtime.FlowerRuntime.fit_secure

    def spy(self, state, client_ids, rnd):
        out = fit_secure(self, state, client_ids, rnd)
        seen.append(out)
        return out

    monkeypatch.setattr(flower_runtime.FlowerRuntime, "fit_secure", spy)
    rc = settings_for(cfg, shared_root / "secagg").to_run_config()
    t0 = time.perf_counter()
    run_inline(make_server_app(rc), make_client_app(rc), 3, rc, intercept=lambda r: replies.append(r) or r)
    print(f"SecAgg+ run (1 round, in process): {time.perf_counter() - t0:.1f} s")

    # the server only ever held the sum: no reply carries arrays, the server loop got no update
    assert replies and all(len(rec) == 0 for r in replies for rec in r.content.array_records.values())
    (summed,) = seen
    assert len(summed.accepted) == 2 and all(r.state == {} for r in summed.accepted)

    # the aggregate is plain FedAvg's within the quantization error: per client at most one level
    # 2c/Q, summed over m clients, divided by the summed weights sum_k n_k / max n
    ref, got = (
        read_state(shared_root / "secagg-ref" / "global"),
        read_state(shared_root / "secagg" / "global"),
    )
    rows = [json.loads(x) for x in (shared_root / "secagg" / "metrics.jsonl").read_text().splitlines()]
    n_k = rows[1]["num_examples"]
    sa = cfg.flower.secagg
    max_n = max(len(d) for d in _train_sizes(shared_root, cfg))
    bound = len(n_k) * (2 * sa.clipping_range / sa.quantization_range) / (sum(n_k) / max_n)
    diff = max((got[k].double() - ref[k].double()).abs().max().item() for k in ref)
    ulp = max(ref[k].abs().max().item() for k in ref) * 2**-23
    print(f"SecAgg+ vs FedAvg: max |diff| = {diff:.3g} (bound {bound:.3g})")
    assert 0 < diff <= bound + ulp
    assert (
        rows[1]["clients"]
        == json.loads((shared_root / "secagg-ref" / "metrics.jsonl").read_text().splitlines()[1])["clients"]
    )
    assert rows[1]["upload_bytes"] == rows[1]["secagg_masked_up_bytes"] > 0  # what was sent is counted


def _train_sizes(root: Path, cfg) -> list:
    from fedgen.deploy.launch import settings_for
    from fedgen.deploy.run_config import experiment_for

    exp, _ = experiment_for(settings_for(cfg, root / "secagg"))
    return [d.train for d in exp.data.values()]
