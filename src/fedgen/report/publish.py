"""Publish a suite: its report and figures with the run outputs the report is read from, and
nothing else (no adapters, checkpoints or client states), so ``fedgen report --run OUT`` rebuilds
the same ``report.md`` from the published files alone (``docs/results/`` is such a copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fedgen.core.errors import FedgenError
from fedgen.core.files import atomic_write_text
from fedgen.report.suite import write_suite_report
from fedgen.report.suite_parts import SUITE_FILE, find_parts, read_json, seed_runs
from fedgen.report.suite_sections import _small_copy, grids_shown

PART_FILES = ("compare.json", "compare.md")
RUN_FILES = ("summary.json", "metrics.jsonl", "personalization.json", "samples.json")


PUBLISHED_MARK = ".fedgen-published"  # marks a directory publish_suite made (and may move aside)


def _published(out: Path) -> bool:
    return (out / PUBLISHED_MARK).is_file()


def _free_name(path: Path) -> Path:
    i = 1
    while path.with_name(f"{path.name}.old-{i}").exists():
        i += 1
    return path.with_name(f"{path.name}.old-{i}")


def publish_suite(src: str | Path, out: str | Path, replace: bool = False) -> Path:
    """Copy what ``src``'s suite report reads to ``out`` and build the report there; return its path.

    Runs keep ``RUN_FILES``; the sample grids the report shows (main parts) are kept at native
    resolution. ``out`` must be new (or empty); nothing existing is deleted or overwritten: an
    earlier publication is moved aside first with ``replace=True`` (to ``OUT.old-N``), else refused.
    """
    src, out = Path(src), Path(out)
    parts = find_parts(src)
    if not parts:
        raise FedgenError(f"{src}: no finished compare outputs (compare.json) found")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not _published(out):
            raise FedgenError(
                f"{out}: exists and is not a published suite; nothing changed, choose a new directory"
            )
        if not replace:
            raise FedgenError(
                f"{out}: holds an earlier publication; nothing changed (pass --replace to move it aside)"
            )
        aside = _free_name(out)
        out.rename(aside)
        print(f"fedgen report --publish: moved the earlier publication {out} to {aside}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PUBLISHED_MARK, "published by fedgen report --publish\n")
    if (src / SUITE_FILE).is_file():
        shutil.copy2(src / SUITE_FILE, out / SUITE_FILE)
    for part in parts:
        dst = out / part.dir.relative_to(src)
        dst.mkdir(parents=True, exist_ok=True)
        for name in PART_FILES:
            if (part.dir / name).is_file():
                shutil.copy2(part.dir / name, dst / name)
        for alg in part.compare["table"]:
            for _, run in seed_runs(part, alg):
                _publish_run(run, dst / run.name, grids=part.kind == "main")
    return write_suite_report(out)  # built from the copied files only


def _publish_run(run: Path, dst: Path, grids: bool) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, dst / name)
    for png in grids_shown(read_json(run / "summary.json")).values() if grids else ():
        if (run / "samples" / png).is_file():
            (dst / "samples").mkdir(exist_ok=True)
            _small_copy(run / "samples" / png, dst / "samples" / png)
