"""The results committed under ``docs/results/`` are what ``fedgen report`` builds from the run
outputs committed beside them: rebuilding a copy gives the committed ``report.md`` byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedgen.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
PUBLISHED = sorted(p.parent for p in RESULTS.glob("*/report.md"))


def test_results_are_committed():
    assert PUBLISHED, f"no published suite under {RESULTS}"


@pytest.mark.parametrize("suite", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_a_committed_report_is_rebuilt_exactly_from_its_committed_run_outputs(suite, tmp_path, capsys):
    copy = tmp_path / suite.name
    shutil.copytree(suite, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.md").unlink()
    assert main(["report", "--run", str(copy)]) == 0
    capsys.readouterr()
    assert (copy / "report.md").read_text() == (suite / "report.md").read_text()
    assert sorted(p.name for p in (copy / "figures").iterdir()) == sorted(
        p.name for p in (suite / "figures").iterdir()
    )
    assert not [f for f in suite.rglob("*") if f.suffix in (".safetensors", ".pt", ".bin")]  # no weights
