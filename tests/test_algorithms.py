"""Each baseline's defining property, on tiny real-PTB runs that share data, partition and backbone."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_raw
from fedgen.commands.compare import compare
from fedgen.config import config_from_dict
from fedgen.core.errors import FedgenError
from fedgen.core.seeding import derive_seed
from fedgen.experiment.build import Experiment
from fedgen.experiment.loop import pooled_data
from fedgen.experiment.run import run_experiment
from fedgen.fl.algorithms import ALGORITHMS, DittoClient, FedPerClient
from fedgen.fl.wire import serialize, upload_total_formula
from fedgen.models.gpt import build_gpt, count_params, freeze, gpt2_config
from fedgen.models.lora import add_lora
from fedgen.models.params import ParamSet

pytestmark = pytest.mark.realdata


def raw_for(root, data_root, algorithm: str, **extra) -> dict:
    raw = tiny_raw(root, data_root, rounds=2)
    raw["model"]["n_layer"] = 2  # FedPer needs a shared and a personal block
    raw["algorithm"] = {"name": algorithm, **extra}
    return raw


@pytest.fixture(scope="module")
def summaries(shared_root, data_root) -> dict[str, dict]:
    out = {}
    for alg in ALGORITHMS:
        out[alg] = run_experiment(
            config_from_dict(raw_for(shared_root, data_root, alg)), shared_root / "algs" / alg, progress=False
        )
    return out


@pytest.mark.slow  # reads `summaries`: 7 tiny runs, one per algorithm (~1-2 min, once)
def test_all_algorithms_share_data_partition_backbone_and_round_zero(summaries, shared_root):
    firsts = {a: (s["valid_ppl_initial"], s["test_ppl_initial"]) for a, s in summaries.items()}
    assert len(set(firsts.values())) == 1, firsts
    parts = {(shared_root / "algs" / a / "partition.json").read_text() for a in summaries}
    assert len(parts) == 1


@pytest.mark.slow  # reads `summaries`: 7 tiny runs, one per algorithm (~1-2 min, once)
def test_fedper_never_uploads_its_personal_layers(summaries, shared_root, data_root):
    exp = Experiment.build(config_from_dict(raw_for(shared_root, data_root, "fedper")), progress=False)
    logic = exp.client_logic()
    assert isinstance(logic, FedPerClient)
    personal = logic.personal_keys
    assert personal and all(k.startswith(("transformer.h.1.", "transformer.ln_f.")) for k in personal)
    shared = {k: v for k, v in exp.init.items() if k not in personal}
    res = logic.fit(shared, exp.data[0], seed=0)
    assert set(res.state) == set(shared) and not set(res.state) & personal
    assert set(logic.kept[0]) == personal
    s = summaries["fedper"]
    assert s["upload_params"] == sum(v.numel() for v in shared.values()) < s["trained_params"]
    assert s["bytes_per_upload"] == len(serialize(shared))  # the bytes sent hold no personal tensor


@pytest.mark.slow  # reads `summaries`: 7 tiny runs, one per algorithm (~1-2 min, once)
def test_local_only_sends_nothing_and_keeps_one_adapter_per_client(summaries, shared_root):
    s = summaries["local"]
    assert s["upload_bytes_total"] == s["download_bytes_total"] == 0 and s["rounds"] == 0
    assert "no communication" in s["upload_note"]
    assert s["valid_ppl_final"] is None and s["local_test_ppl_personalized_mean"] is not None
    assert len(list((shared_root / "algs" / "local" / "clients").iterdir())) == 8


@pytest.mark.slow  # reads `summaries`: 7 tiny runs, one per algorithm (~1-2 min, once)
def test_fedavg_full_uploads_every_parameter(summaries):
    s = summaries["fedavg-full"]
    assert s["upload_params"] == s["trained_params"] == s["backbone"]["params"]
    assert s["bytes_per_upload"] - 4 * s["backbone"]["params"] < 4096  # fp32 payload + header


@pytest.mark.slow  # pre-trains the 2-block backbone (shared with `summaries`)
def test_ditto_lambda_zero_is_local_training_and_a_huge_lambda_stays_at_the_global_model(
    shared_root, data_root
):
    exp = Experiment.build(config_from_dict(raw_for(shared_root, data_root, "ditto")), progress=False)
    w, data = exp.init, exp.data[1]

    def personal(lam: float) -> dict:
        d = DittoClient(exp.client, lam)
        d.fit(w, data, seed=5)
        return d.kept[1]

    def dist(state) -> float:
        return sum(((state[k] - w[k]) ** 2).sum().item() for k in w) ** 0.5

    v0 = personal(0.0)
    alone = exp.client.fit(w, data, derive_seed(5, "ditto")).state
    assert all(torch.equal(v0[k], alone[k]) for k in w)  # lambda = 0: plain local training
    d0, dbig = dist(v0), dist(personal(1e6))
    print(f"||v - w||: lambda=0 {d0:.4f}, lambda=1e6 {dbig:.4f}")
    assert dbig < 0.25 * d0


@pytest.mark.slow  # reads `summaries`: 7 tiny runs, one per algorithm (~1-2 min, once)
def test_central_training_sees_every_clients_samples(summaries, shared_root, data_root):
    exp = Experiment.build(config_from_dict(raw_for(shared_root, data_root, "central-lora")), progress=False)
    pooled = pooled_data(exp).train
    assert len(pooled) == sum(len(d.train) for d in exp.data.values())
    assert torch.equal(pooled, torch.cat([exp.data[k].train for k in sorted(exp.data)]))
    # same expected sample passes as the federated runs: rounds x (m/K) x E epochs
    assert summaries["central-lora"]["local_epochs_equivalent"] == exp.budget_epochs() == 1
    assert summaries["central-full"]["upload_note"].startswith("n/a")


@pytest.mark.slow  # reads `summaries`: 7 tiny runs, one per algorithm (~1-2 min, once)
def test_upload_totals_follow_formulas_3_5_and_3_6(summaries):
    # expected values from the config, not from the summary fields being checked: 2 rounds x
    # floor(0.5 x 8) = 4 clients; LoRA r=4 on q and v (64 -> 64) of 2 blocks = 2 x 2 x 4 x (64 + 64)
    lora_params = 2 * 2 * 4 * (64 + 64)
    assert summaries["fedgen"]["upload_params"] == summaries["ditto"]["upload_params"] == lora_params
    assert summaries["fedavg-full"]["upload_params"] == summaries["fedavg-full"]["trained_params"]
    assert 0 < summaries["fedper"]["upload_params"] < summaries["fedper"]["trained_params"]  # personal kept
    for alg in ("fedgen", "fedavg-full", "ditto", "fedper"):
        s = summaries[alg]
        assert (s["rounds"], s["clients_per_round"]) == (2, 4)
        assert s["upload_bytes_formula_total"] == 2 * 4 * s["upload_params"] * 4
        assert upload_total_formula(2, 4, s["upload_params"]) == s["upload_bytes_formula_total"]
        overhead = s["upload_bytes_total"] - s["upload_bytes_formula_total"]
        assert 0 < overhead <= s["rounds"] * s["clients_per_round"] * 4096  # safetensors headers only
    assert summaries["fedgen"]["upload_bytes_total"] * 50 < summaries["fedavg-full"]["upload_bytes_total"]


def test_paper_config_upload_arithmetic():
    """Paper setting: 500 rounds x 10 clients, 6x768x12 GPT-2 on PTB's 10k vocabulary, LoRA r=8 on q,v."""
    model = build_gpt(gpt2_config(10_000, 6, 768, 12, 128, 0.0), seed=0)
    full = count_params(model)
    freeze(model)
    lora = ParamSet(add_lora(model, 8, 16, ["q_proj", "v_proj"]), "lora").numel()
    assert (full, lora) == (50_307_072, 147_456)
    assert upload_total_formula(500, 10, lora) == 2_949_120_000  # FedGen-Edge: 2.95 GB
    assert upload_total_formula(500, 10, full) == 1_006_141_440_000  # FedAvg (full): 1.006 TB
    # the reduction factor is the parameter ratio, whatever the rounds and clients
    assert upload_total_formula(500, 10, full) / upload_total_formula(500, 10, lora) == full / lora


