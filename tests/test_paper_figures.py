"""The paper's reported figures: shipped as package data, equal to ../shared/paper/README.md, and shown
in the compare tables' paper column (labelled as the paper's, never as ours)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fedgen.commands.compare import aggregate
from fedgen.report.compare_table import markdown
from fedgen.tasks import paper
from fedgen.tasks.image import report as image_report
from fedgen.tasks.text import report as text_report

# The paper's method names (README tables) -> our registry names: an independent statement of the mapping.
METHODS = {
    "Centralized (full model)": "central-full",
    "Centralized (LoRA)": "central-lora",
    "Local-only (mean over clients)": "local",
    "Local-only": "local",
    "FedAvg (full model)": "fedavg-full",
    "FedPer": "fedper",
    "Ditto": "ditto",
    "FedGen-Edge": "fedgen",
}


@pytest.fixture(scope="module")
def paper_readme() -> str:
    """../shared/paper/README.md (or $FEDGEN_PAPER): fails under CI=true when missing, skips elsewhere."""
    path = Path(
        os.environ.get(
            "FEDGEN_PAPER", Path(__file__).resolve().parents[1] / ".." / "shared" / "paper" / "README.md"
        )
    )
    if not path.is_file():
        msg = f"the paper's README is not available at {path} (set FEDGEN_PAPER)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path.read_text()


def tables(md: str) -> dict[str, dict[str, float]]:
    """Every two-column markdown table ``| method | <metric> |`` of the README, by its metric header."""
    out: dict[str, dict[str, float]] = {}
    metric = None
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if not cells or len(cells) != 2:
            metric = None
            continue
        if cells[0] == "method":
            metric = cells[1]
            out[metric] = {}
        elif metric and not set(cells[0]) <= set("-: "):
            out[metric][METHODS[cells[0]]] = float(cells[1])
    return out


def test_the_packaged_figures_equal_the_papers_readme(paper_readme):
    t = tables(paper_readme)
    assert paper.methods("text") == t["PTB PPL"] and len(t["PTB PPL"]) == 7
    assert paper.methods("image") == t["CIFAR-10 FID"] and len(t["CIFAR-10 FID"]) == 7
    pers = paper.task("text")["personalization"]
    assert re.search(rf"{pers['global']}\s*->\s*personalized.*?{pers['personalized']}", paper_readme, re.S)
    comm = paper.task("text")["communication"]
    flat = " ".join(paper_readme.split())
    for quote in (comm["fedavg-full"], comm["fedgen"], comm["reduction"]):
        assert quote in flat
    assert str(comm["rounds"]) + " rounds" in flat
    assert "claims" in paper.source() and "../shared/paper/README.md" in paper.source()


@pytest.mark.parametrize("task, report", [("text", text_report), ("image", image_report)])
def test_the_compare_tables_paper_column_shows_the_papers_figures(task, report, paper_readme):
    expected = tables(paper_readme)["PTB PPL" if task == "text" else "CIFAR-10 FID"]
    cols = report.compare_columns
    rows = [{"algorithm": a, "seed": 0, **{k: 1.0 for k, _ in cols}} for a in expected]
    md = markdown(aggregate(rows, cols), "t", cols, "", report.paper)
    head = next(line for line in md.splitlines() if line.startswith("| algorithm"))
    assert head.rstrip(" |").endswith(paper.COLUMN)
    for alg, value in expected.items():
        line = next(line for line in md.splitlines() if line.startswith(f"| {alg} |"))
        assert f"{value:g}" in line.rstrip(" |").rsplit("|", 1)[1]  # the last column, the paper's
    fedgen = next(line for line in md.splitlines() if line.startswith("| fedgen |"))
    if task == "text":
        assert "92.5 -> 81.3" in fedgen and "76 MB" in fedgen and "(as quoted)" in fedgen
