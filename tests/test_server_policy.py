"""The server trusts no runtime: bad updates are rejected with a reason and the round goes on."""

from __future__ import annotations

import pytest
import torch

from fedgen.fl.client import FitResult
from fedgen.fl.server import RoundPolicy, RoundsSkippedError, federate, sample_clients

STATE = {"a.lora_A.weight": torch.zeros(2, 4), "a.lora_B.weight": torch.zeros(4, 2)}


class ScriptedRuntime:
    """Every sampled client returns the global state + its id; ``tamper(k, result)`` may spoil it."""

    def __init__(self, tamper=lambda k, r: r):
        self.tamper = tamper

    def fit(self, state, client_ids, rnd):
        out = []
        for k in client_ids:
            s = {name: t.clone() + k for name, t in state.items()}
            r = self.tamper(k, FitResult(k, s, 10, {"train_loss": 1.0}))
            out.extend(r if isinstance(r, list) else [r])
        return out


def run(tamper, rounds=1, **policy):
    records = []
    out = federate(
        ScriptedRuntime(tamper),
        dict(STATE),
        num_clients=8,
        rounds=rounds,
        fraction=0.5,
        seed=0,
        on_round_end=lambda rec, st: records.append((rec, st)),
        policy=RoundPolicy(**policy),
    )
    return out, records


def spoil(fn):
    def tamper(k, r):
        fn(r.state)
        return r

    return tamper


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: next(iter(s.values())).fill_(float("nan")), "NaN"),
        (lambda s: s.update({next(iter(s)): torch.zeros(3)}), "shape"),
        (lambda s: s.pop(next(iter(s))), "missing"),
    ],
)
def test_corrupt_updates_are_rejected_and_the_round_is_skipped(corrupt, message):
    out, [(rec, _)] = run(spoil(corrupt))
    assert rec.skipped and rec.clients == [] and len(rec.rejected) == 4
    assert all(message in r["reason"] for r in rec.rejected)
    assert all(torch.equal(out[k], STATE[k]) for k in STATE)  # the global model is untouched


def test_the_round_completes_with_the_remaining_valid_updates():
    sampled = sample_clients(8, 0.5, 0, 1)
    bad = sampled[0]

    def tamper(k, r):
        if k == bad:
            r.state["a.lora_A.weight"] = r.state["a.lora_A.weight"] * 1e6 + float("inf")
        return r

    out, [(rec, _)] = run(tamper)
    good = [k for k in sampled if k != bad]
    assert not rec.skipped and rec.clients == good and [r["client"] for r in rec.rejected] == [bad]
    assert torch.allclose(out["a.lora_A.weight"], torch.full((2, 4), sum(good) / len(good)))


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (lambda k, r: [r, r], "second update"),
        (lambda k, r: FitResult(k + 100, r.state, 10, r.metrics), "not sampled"),
        (lambda k, r: FitResult(k, r.state, 0, r.metrics), "not a positive integer"),
        (lambda k, r: FitResult(k, r.state, 11, r.metrics), "holds 10 training examples"),
    ],
)
def test_client_ids_and_sample_counts_are_checked(tamper, reason):
    _, [(rec, _)] = run(tamper, client_sizes=dict.fromkeys(range(8), 10))
    assert rec.rejected and all(reason in r["reason"] for r in rec.rejected)
    assert len(set(rec.clients)) == len(rec.clients) <= 4  # nothing counted twice


def test_fewer_valid_updates_than_min_clients_skip_the_round():
    sampled = sample_clients(8, 0.5, 0, 1)
    tamper = spoil(lambda s: s.pop("a.lora_B.weight"))
    _, [(rec, _)] = run(lambda k, r: tamper(k, r) if k in sampled[:2] else r, min_clients=3)
    assert rec.skipped and len(rec.rejected) == 2


def test_too_many_skipped_rounds_in_a_row_stop_the_run_after_checkpointing():
    records = []
    with pytest.raises(RoundsSkippedError, match="2 rounds in a row"):
        federate(
            ScriptedRuntime(spoil(lambda s: s.pop("a.lora_B.weight"))),
            dict(STATE),
            num_clients=8,
            rounds=5,
            fraction=0.5,
            seed=0,
            on_round_end=lambda rec, st: records.append(rec.round),
            policy=RoundPolicy(max_skipped_rounds=2),
        )
    assert records == [1, 2]  # each skipped round was still recorded (and checkpointed) before stopping


def _scaled_attack(k, r):
    """The lowest sampled client sends its state x1e6: finite, right shape, passes screening."""
    if k == sample_clients(8, 0.5, 0, 1)[0]:
        r.state = {name: t * 1e6 for name, t in r.state.items()}
    return r