def test_paper_traffic_arithmetic():
    """The quoted 16.2 GB over 500 rounds is a ~0.4M-parameter adapter's traffic, not an 85M model's."""
    assert 2 * upload_total_formula(500, 10, 405_000) == 16_200_000_000  # up + down, 0.405M LoRA params
    assert upload_total_formula(500, 10, 85_000_000) == 1_700_000_000_000  # 85M params, upload only


@pytest.mark.slow  # 4 tiny runs (2 algorithms x 2 seeds)
def test_compare_tabulates_mean_and_std_and_skips_finished_runs(shared_root, data_root, monkeypatch):
    cfg = config_from_dict(raw_for(shared_root, data_root, "fedgen"))
    out = shared_root / "cmp"
    r1 = compare(cfg, ["local", "central-lora"], [0, 1], out, progress=False)
    assert [(r["algorithm"], r["seed"]) for r in r1["rows"]] == [
        ("local", 0),
        ("central-lora", 0),
        ("local", 1),
        ("central-lora", 1),
    ]
    t = r1["table"]["central-lora"]
    assert t["test_ppl_final"]["n"] == 2 and t["local_test_ppl_personalized_mean"] is None
    saved = json.loads((out / "compare.json").read_text())
    assert saved["table"].keys() == r1["table"].keys()
    md = (out / "compare.md").read_text()
    assert "paper (reported, not ours)" in md and "central-lora" in md

    import fedgen.commands.compare as cmp

    monkeypatch.setattr(cmp, "run_experiment", lambda *a, **k: pytest.fail("finished runs must be skipped"))
    r2 = compare(cfg, ["local", "central-lora"], [0, 1], out, progress=False)
    assert r2["rows"] == r1["rows"]


