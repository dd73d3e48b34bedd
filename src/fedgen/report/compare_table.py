"""The ``fedgen compare`` table in Markdown: one row per algorithm, mean +- std over seeds, the
upload reduction vs FedAvg-full, and the paper's reported figures labelled as the paper's."""

from __future__ import annotations


def markdown(
    table: dict[str, dict], title: str, columns: list[tuple[str, str]], notes: str, paper_figures: dict
) -> str:
    """The comparison table; ``paper_figures`` (the paper's, per algorithm) fill the last column."""
    head = [
        "algorithm",
        *[label for _, label in columns],
        "upload reduction vs fedavg-full",
        "seeds",
        "paper (reported, not ours)",
    ]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for alg, t in table.items():
        cells = [_fmt(t[key], key) for key, _ in columns]
        up = [k for k, _ in columns].index("upload_bytes_total")
        if t["upload_bytes_total"] and t["upload_bytes_total"]["mean"] == 0:
            cells[up] = f"0 ({t['upload_note']})"
        red = t["upload_reduction_vs_fedavg_full"]
        paper = "; ".join(f"{k} {v}" for k, v in (paper_figures or {}).get(alg, {}).items()) or "-"
        lines.append(
            "| "
            + " | ".join(
                [alg, *cells, f"{red:.1f}x" if red else "n/a", ",".join(map(str, t["seeds"])), paper]
            )
            + " |"
        )
    return "\n".join([*lines, "", notes])


def _fmt(cell: dict | None, key: str) -> str:
    if cell is None:
        return "n/a"
    if key == "upload_bytes_total":
        m = cell["mean"]
        return f"{m / 1e9:.3f} GB" if m >= 1e9 else f"{m / 1e6:.2f} MB"
    if key == "wall_seconds":
        return f"{cell['mean']:.0f} +- {cell['std']:.0f}"
    if key.startswith("kid") or key.startswith("class_acc"):
        return f"{cell['mean']:.4f} +- {cell['std']:.4f}"
    return f"{cell['mean']:.2f} +- {cell['std']:.2f}"
