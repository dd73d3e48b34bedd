"""The suite report's PNG figures (matplotlib, Agg). Pure plotting: every value is passed in by
:mod:`fedgen.report.suite`, which reads it from run outputs."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

import numpy as np

DPI = 80  # small files: the CPU suite's report is committed to the repository


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    _plt().close(fig)
    return out


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def upload_bars(panels: list[tuple[str, list[tuple[str, float, float | None]]]], out: Path) -> Path:
    """One log-scale bar chart per task: ``(title, [(algorithm, total upload bytes, x less than
    fedavg-full)])``. Algorithms that upload nothing get a grey stub labelled "0"."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.0), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels, strict=True):
        positive = [v for _, v, _ in bars if v > 0]
        stub = min(positive) / 30 if positive else 1.0
        heights = [v if v > 0 else stub for _, v, _ in bars]
        ax.bar([b[0] for b in bars], heights, color=["C0" if v > 0 else "lightgray" for _, v, _ in bars])
        ax.set_yscale("log")
        for i, (alg, v, red) in enumerate(bars):
            text = human_bytes(v) if v > 0 else "0\n(no upload)"
            if v > 0 and red and alg != "fedavg-full":
                text += f"\n{red:.1f}x less"
            ax.text(i, heights[i], text, ha="center", va="bottom", fontsize=7)
        ax.set_ylim(top=max(heights) * 60)
        ax.set_ylabel("total upload over the run, bytes (log)")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    return _save(fig, out)


Series = dict[str, list[list[tuple[int, float]]]]  # algorithm -> one [(round, value)] list per seed


def _band(ax, label: str, runs: list[list[tuple[int, float]]], color) -> None:
    by_round: dict[int, list[float]] = {}
    for run in runs:
        for r, v in run:
            by_round.setdefault(r, []).append(v)
    rounds = sorted(by_round)
    mean = [statistics.fmean(by_round[r]) for r in rounds]
    ax.plot(rounds, mean, marker="o", markersize=3, color=color, label=f"{label} (n={len(runs)})")
    if len(runs) > 1:
        lo = [min(by_round[r]) for r in rounds]
        hi = [max(by_round[r]) for r in rounds]
        ax.fill_between(rounds, lo, hi, color=color, alpha=0.2)


def convergence(
    panels: list[tuple[str, Series, dict[str, list[float]]]], title: str, out: Path, log_y: bool
) -> Path:
    """Metric vs round per algorithm: mean over seeds with a min-max band over seeds. Per panel:
    ``(ylabel, series, references)``; references (runs without rounds: local-only, centralized)
    are dashed lines at their final value's mean over seeds."""
    plt = _plt()
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    order = list(dict.fromkeys(a for _, series, refs in panels for a in [*series, *refs]))
    color = {a: f"C{i % 10}" for i, a in enumerate(order)}  # one colour per algorithm in every panel
    for ax, (ylabel, series, refs) in zip(axes.flat, panels, strict=False):
        for alg, runs in series.items():
            _band(ax, alg, runs, color[alg])
        for alg, vals in refs.items():
            ax.axhline(
                statistics.fmean(vals),
                color=color[alg],
                linestyle="--",
                linewidth=1,
                label=f"{alg} (final, no rounds)",
            )
        if log_y:
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("round")
        ax.set_ylabel(textwrap.fill(ylabel, 40), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def personalization(points: dict[str, list[tuple[float, float]]], label: str, title: str, out: Path) -> Path:
    """Per client: x = the global model's figure, y = the client's own model's (scatter, with the
    diagonal: below it personalization helped, lower is better); right: histogram of y - x."""
    plt = _plt()
    fig, (sc, hist) = plt.subplots(1, 2, figsize=(10.5, 4.4))
    every = [v for pts in points.values() for p in pts for v in p]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    pad = 0.03 * (hi - lo or 1.0)
    sc.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", linewidth=1, label="y = x")
    deltas = [y - x for pts in points.values() for x, y in pts]
    bins = list(np.histogram_bin_edges(deltas, bins=15)) if deltas else 15
    for i, (alg, pts) in enumerate(points.items()):
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        sc.scatter(xs, ys, s=14, alpha=0.7, color=f"C{i % 10}", label=alg)
        hist.hist([y - x for x, y in pts], bins=bins, alpha=0.5, color=f"C{i % 10}", label=alg)
    sc.set_xlabel(textwrap.fill(f"{label}, global model", 50), fontsize=8)
    sc.set_ylabel(textwrap.fill(f"{label}, client's own model", 40), fontsize=8)
    sc.legend(fontsize=7)
    sc.grid(alpha=0.3)
    hist.axvline(0, color="black", linewidth=1)
    hist.set_xlabel(
        textwrap.fill(f"change per client: own - global ({label}; < 0 is better)", 50), fontsize=8
    )
    hist.set_ylabel("clients")
    hist.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def ablation(
    values: list[int],
    metric: list[tuple[float, float] | None],
    upload: list[float | None],
    xlabel: str,
    ylabel: str,
    title: str,
    out: Path,
) -> Path:
    """Final metric (mean +- std over seeds) and total upload vs the swept value (log2 x)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    pts = [(x, m) for x, m in zip(values, metric, strict=True) if m is not None]
    if pts:
        a.errorbar(
            [x for x, _ in pts], [m[0] for _, m in pts], yerr=[m[1] for _, m in pts], marker="o", capsize=3
        )
    ups = [(x, u) for x, u in zip(values, upload, strict=True) if u]
    if ups:
        b.plot([x for x, _ in ups], [u for _, u in ups], marker="s", color="C1")
        b.set_yscale("log")
    for ax, yl in ((a, ylabel), (b, "total upload, bytes (log)")):
        if values and min(values) > 0 and max(values) / min(values) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(textwrap.fill(yl, 40), fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def is_png(path: Path) -> bool:
    """A non-empty file that starts with the PNG signature."""
    data = path.read_bytes()[:8] if path.is_file() else b""
    return data == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 8