@pytest.mark.slow  # pre-trains the 2-block backbone and runs a tiny FedPer
def test_a_loaded_backbone_is_used_with_its_own_architecture(shared_root, data_root):
    """model.backbone with 2 blocks, config saying n_layer: 1: FedPer personalizes the backbone's own
    last block and the summary reports the backbone's architecture, not the config's."""
    from fedgen.tasks.text.task import TextTask

    two_layers = TextTask(config_from_dict(raw_for(shared_root, data_root, "fedgen"))).ensure_backbone(False)
    raw = tiny_raw(shared_root, data_root, rounds=1)
    assert raw["model"]["n_layer"] == 1
    raw["model"]["backbone"] = str(two_layers)
    raw["algorithm"] = {"name": "fedper"}
    exp = Experiment.build(config_from_dict(raw), progress=False)
    personal = exp.client_logic().personal_keys
    assert personal and all(k.startswith(("transformer.h.1.", "transformer.ln_f.")) for k in personal)
    s = run_experiment(config_from_dict(raw), shared_root / "own-architecture", progress=False)
    assert s["backbone"]["architecture"]["n_layer"] == 2
    raw["algorithm"]["fedper_personal_blocks"] = 2  # every block of the loaded backbone: nothing shared
    with pytest.raises(FedgenError, match="the backbone has 2 blocks"):
        run_experiment(config_from_dict(raw), shared_root / "own-architecture-2", progress=False)
    raw["model"]["context"] = 64  # the backbone was built for 32 tokens
    with pytest.raises(FedgenError, match="exceeds the backbone's maximum context 32"):
        Experiment.build(config_from_dict(raw), progress=False)
