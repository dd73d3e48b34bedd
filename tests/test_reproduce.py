"""``fedgen reproduce`` plans the paper's experiments; a tiny finished suite gives a report with every
section, real PNG figures and numbers read from the run outputs; ``fedgen report`` rebuilds it."""

from __future__ import annotations

import json
import re

import pytest

from conftest import tiny_raw
from fedgen.cli import main
from fedgen.commands.reproduce import plan, plan_rows, run_suite
from fedgen.config import config_from_dict
from fedgen.core.errors import FedgenError
from fedgen.experiment.registry import algorithm_names
from fedgen.report.figures import is_png
from fedgen.report.publish import publish_suite
from fedgen.report.suite import SECTIONS


def test_the_paper_suites_dry_run_plan_has_the_papers_settings(tmp_path, capsys):
    rows = plan_rows(plan("paper"), [0, 1, 2])
    main_rows = [r for r in rows if r["part"] in ("text", "image")]
    for task in ("text", "image"):
        mine = [r for r in main_rows if r["task"] == task]
        assert {(r["algorithm"], r["seed"]) for r in mine} == {
            (a, s) for a in algorithm_names() for s in (0, 1, 2)
        }
        for r in mine:
            assert (r["K"], r["C"], r["m"], r["E"], r["batch"]) == (100, 0.1, 10, 5, 32)
            assert r["r"] == (8 if task == "text" else 4)
        assert {r["rounds"] for r in mine} == {
            500 if task == "text" else 200
        }  # image: not in the paper's text
        for kind, key, values in (("rank", "r", [2, 4, 8, 16, 32]), ("epochs", "E", [1, 2, 5, 10, 20])):
            sweep = [r for r in rows if r["part"].startswith(f"{task}-{kind}-")]
            assert {r["algorithm"] for r in sweep} == {"fedgen"}
            assert sorted({r[key] for r in sweep}) == values
            assert all(r["seed"] in (0, 1, 2) for r in sweep) and len(sweep) == 15
            base = 8 if (task, kind) == ("text", "rank") else 4 if kind == "rank" else 5
            assert all(
                r["runs_in"] == task and not r["new"] for r in sweep if r[key] == base
            )  # not run twice
    assert main(["reproduce", "--suite", "paper", "--dry-run", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "| text-rank-r16 | text | fedgen | 0 | 500 | 100 | 0.1 | 10 | 5 | 32 | 16 |" in out
    assert "| image-epochs-E20 | image | fedgen | 2 | 200 | 100 | 0.1 | 10 | 20 | 32 | 4 |" in out
    assert re.search(r"90 runs to do \(12 shared", out)
    assert not (tmp_path / "s").exists()  # a dry run runs nothing


def test_the_cpu_suite_is_smollm2_and_the_cgan_with_the_small_backbone_as_an_extra_main_table():
    parts = {p.name: p for p in plan("cpu")}
    assert parts["text"].cfg.model.backbone == "smollm2-135m" and parts["image"].cfg.task == "image"
    small = parts["text-small"]  # our own offline-pretrained GPT-2: a main comparison, no sweeps
    assert (small.task, small.kind, small.cfg.model.backbone) == ("text", "main", "auto")
    assert not [n for n in parts if n.startswith("text-small-")]
    assert {p.kind for p in plan("cpu", kinds=("rank",))} == {"rank"}  # --only rank: no extras
    sweeps = [p for p in parts.values() if p.kind != "main" and p.same_as is None]
    assert sweeps and not any(p.cfg.personalize.enabled for p in sweeps)  # sweeps score the global model


def test_every_text_table_names_its_backbone_and_labels_our_offline_one_as_a_substitute():
    from fedgen.tasks.text.report import compare_notes

    parts = {p.name: p for p in plan("cpu")}
    assert "SmolLM2-135M-Instruct, a real pretrained LM" in compare_notes(parts["text"].cfg)
    assert "pre-trained by fedgen offline" in compare_notes(parts["text-small"].cfg)
    assert "offline substitute" in compare_notes(parts["text-small"].cfg)


@pytest.mark.slow  # 8 tiny runs (2 algorithms x 2 seeds + sweeps): ~1-2 min
@pytest.mark.realdata
def test_a_tiny_suite_reports_every_section_from_its_outputs(shared_root, data_root, tmp_path, capsys):
    cfg = config_from_dict(tiny_raw(shared_root, data_root, personalize=True))  # r=4, E=1, 2 rounds
    parts = plan(configs={"text": cfg}, algorithms=["fedgen", "local"], ranks=(2, 4), epochs=(1, 2))
    assert [(p.name, p.same_as) for p in parts] == [
        ("text", None),
        ("text-rank-r2", None),
        ("text-rank-r4", "text"),
        ("text-epochs-E1", "text"),
        ("text-epochs-E2", None),
    ]
    out = tmp_path / "suite"
    report = run_suite(parts, [0, 1], out, progress=False, command="test")
    md = report.read_text()
    for name in SECTIONS:
        assert f"## {name}\n" in md
    figs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert {f.split("/")[1].split("-")[0].removesuffix(".png") for f in figs} >= {
        "upload",
        "convergence",
        "personalization",
        "ablation",
    }
    assert all(is_png(out / f) for f in figs)
    meta = json.loads((out / "suite.json").read_text())
    assert meta["status"] == "finished" and meta["wall_seconds"] > 0

    # numbers come from the outputs: the main table's cell is compare.json's mean +- std
    table = json.loads((out / "text" / "compare.json").read_text())["table"]
    ppl = table["fedgen"]["test_ppl_final"]
    assert f"| fedgen | {ppl['mean']:.2f} +- {ppl['std']:.2f} | 0,1 | 85.2 |" in md
    local = table["local"]["local_test_ppl_personalized_mean"]
    assert f"| local | {local['mean']:.2f} +- {local['std']:.2f} (b) | 0,1 | 142.3 |" in md
    r2 = json.loads((out / "text-rank-r2" / "compare.json").read_text())["table"]["fedgen"]
    assert re.search(rf"\| 2 \| {r2['test_ppl_final']['mean']:.2f} \+- [0-9.]+ \|.*\| text-rank-r2 \|", md)
    assert re.search(rf"\| 4 \| {ppl['mean']:.2f} \+- [0-9.]+ \|.*\| text \|", md)  # r=4: the main runs
    samples = json.loads((out / "text" / "fedgen-seed0" / "samples.json").read_text())
    assert next(iter(samples.values()))[0] in md
    assert "No image runs with sample grids in this suite." in md

    # `fedgen report --run SUITE` rebuilds the same report; a plain compare dir is a suite too
    report.unlink()
    assert main(["report", "--run", str(out)]) == 0
    assert report.read_text() == md
    assert main(["report", "--run", str(out / "text-rank-r2")]) == 0
    assert "## 1. Main results" in (out / "text-rank-r2" / "report.md").read_text()

    # --publish copies the report with the outputs it reads and no model weights; it rebuilds the same
    pub = tmp_path / "published" / "suite"
    assert main(["report", "--run", str(out), "--publish", str(pub)]) == 0
    assert (pub / "report.md").read_text() == md
    kept = {f.name for f in pub.rglob("*") if f.is_file() and f.parent.parent != pub / "figures"}
    assert {"suite.json", "compare.json", "summary.json", "metrics.jsonl"} <= kept
    assert not [f for f in pub.rglob("*") if f.suffix in (".safetensors", ".pt", ".bin")]
    (pub / "report.md").unlink()
    assert main(["report", "--run", str(pub)]) == 0
    assert (pub / "report.md").read_text() == md
    with pytest.raises(FedgenError, match="not a published suite"):
        publish_suite(out, out / "text")
    capsys.readouterr()