@pytest.mark.parametrize("aggregator", ["median", "trimmed-mean"])
def test_a_scaled_update_barely_moves_the_robust_aggregates(aggregator):
    honest_k = [k for k in sample_clients(8, 0.5, 0, 1)][1:]  # the three honest clients: state = k
    fed, _ = run(_scaled_attack)
    robust, [(rec, _)] = run(_scaled_attack, aggregator=aggregator, trim_beta=0.25)
    assert not rec.skipped and len(rec.clients) == 4  # accepted: nothing in screening catches it
    assert fed["a.lora_A.weight"].abs().max() > 1e4  # FedAvg is dragged away
    # the robust global stays within the honest clients' range
    assert (
        min(honest_k) <= robust["a.lora_A.weight"].min() <= robust["a.lora_A.weight"].max() <= max(honest_k)
    )


def test_update_norm_clipping_bounds_the_step_of_the_global_state():
    out, _ = run(_scaled_attack, clip_norm=0.5)
    step = torch.sqrt(sum(((out[k] - STATE[k]) ** 2).sum() for k in STATE))
    assert 0 < step <= 0.5 + 1e-6  # each clipped delta has norm <= 0.5, so their mean does too
    unclipped, _ = run(_scaled_attack)
    assert torch.sqrt(sum(((unclipped[k] - STATE[k]) ** 2).sum() for k in STATE)) > 1e4


def test_the_robust_aggregator_is_chosen_by_the_config(tmp_path):
    from fedgen.config import config_from_dict
    from fedgen.core.errors import ConfigError

    cfg = config_from_dict({"fl": {"aggregator": "trimmed-mean", "trim_beta": 0.2, "clip_norm": 1.5}})
    assert (cfg.fl.aggregator, cfg.fl.trim_beta, cfg.fl.clip_norm) == ("trimmed-mean", 0.2, 1.5)
    for bad in ({"aggregator": "krum"}, {"trim_beta": 0.5}, {"clip_norm": 0}):
        with pytest.raises(ConfigError, match="config fl."):
            config_from_dict({"fl": bad})


def test_upload_bytes_are_the_serialized_size_of_each_received_update():
    """Not len(serialize(global)) x m: a dropped client adds nothing, an oversized (rejected) one
    adds its real size, and the download is the global state to every sampled client."""
    from fedgen.fl.wire import serialize

    sampled = sample_clients(8, 0.5, 0, 1)
    big = {"a.lora_A.weight": torch.zeros(2, 40), "a.lora_B.weight": torch.zeros(4, 2)}

    def tamper(k, r):
        if k == sampled[0]:
            return []  # never answered
        if k == sampled[1]:
            r.state = dict(big)  # wrong shape: rejected, but its bytes did arrive
        return r

    _, [(rec, _)] = run(tamper)
    g = len(serialize(STATE))
    assert rec.received == 3 and rec.upload_bytes == 2 * g + len(serialize(big))
    assert rec.upload_bytes != g * len(sampled) and rec.download_bytes == g * len(sampled)


def test_fednova_normalizes_by_local_steps_and_equals_fedavg_for_equal_steps():
    from fedgen.fl.server import aggregate

    ref = {"w": torch.zeros(3)}
    a, b = {"w": torch.full((3,), 2.0)}, {"w": torch.full((3,), 8.0)}  # b did 4x the steps
    fednova = RoundPolicy(aggregator="fednova")
    same = aggregate([a, b], [10, 10], fednova, ref, steps=[4, 4])
    assert torch.allclose(same["w"], aggregate([a, b], [10, 10], RoundPolicy(), ref)["w"])
    out = aggregate([a, b], [10, 10], fednova, ref, steps=[2, 8])
    # tau_eff = 5; 5 * (0.5 * 2/2 + 0.5 * 8/8) = 5: per-step progress is averaged, then scaled
    assert torch.allclose(out["w"], torch.full((3,), 5.0))
    with pytest.raises(ValueError, match="local steps"):
        aggregate([a, b], [10, 10], fednova, ref, steps=None)


def test_a_report_of_a_run_whose_every_round_was_skipped_says_n_a_for_the_upload_size():
    from fedgen.tasks.reporting import clients_and_upload

    s = {"rounds": 2, "num_clients": 4, "clients_per_round": 2, "bytes_per_upload": None}
    work, upload = clients_and_upload({**s, "upload_params": 8, "upload_bytes_total": 0})
    assert work == "K=4, 2 per round, 2 rounds"
    assert upload == "n/a bytes per client per round (formula: 32); total 0.000 MB"
