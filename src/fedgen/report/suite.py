"""``fedgen report --run SUITE``: one ``report.md`` (+ ``figures/*.png``) over a suite of ``fedgen
compare`` outputs: a directory holding ``compare.json`` itself, or one compare directory per part
(``fedgen reproduce`` writes such a suite with a ``suite.json`` naming each part: main comparison,
rank ablation or local-epoch ablation, per task).

Sections: 1 main tables (ours, mean +- std over seeds, beside the paper's), 2 total upload,
3 convergence, 4 personalization per client, 5 rank ablation, 6 local-epoch ablation, 7 CIFAR-10
sample grids, 8 text samples. Every number is read from run outputs (compare.json,
metrics.jsonl, personalization.json, summary.json, samples); the paper's figures come from
:mod:`fedgen.tasks.paper` and are labelled as the paper's.
"""

from __future__ import annotations

from pathlib import Path

from fedgen.core.errors import FedgenError
from fedgen.core.files import atomic_write_text
from fedgen.report import suite_sections as sec
from fedgen.report.suite_parts import SUITE_FILE, find_parts, read_json
from fedgen.tasks import paper as paper_figs

SECTIONS = [
    "1. Main results",
    "2. Total upload",
    "3. Convergence",
    "4. Personalization",
    "5. Rank ablation",
    "6. Local-epoch ablation",
    "7. CIFAR-10 sample grids",
    "8. Text samples",
]


def write_suite_report(root: str | Path) -> Path:
    """Write ``root/report.md`` and ``root/figures/*.png`` from the suite's outputs; return the path."""
    root = Path(root)
    parts = find_parts(root)
    if not parts:
        raise FedgenError(f"{root}: no finished compare outputs (compare.json) found")
    fig_dir = root / "figures"
    fig_dir.mkdir(exist_ok=True)
    mains = [p for p in parts if p.kind == "main"]
    meta = read_json(root / SUITE_FILE) or {}
    head = [f"# Results: {root.name}", ""]
    if meta.get("command"):
        head += [f"Command: `{meta['command']}`", ""]
    if meta.get("wall_seconds") is not None:
        head += [
            f"Wall time: {meta['wall_seconds'] / 60:.1f} min ({meta.get('status', 'unknown status')})",
            "",
        ]
    head += [
        "Every number below is read from the runs' outputs (compare.json, metrics.jsonl, "
        "personalization.json, summary.json, samples). The paper's figures are its claims, not ours: "
        f"{paper_figs.source()}",
        "",
    ]
    body = {
        SECTIONS[0]: [x for p in mains for x in sec.main_tables(p)],
        SECTIONS[1]: sec.upload(mains, fig_dir),
        SECTIONS[2]: [x for p in mains for x in sec.convergence(p, fig_dir)],
        SECTIONS[3]: [x for p in mains for x in sec.personalization(p, fig_dir)],
        SECTIONS[4]: sec.ablation(parts, "rank", fig_dir),
        SECTIONS[5]: sec.ablation(parts, "epochs", fig_dir),
        SECTIONS[6]: sec.sample_grids(mains, fig_dir),
        SECTIONS[7]: sec.text_samples(mains),
    }
    out = root / "report.md"
    atomic_write_text(
        out, "\n".join(head + [x for name, lines in body.items() for x in (f"## {name}", "", *lines)])
    )
    return out
