"""Pieces both reports share: the clients/upload rows and the convergence plot."""

from __future__ import annotations

from pathlib import Path


def mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.3f} MB"


def clients_and_upload(s: dict) -> tuple[str, str]:
    """The "Clients" and "Upload" cells of a result table."""
    if s["rounds"]:
        work = f"K={s['num_clients']}, {s['clients_per_round']} per round, {s['rounds']} rounds"
        per = s.get("bytes_per_upload")  # None when no update was ever aggregated (every round skipped)
        upload = (
            f"{'n/a' if per is None else format(per, ',')} bytes per client per round "
            f"(formula: {s['upload_params'] * 4:,}); total {mb(s['upload_bytes_total'])}"
        )
    else:
        work = (
            f"K={s['num_clients']}, {s['local_epochs_equivalent']} epochs (same sample passes as federated)"
        )
        upload = s.get("upload_note") or "0"
    return work, upload


def table(rows: list[tuple[str, str]], s: dict, upload: str) -> str:
    """The result table (markdown): ``rows``, then the traffic and wall-time rows every run has."""
    rows = [
        *rows,
        ("Upload", upload),
        ("Download total", mb(s["download_bytes_total"])),
        ("Wall time", f"{s['wall_seconds']:.0f} s"),
    ]
    return "\n".join(["| quantity | measured |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def plot_convergence(
    run_dir: Path,
    metrics: list[dict],
    global_series: list[tuple[str, str]],
    client_series: list[tuple[str, str]],
    ylabel: str,
) -> Path:
    """``convergence.png``: global figures (``key, label``) and client means (dist keys) per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in global_series:
        pts = [(m["round"], m[key]) for m in metrics if key in m]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    for key, label in client_series:
        pts = [(m["round"], m[key]["mean"]) for m in metrics if key in m]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="s", label=label + " (mean)")
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title("convergence")
    ax.grid(alpha=0.3)
    ax.legend()
    out = run_dir / "convergence.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def personalization_section(pers: dict | None, what: str, figure: str) -> list[str]:
    """report.md lines: the per-client figure's distribution for the global model and each recipe."""
    if not pers:
        return []
    lines = [
        f"## Personalization ({what})",
        "",
        "| model | mean | median | p10 | p90 |",
        "|---|---|---|---|---|",
    ]
    names = {
        "personalized": "personalized (validated recipe)",
        "paper_recipe": "personalized (paper's recipe)",
    }
    for key in ("global", "personalized", "paper_recipe"):
        if key in pers:
            cells = " | ".join(f"{pers[key][q]:.2f}" for q in ("mean", "median", "p10", "p90"))
            lines.append(f"| {names.get(key, key)} | {cells} |")
    if "improved_fraction" in pers:
        lines += ["", f"Personalization lowered {figure} for {pers['improved_fraction']:.0%} of clients."]
    if "kept_global_fraction" in pers:
        lines += [
            f"The validated recipe kept the global model for {pers['kept_global_fraction']:.0%} of clients."
        ]
    return [*lines, ""]
