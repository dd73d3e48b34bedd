"""End-to-end FedGen-Edge on a real PTB subset: learning, resume, determinism, accounting, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel

from conftest import tiny_raw
from fedgen.cli import main
from fedgen.config import config_from_dict
from fedgen.core.errors import CheckpointError, ConfigError
from fedgen.experiment.build import Experiment
from fedgen.experiment.registry import check_config
from fedgen.experiment.run import run_experiment
from fedgen.experiment.summary import SUMMARY_FIELDS, task_fields
from fedgen.fl.server import sample_clients
from fedgen.fl.wire import serialize
from fedgen.models.gpt import load_backbone
from fedgen.models.lora import read_adapter
from fedgen.tasks.text.task import TextTask


def backbone_path(cfg):
    return TextTask(cfg).backbone_path()


pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def workdir(shared_root, data_root) -> Path:
    return shared_root


@pytest.fixture(scope="module")
def finished(tiny_text_run) -> tuple[Path, dict]:
    """One uninterrupted 3-round run with personalization (conftest), shared by several tests."""
    return tiny_text_run


def test_a_short_federation_on_real_ptb_lowers_perplexity(finished):
    _, s = finished
    print({k: s[k] for k in ("test_ppl_initial", "test_ppl_final", "local_test_ppl_global_mean")})
    assert s["valid_ppl_final"] < s["valid_ppl_initial"]
    assert s["test_ppl_final"] < s["test_ppl_initial"]
    assert s["local_test_ppl_global_mean"] < s["local_test_ppl_initial_mean"]


def test_summary_follows_the_documented_schema_and_run_dir_layout(finished):
    run, s = finished
    assert set(SUMMARY_FIELDS) <= set(s)
    assert set(task_fields(["valid", "test"], ("ppl",), "ppl")) <= set(s)
    assert s["algorithm"] == "fedgen" and s["rounds"] == 3
    assert "offline substitute" in s["backbone"]["source"]
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "partition.json",
        "report.md",
        "personalization.json",
        "convergence.png",
        "global/adapter_model.safetensors",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    samples = json.loads((run / "samples.json").read_text())
    assert set(samples) == {"global", "client 0 (personalized)", "client 1 (personalized)"}
    assert all(t.startswith(("the stock market", "the company said")) for ts in samples.values() for t in ts)
    assert "## Samples" in (run / "report.md").read_text()
    assert len(list((run / "clients").iterdir())) == 8
    # only the last keep_checkpoints rounds are kept
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["round_0002", "round_0003"]


def test_upload_accounting_counts_the_serialized_bytes_of_every_update(finished):
    run, s = finished
    state = read_adapter(run / "global")
    per_update = len(serialize(state))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    for r in rows:  # up: updates received; down: the global state to every sampled client
        assert r["upload_bytes"] == per_update * r["received"]
        assert r["download_bytes"] == per_update * len(r["sampled"])
        assert r["upload_bytes_formula"] == s["adapter_params"] * 4 * r["received"]
    assert s["upload_bytes_total"] == sum(r["upload_bytes"] for r in rows)
    assert s["bytes_per_upload"] == per_update
    # safetensors adds only a small header to the raw fp32 payload
    assert 0 < per_update - s["adapter_params"] * 4 < 2048


def test_clients_per_round_follow_fraction_and_sampling_is_seeded(finished):
    run, _ = finished
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
    for r in rows:
        assert r["clients"] == sample_clients(8, 0.5, 0, r["round"])
    assert sample_clients(100, 0.1, 0, 1) == sample_clients(100, 0.1, 0, 1)
    assert len(sample_clients(100, 0.1, 0, 1)) == 10
    assert sample_clients(100, 0.1, 0, 1) != sample_clients(100, 0.1, 0, 2)


@pytest.mark.slow  # a second personalized 3-round run, stopped and resumed
def test_resume_after_a_kill_gives_bit_identical_adapters(finished, workdir, data_root):
    full, _ = finished
    cfg = config_from_dict(tiny_raw(workdir, data_root, personalize=True, rounds=3))  # as `finished`
    out = run_experiment(cfg, workdir / "killed", stop_after=1, progress=False)
    assert out["stopped_after_round"] == 1
    assert not (workdir / "killed" / "summary.json").exists()
    resumed = run_experiment(None, workdir / "killed", resume=True, progress=False)
    assert resumed["rounds"] == 3
    a, b = read_adapter(full / "global"), read_adapter(workdir / "killed" / "global")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for client in ("client_000", "client_007"):
        pa, pb = (
            read_adapter(full / "clients" / client),
            read_adapter(workdir / "killed" / "clients" / client),
        )
        assert all(torch.equal(pa[k], pb[k]) for k in pa)

    def strip(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]

    assert strip(full) == strip(workdir / "killed")


@pytest.mark.slow  # a second 3-round run
def test_a_different_seed_gives_different_adapters(finished, workdir, data_root):
    full, _ = finished
    raw = tiny_raw(workdir, data_root, rounds=3)  # the same round as `finished`'s last checkpoint
    raw["seed"] = 1
    raw["personalize"] = {"enabled": False}
    run_experiment(config_from_dict(raw), workdir / "seed1", progress=False)
    a, b = (
        read_adapter(full / "checkpoints" / "round_0003"),
        read_adapter(workdir / "seed1" / "global"),
    )
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_saved_adapters_load_with_peft_onto_the_backbone(finished):
    run, _ = finished
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    base, vocab, _ = load_backbone(backbone_path(cfg))
    x = torch.from_numpy(vocab.encode(["the", "company", "said"])).unsqueeze(0)
    with torch.no_grad():
        before = base(input_ids=x).logits
    model = PeftModel.from_pretrained(base, str(run / "clients" / "client_003"))
    with torch.no_grad():
        after = model(input_ids=x).logits
    assert not torch.equal(before, after)  # the trained adapter changes the output
    sd = read_adapter(run / "clients" / "client_003")
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in sd)
    assert {k.split(".")[-3] for k in sd} == {"q_proj", "v_proj"}


def test_local_training_leaves_the_backbone_untouched(workdir, data_root):
    exp = Experiment.build(config_from_dict(tiny_raw(workdir, data_root)), progress=False)
    frozen = {n: p.detach().clone() for n, p in exp.params.model.named_parameters() if "lora_" not in n}
    res = exp.client.fit(exp.init, exp.data[0], seed=0)
    assert res.num_examples == len(exp.data[0].train) > 0
    for n, p in exp.params.model.named_parameters():
        if "lora_" in n:
            continue
        assert p.grad is None and not p.requires_grad, n
        assert torch.equal(p, frozen[n]), n


def test_cli_reports_missing_data_with_what_to_do(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output": {"root": str(tmp_path)}}))
    rc = main(["run", "--config", str(cfg), "--data-dir", str(tmp_path / "nowhere"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "fedgen data fetch ptb" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_refuses_to_overwrite_a_run_and_resume_needs_a_run_dir(finished, tmp_path, capsys):
    run, _ = finished
    assert main(["run", "--config", str(run / "config.yaml"), "--out", str(run), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        run_experiment(None, tmp_path / "empty", resume=True, progress=False)


def test_cli_generates_text_from_global_and_personalized_adapters(finished, capsys):
    run, _ = finished
    assert main(["generate", "--run", str(run), "--prompt", "the market", "--max-tokens", "8"]) == 0
    assert main(["generate", "--run", str(run), "--client", "2", "--prompt", "the market", "--num", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("the market") for line in lines)


def test_cli_report_rewrites_the_report_of_a_finished_run(finished, capsys):
    run, _ = finished
    (run / "report.md").unlink()
    assert main(["report", "--run", str(run)]) == 0
    assert "| PTB test PPL (word-level) |" in capsys.readouterr().out and (run / "report.md").is_file()


def test_cli_data_partition_prints_statistics_and_topics(shared_root, data_root, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(shared_root, data_root)))
    assert main(["data", "partition", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "dominant_topic_share_mean" in out and out.count("topic ") >= 4


def test_cli_compare_rejects_unknown_algorithms_and_bad_seeds(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert main(["compare", "--config", str(cfg), "--algorithms", "fedgen,fedsgd"]) == 2
    assert main(["compare", "--config", str(cfg), "--seeds", "0,one"]) == 2
    err = capsys.readouterr().err
    assert "fedsgd" in err and "--seeds" in err


@pytest.mark.slow  # pre-trains its own backbone, then runs
def test_a_public_ptb_slice_can_pretrain_the_backbone_and_no_client_holds_it(shared_root, data_root):
    from fedgen.data.partition import make_documents
    from fedgen.data.ptb import load_ptb
    from fedgen.tasks.text.data import ptb_documents

    raw = tiny_raw(shared_root, data_root, rounds=1)
    raw["data"]["public_docs"] = 30
    raw["pretrain"].update(sources=["ptb-public"], steps=20)
    raw["personalize"] = {"enabled": False}
    cfg = config_from_dict(raw)
    ptb = load_ptb(data_root)
    public, docs = ptb_documents(cfg, ptb)
    every = make_documents(ptb.train, 20)
    assert public == every[:30] and docs == every[30:150]  # consecutive, disjoint slices of PTB train
    s = run_experiment(cfg, shared_root / "public-slice", progress=False)
    assert s["rounds"] == 1 and backbone_path(cfg).name.endswith("-ptb30x20")
    meta = json.loads((backbone_path(cfg) / "fedgen_backbone.json").read_text())
    assert meta["corpus"]["sources"] == ["ptb-public"] and meta["corpus"]["sentences"] == 600


def test_ptb_public_source_needs_a_public_slice(shared_root, data_root):
    raw = tiny_raw(shared_root, data_root)
    raw["pretrain"]["sources"] = ["ptb-public"]
    with pytest.raises(ConfigError, match="public_docs"):
        check_config(config_from_dict(raw))
