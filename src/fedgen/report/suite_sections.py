"""The suite report's sections, each a list of markdown lines (figures written into ``fig_dir``).
Every number comes from a part's run outputs; the paper's figures from :mod:`fedgen.tasks.paper`."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fedgen.config import config_from_dict
from fedgen.report import figures
from fedgen.report.compare_table import markdown
from fedgen.report.suite_parts import (
    Part,
    algorithms,
    headline,
    mean_std,
    read_json,
    read_metrics,
    run_dirs,
    seed_runs,
    task_spec,
)
from fedgen.tasks import paper as paper_figs

SAMPLE_ORDER = ["central-full", "central-lora", "fedgen", "fedavg-full", "local", "ditto", "fedper"]
# The sample grids a suite report shows (each ~0.2 MB): central, FedGen-Edge's global model and its
# personalized clients, FedAvg-full and one local-only client. None: every grid the run drew.
GRIDS_SHOWN: dict[str, list[str] | None] = {
    "central-full": ["global"],
    "fedgen": None,
    "fedavg-full": ["global"],
    "local": ["client_000"],
}


def grids_shown(summary: dict | None) -> dict[str, str]:
    """``{who: png}`` of the run's sample grids that a suite report shows (``GRIDS_SHOWN``)."""
    summary = summary or {}
    if summary.get("algorithm") not in GRIDS_SHOWN:
        return {}
    shown = GRIDS_SHOWN[summary["algorithm"]]
    return {who: png for who, png in (summary.get("grids") or {}).items() if shown is None or who in shown}


SWEEPS = {"rank": ("LoRA rank r", "lora.r"), "epochs": ("local epochs E", "fl.local_epochs")}


def main_tables(part: Part) -> list[str]:
    rep, spec = task_spec(part.task)
    pt, paper = paper_figs.task(part.task), paper_figs.methods(part.task)
    label = spec["metric"][1]
    lines = [
        f"### {part.name}" + (f" ({part.task})" if part.name != part.task else ""),
        "",
        f"| algorithm | ours: {label} (mean +- std) | seeds | {paper_figs.COLUMN}: {pt.get('metric', '-')} |",
        "|---|---|---|---|",
    ]
    for alg, (cell, fb) in headline(part).items():
        seeds = ",".join(map(str, part.compare["table"][alg]["seeds"]))
        lines.append(
            f"| {alg} | {mean_std(cell)}{' (b)' if fb and cell else ''} | {seeds} | {paper.get(alg, '-')} |"
        )
    if spec.get("fallback"):
        lines += ["", f"(b): no global model; {spec['fallback'][1]}."]
    if pt:
        lines += ["", f"Paper's setting: {pt['setting']}; {pt['metric_note']}. Source: {paper_figs.source()}"]
    notes = ""
    with contextlib.suppress(Exception):  # an older or foreign config: the table stands without its notes
        notes = rep.compare_notes(config_from_dict(part.compare["config"]))
    full = markdown(part.compare["table"], f"All columns: {part.name}", rep.compare_columns, notes, rep.paper)
    return [*lines, "", full.replace("## ", "#### ", 1), ""]


def upload(mains: list[Part], fig_dir: Path) -> list[str]:
    panels, lines = [], []
    for part in mains:
        t = part.compare["table"]
        bars = [
            (a, t[a]["upload_bytes_total"]["mean"], t[a]["upload_reduction_vs_fedavg_full"])
            for a in algorithms(part)
        ]
        panels.append((f"{part.name}: total upload (real serialized bytes)", bars))
        params = {r["algorithm"]: r.get("upload_params") for r in part.compare["rows"]}
        lines += [
            f"**{part.name}**",
            "",
            "| algorithm | parameters uploaded per client per round | total upload, bytes (mean over seeds) "
            "| reduction vs fedavg-full |",
            "|---|---|---|---|",
        ]
        for alg, v, red in bars:
            note = f" ({t[alg]['upload_note']})" if v == 0 and t[alg].get("upload_note") else ""
            lines.append(
                f"| {alg} | {params.get(alg) or 0:,} | {v:,.0f}{note} | {f'{red:.1f}x' if red else 'n/a'} |"
            )
        comm = paper_figs.task(part.task).get("communication")
        if comm:
            lines += [
                "",
                f"Paper (reported, not ours): FedAvg-full {comm['fedavg-full']}, "
                f"FedGen-Edge {comm['fedgen']} "
                f"over {comm['rounds']} rounds, {comm['reduction']}. {comm['note']}",
            ]
        lines.append("")
    if panels:
        png = figures.upload_bars(panels, fig_dir / "upload.png")
        lines = [f"![total upload per algorithm]({png.parent.name}/{png.name})", "", *lines]
    return lines


