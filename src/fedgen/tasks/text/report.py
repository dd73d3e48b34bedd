"""The text task's report: one run's table, report.md and plot; its columns in ``fedgen compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedgen.core.files import atomic_write_text
from fedgen.models.causal_lm import EMBEDDED
from fedgen.tasks import paper as paper_figures
from fedgen.tasks import reporting
from fedgen.tasks.text.pretrain import SOURCE_LABEL


def _ppl(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def result_table(s: dict) -> str:
    """The headline table (markdown) of one run, as printed at the end of ``fedgen run``."""
    b = s["backbone"]
    local = f"{_ppl(s['local_test_ppl_initial_mean'])} (backbone)"
    if s.get("local_test_ppl_global_mean") is not None:
        local += f" -> {_ppl(s['local_test_ppl_global_mean'])} (global)"
    if s.get("local_test_ppl_personalized_mean") is not None:
        local += f" -> {_ppl(s['local_test_ppl_personalized_mean'])} (personalized)"
    if s.get("local_test_ppl_personalized_paper_mean") is not None:
        local += f"; paper's recipe (1 more epoch): {_ppl(s['local_test_ppl_personalized_paper_mean'])}"
    work, upload = reporting.clients_and_upload(s)
    rows = [
        ("Algorithm", s["algorithm"]),
        (
            "Backbone",
            f"{b['source']} ({b['params']:,} params; tokenizer: {b.get('tokenizer', 'word-level')})",
        ),
        (
            "Trained parameters",
            f"{s['trained_params']:,}" + (" (LoRA q,v)" if s.get("adapter_params") else " (full)"),
        ),
        ("Clients", work),
        ("PTB valid PPL (word-level)", f"{_ppl(s['valid_ppl_initial'])} -> {_ppl(s['valid_ppl_final'])}"),
        ("PTB test PPL (word-level)", f"{_ppl(s['test_ppl_initial'])} -> {_ppl(s['test_ppl_final'])}"),
        (
            "PTB test PPL per token",
            f"{_ppl(s.get('test_token_ppl_initial'))} -> {_ppl(s.get('test_token_ppl_final'))}",
        ),
        ("Clients' local-test PPL (mean)", local),
    ]
    return reporting.table(rows, s, upload)


def plot_convergence(run_dir: Path, metrics: list[dict]) -> Path | None:
    """PNG of PTB valid/test PPL and mean local-test PPL per round."""
    return reporting.plot_convergence(
        run_dir,
        metrics,
        [("valid_ppl", "PTB valid"), ("test_ppl", "PTB test")],
        [
            ("local_test_ppl", "clients' local test, global"),
            ("local_test_ppl_personalized", "clients' local test, personalized"),
        ],
        "perplexity",
    )


def write_report(run_dir: Path, summary: dict, metrics: list[dict], pers: dict | None) -> Path:
    """Write report.md (result table, personalization distribution, convergence plot)."""
    plot = plot_convergence(run_dir, metrics)
    parts = [
        f"# Run `{summary['name']}`: {summary['algorithm']} (seed {summary['seed']})",
        "",
        result_table(summary),
        "",
    ]
    if "fedgen-pretrain" in str(summary["backbone"]["source"]):
        parts += [
            "> Backbone: **pretrained by fedgen offline** on public text no client holds "
            "(not OpenAI's GPT-2 weights); see the backbone's fedgen_backbone.json.",
            "",
        ]
    parts += reporting.personalization_section(pers, "local test PPL per client", "PPL")
    if plot:
        parts += ["## Convergence", "", f"![convergence]({plot.name})", ""]
    samples_file = run_dir / "samples.json"
    if samples_file.is_file():
        import json

        parts += ["## Samples (temperature 1.0, top-k 40)", ""]
        for who, texts in json.loads(samples_file.read_text()).items():
            parts += [f"**{who}**", ""] + [f"- {t}" for t in texts] + [""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    return out


# ------------------------------------------------------------------------------ fedgen compare

compare_columns = [
    ("valid_ppl_final", "PTB valid PPL"),
    ("test_ppl_final", "PTB test PPL"),
    ("local_test_ppl_global_mean", "local PPL (global)"),
    ("local_test_ppl_personalized_mean", "local PPL (personalized, validated)"),
    ("local_test_ppl_personalized_paper_mean", "local PPL (personalized, paper's recipe)"),
    ("upload_bytes_total", "upload total"),
    ("wall_seconds", "wall s"),
]

# The paper's reported figures (fedgen/tasks/paper.json, copied from ../shared/paper/README.md), kept
# apart from ours. The quoted traffic (16.2 GB for FedAvg over 500 rounds with 85M parameters) equals
# 500 rounds x 10 clients x 405,000 params x 4 B x 2 (upload + download): a ~0.4M-parameter LoRA
# adapter's traffic. An 85M-parameter model's upload alone would be 1.7 TB
# (tests/test_algorithms.py::test_paper_traffic_arithmetic), so it is printed "as quoted".
paper: dict[str, dict] = paper_figures.compare_figures("text")

# What the suite report (fedgen.report.suite) plots for this task, all read from run outputs.
suite = {
    "metric": ("test_ppl_final", "PTB test PPL"),  # compare.json column, beside the paper's figure
    # algorithms without a global model: the mean over clients of their own models (the paper's
    # Local-only figure is such a mean)
    "fallback": ("local_test_ppl_personalized_mean", "mean local-test PPL, clients' own models"),
    "convergence": [("test_ppl", "PTB test PPL, global model"), ("valid_ppl", "PTB valid PPL, global model")],
    "client_metric": ("ppl", "local-test PPL"),  # personalization.json
    "log_y": True,
}


def backbone_label(backbone: str) -> str:
    """What the configured text backbone is, for every table built on it (offline substitutes say so)."""
    if backbone == "auto":
        return (
            "The backbone is a GPT-2-architecture model pre-trained by fedgen offline on public text no "
            f"client holds: {SOURCE_LABEL}."
        )
    if backbone in EMBEDDED:
        e = EMBEDDED[backbone]
        wheel = f"a real pretrained LM from the PyPI wheel {e.dist}"
        return f"The backbone is {e.label}, {wheel}: {e.description}."
    return f"The backbone is `{backbone}`, a pretrained causal LM loaded with transformers."


def compare_notes(cfg: Any) -> str:
    return (
        "Mean +- std over seeds. PPL: word-level perplexity (lower is better). 'local PPL': mean over "
        "clients of the PPL on their own 20% test split, with the global model and with each client's "
        "personalized model (n/a where the algorithm has none). Upload: actual serialized bytes of all "
        "client updates over the run. 'backbone': the frozen backbone with a zero adapter (no fine-tuning). "
        + backbone_label(cfg.model.backbone)
    )


def flatten(summary: dict) -> dict:
    """The compare table's task columns of one run's summary."""
    return {key: summary.get(key) for key, _ in compare_columns}
