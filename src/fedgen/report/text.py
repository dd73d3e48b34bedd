"""Markdown report and convergence plot of one text run."""

from __future__ import annotations

from pathlib import Path


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.3f} MB"


def result_table(s: dict) -> str:
    """The headline table (markdown), as printed at the end of ``fedgen run``."""
    b = s["backbone"]
    rows = [
        ("Backbone", f"{b['source']} ({b['params']:,} params)"),
        ("Adapter (LoRA q,v)", f"{s['adapter_params']:,} trainable params"),
        ("Clients", f"K={s['num_clients']}, {s['clients_per_round']} per round, {s['rounds']} rounds"),
        ("PTB valid PPL", f"{s['valid_ppl_initial']:.2f} -> {s['valid_ppl_final']:.2f}"),
        ("PTB test PPL", f"{s['test_ppl_initial']:.2f} -> {s['test_ppl_final']:.2f}"),
        (
            "Clients' local-test PPL (mean)",
            f"{s['local_test_ppl_initial_mean']:.2f} (backbone) -> "
            f"{s['local_test_ppl_global_mean']:.2f} (global)"
            + (
                f" -> {s['local_test_ppl_personalized_mean']:.2f} (personalized)"
                if s.get("local_test_ppl_personalized_mean") is not None
                else ""
            ),
        ),
        (
            "Upload per client per round",
            f"{s['bytes_per_upload']:,} bytes (formula 3.5: {s['adapter_params'] * 4:,})",
        ),
        ("Upload total", _mb(s["upload_bytes_total"])),
        ("Download total", _mb(s["download_bytes_total"])),
        ("Wall time", f"{s['wall_seconds']:.0f} s"),
    ]
    lines = ["| quantity | measured |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def plot_convergence(run_dir: Path, metrics: list[dict]) -> Path | None:
    """PNG of PTB valid/test PPL and mean local-test PPL per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("valid_ppl", "PTB valid"), ("test_ppl", "PTB test")):
        pts = [(m["round"], m[key]) for m in metrics if key in m]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    pts = [(m["round"], m["local_test_ppl"]["mean"]) for m in metrics if "local_test_ppl" in m]
    if pts:
        ax.plot(*zip(*pts, strict=True), marker="s", label="clients' local test (mean)")
    ax.set_xlabel("round")
    ax.set_ylabel("perplexity")
    ax.set_title("FedGen-Edge convergence (global adapter)")
    ax.grid(alpha=0.3)
    ax.legend()
    out = run_dir / "convergence.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(run_dir: Path, summary: dict, metrics: list[dict], pers: dict | None) -> Path:
    """Write report.md (result table, personalization distribution, convergence plot)."""
    plot = plot_convergence(run_dir, metrics)
    parts = [f"# FedGen-Edge run `{summary['name']}` (seed {summary['seed']})", "", result_table(summary), ""]
    if "fedgen-pretrain" in str(summary["backbone"]["source"]):
        parts += [
            "> Backbone: **pretrained by fedgen offline** on public text no client holds "
            "(not OpenAI's GPT-2 weights); see the backbone's fedgen_backbone.json.",
            "",
        ]
    if pers:
        parts += [
            "## Personalization (local test PPL per client)",
            "",
            "| adapter | mean | median | p10 | p90 |",
            "|---|---|---|---|---|",
        ]
        for key in ("global", "personalized"):
            d = pers[key]
            parts.append(f"| {key} | {d['mean']:.2f} | {d['median']:.2f} | {d['p10']:.2f} | {d['p90']:.2f} |")
        parts += ["", f"Personalization lowered PPL for {pers['improved_fraction']:.0%} of clients.", ""]
    if plot:
        parts += ["## Convergence", "", f"![convergence]({plot.name})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(parts))
    return out