def convergence(part: Part, fig_dir: Path) -> list[str]:
    _, spec = task_spec(part.task)
    m, mlabel = spec["client_metric"]
    keys = [*spec["convergence"], (f"local_test_{m}", f"clients' mean {mlabel}, global model")]
    keys.append((f"local_test_{m}_personalized", f"clients' mean {mlabel}, own model"))
    panels = []
    for key, label in keys:
        series: dict[str, list] = {}
        refs: dict[str, list[float]] = {}
        for alg in algorithms(part):
            for run in run_dirs(part, alg):
                rows = read_metrics(run)
                pts = [
                    (r["round"], v["mean"] if isinstance(v, dict) else v) for r in rows if (v := r.get(key))
                ]
                if any("epochs" in r for r in rows):  # local / central: no rounds, a final value
                    pts = [p for p in pts if p[0] > 0]
                    if pts:
                        refs.setdefault(alg, []).append(pts[-1][1])
                elif len(pts) > 1:
                    series.setdefault(alg, []).append(pts)
        if series or refs:
            panels.append((label, series, refs))
    if not panels:
        return [f"{part.name}: no per-round metrics found.", ""]
    title = f"{part.name}: mean over seeds, band = min-max over seeds"
    png = figures.convergence(panels, title, fig_dir / f"convergence-{part.name}.png", spec["log_y"])
    return [f"![convergence {part.name}]({png.parent.name}/{png.name})", ""]


def personalization(part: Part, fig_dir: Path) -> list[str]:
    _, spec = task_spec(part.task)
    m, mlabel = spec["client_metric"]
    g, p = f"{m}_global", f"{m}_personalized"
    pers = {
        a: [(s, read_json(d / "personalization.json")) for s, d in seed_runs(part, a)]
        for a in algorithms(part)
    }
    ref = {seed: js for seed, js in pers.get("fedgen", []) if js}  # seed -> FedGen-Edge's
    points: dict[str, list[tuple[float, float]]] = {}
    lines = [
        f"**{part.name}** ({mlabel} per client, lower is better; pooled over seeds)",
        "",
        "| algorithm | x axis: global model of | mean, global | mean, own model | own model better for |",
        "|---|---|---|---|---|",
    ]
    for alg, runs in pers.items():
        pts, of = [], alg
        for seed, js in runs:
            if not js or not js.get("clients"):
                continue
            base = {c["client"]: c.get(g) for c in js["clients"]}
            if all(v is None for v in base.values()) and seed in ref:  # no global model: vs FedGen-Edge's
                base, of = {c["client"]: c.get(g) for c in ref[seed]["clients"]}, "fedgen"
            pts += [(base[c["client"]], c[p]) for c in js["clients"] if base.get(c["client"]) is not None]
        if pts:
            points[f"{alg} (vs {of} global)" if of != alg else alg] = pts
            better = sum(y < x for x, y in pts) / len(pts)
            gx, gy = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
            lines.append(f"| {alg} | {of} | {gx:.2f} | {gy:.2f} | {better:.0%} of {len(pts)} |")
    pp = paper_figs.task(part.task).get("personalization")
    if pp:
        lines += [
            "",
            f"Paper (reported, not ours): {pp['metric']}: global {pp['global']} -> personalized "
            f"{pp['personalized']} ({pp['personalization']}).",
        ]
    if not points:
        return [f"{part.name}: no per-client personalization results.", ""]
    png = figures.personalization(points, mlabel, part.name, fig_dir / f"personalization-{part.name}.png")
    return [f"![personalization {part.name}]({png.parent.name}/{png.name})", "", *lines, ""]


def ablation(parts: list[Part], kind: str, fig_dir: Path) -> list[str]:
    xlabel, key = SWEEPS[kind]
    claim = paper_figs.load()["ablations"]["rank" if kind == "rank" else "local_epochs"]["claim"]
    lines = []
    by_task: dict[str, list[Part]] = {}
    for p in sorted((p for p in parts if p.kind == kind), key=lambda p: p.value or 0):
        by_task.setdefault(p.task, []).append(p)
    for task, sweep in sorted(by_task.items()):
        _, spec = task_spec(task)
        cells = [p.compare["table"].get(p.algorithm) or {} for p in sweep]
        metric = [c.get(spec["metric"][0]) for c in cells]
        up = [(c.get("upload_bytes_total") or {}).get("mean") for c in cells]
        vals = [p.value for p in sweep if p.value is not None]  # a sweep part always has its value
        png = figures.ablation(
            vals,
            [(x["mean"], x["std"]) if x else None for x in metric],
            up,
            f"{xlabel} ({key})",
            spec["metric"][1],
            f"{task}: {sweep[0].algorithm}, final figure vs {xlabel}",
            fig_dir / f"ablation-{kind}-{task}.png",
        )
        m = spec["client_metric"][0]
        lines += [
            f"![{kind} ablation {task}]({png.parent.name}/{png.name})",
            "",
            f"| {xlabel} | {spec['metric'][1]} | global model on clients' test splits (mean) "
            "| total upload, bytes | seeds | runs in |",
            "|---|---|---|---|---|---|",
        ]
        for p, c, x, u in zip(sweep, cells, metric, up, strict=True):
            own = c.get(f"local_test_{m}_global_mean")  # sweeps: no per-client fine-tuning
            lines.append(
                f"| {p.value} | {mean_std(x)} | {mean_std(own)} | {u or 0:,.0f} | "
                f"{','.join(map(str, c.get('seeds', [])))} | {p.dir.name} |"
            )
        lines += ["", f"Paper (reported, not ours): {claim}.", ""]
    return lines or [f"No {kind} sweep in this suite (`fedgen reproduce` runs one).", ""]


def _small_copy(src: Path, dst: Path) -> None:
    """Copy a sample grid at its native resolution (runs save it upscaled 2x, nearest neighbour)."""
    from PIL import Image

    with Image.open(src) as im:
        small = (
            im.resize((im.width // 2, im.height // 2), Image.Resampling.NEAREST)
            if im.width > 400
            else im.copy()
        )
    small.save(dst, optimize=True)


def sample_grids(mains: list[Part], fig_dir: Path) -> list[str]:
    lines = []
    for part in mains:  # runs whose task drew sample grids (summary.json's "grids")
        for alg in [a for a in SAMPLE_ORDER if a in part.compare["table"]]:
            runs = run_dirs(part, alg)
            for who, png in grids_shown(read_json(runs[0] / "summary.json") if runs else None).items():
                src = runs[0] / "samples" / png
                if src.is_file():
                    dst = fig_dir / f"grid-{part.name}-{alg}-{who}.png"
                    _small_copy(src, dst)
                    lines += [
                        f"**{part.name}, {alg}, {who}** ({runs[0].name})",
                        "",
                        f"![]({fig_dir.name}/{dst.name})",
                        "",
                    ]
    return lines or ["No image runs with sample grids in this suite.", ""]


def text_samples(mains: list[Part]) -> list[str]:
    lines = []
    for part in mains:  # runs whose task wrote text samples (samples.json)
        for alg in [a for a in SAMPLE_ORDER if a in part.compare["table"]]:
            runs = run_dirs(part, alg)
            samples = read_json(runs[0] / "samples.json") if runs else None
            for who, texts in (samples or {}).items():
                lines += (
                    [f"**{part.name}, {alg}, {who}** ({runs[0].name})", ""] + [f"- {t}" for t in texts] + [""]
                )
    return lines or ["No text runs with samples in this suite.", ""]
