"""The report's figures of one group of runs, written as PNG files under `plots/` (drawn by
`semantix.report.plots`): the comparison (or ablation) bars, the style/structure trade-off, each
metric against each swept parameter, the guidance calibration, and the per-step diagnostics of one
sample of every run that records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semantix.report import plots
from semantix.report.runs import (
    ReportRun,
    describe_rows,
    metric_names,
    missing,
    short_key,
    slug,
    sweep_lines,
    swept_parameters,
)
from semantix.store import RunSummary

# The trade-off scatter uses the first metric present from each list; failing that, any metric
# comparing the output with the reference (style) or with the content (structure).
STYLE_METRICS = ("clip_style", "dino_appearance", "gram", "colour_histogram", "correspondence_colour")
STRUCTURE_METRICS = ("structure_dino", "lpips", "cfsd", "clip_content", "ssim_grey")


def pick_metric(available: list[str], preference: tuple[str, ...], metric_info: dict, compares: str) -> str | None:
    """The first preferred metric present, else the first present that compares `compares`."""
    for name in preference:
        if name in available:
            return name
    return next((n for n in available if metric_info.get(n, {}).get("compares") == compares), None)


@dataclass
class Figure:
    """A plot written into the report folder."""

    path: str  # relative to the report folder
    caption: str


def guided_series(record: dict) -> dict[str, list[float]]:
    """The per-step series of a record's diagnostics (lists of numbers), e.g. energies per step."""
    diagnostics = record.get("diagnostics") or {}
    return {name: list(values) for name, values in sorted(diagnostics.items())
            if isinstance(values, list) and values and all(isinstance(v, int | float | None) for v in values)}


# Panels of the per-step diagnostics plot: series whose names start with a prefix share a panel.
DIAGNOSTICS_PANELS = {
    "energy_": "energy per term",
    "grad_max_": "largest gradient element per term",
    "clamp_fraction_": "fraction of gradient elements at the clamp",
    "guidance_ratio": "|guidance| / |eps|",
    "match_median_": "match distance, median (cells)",
    "match_p90_": "match distance, 90th percentile (cells)",
    "match_local_": "matched within one cell of own position",
}


def diagnostics_panels(record: dict) -> dict[str, dict[str, list[float]]]:
    """A record's per-step series grouped into plot panels (`DIAGNOSTICS_PANELS`; others alone)."""
    panels: dict[str, dict[str, list[float]]] = {}
    for name, values in guided_series(record).items():
        prefix = next((p for p in DIAGNOSTICS_PANELS if name.startswith(p)), None)
        panel = DIAGNOSTICS_PANELS[prefix] if prefix else name
        panels.setdefault(panel, {})[name[len(prefix):] if prefix and name != prefix else name] = values
    return panels


def diagnostics_sample(run: RunSummary) -> dict | None:
    """The first finished record (by sample id) with per-step diagnostics, or None."""
    return next((r for r in sorted(run.records, key=lambda r: r["sample_id"])
                 if r.get("status") == "ok" and guided_series(r)), None)


def make_plots(runs: list[ReportRun], metric_info: dict, out: Path, group_slug: str) -> list[Figure]:
    """Every figure of one group, written under out/plots/."""
    note = describe_rows([r.row for r in runs])
    metrics = metric_names(runs)
    rows = [r.row for r in runs]
    names = [r.name for r in runs]
    figures: list[tuple[str, bytes, str]] = []
    if metrics:
        figures.append(("comparison", plots.comparison_bars(rows, names, metrics, metric_info,
                                                              "Per-run means with 95% CI", note),
                        "Every metric per run (ablation variants and methods): mean over samples, "
                        "error bars the 95% Student-t confidence interval."))
    style = pick_metric(metrics, STYLE_METRICS, metric_info, "output-reference")
    structure = pick_metric(metrics, STRUCTURE_METRICS, metric_info, "output-content")
    if style and structure:
        figures.append(("tradeoff", plots.tradeoff_scatter(rows, names, style, structure, metric_info,
                                                             "Style / structure trade-off", note),
                        f"Style ({style}) against structure ({structure}), one point per run, 95% CI both ways."))
    for key in swept_parameters(runs):
        lines = sweep_lines(runs, key)
        if not lines or not metrics:
            continue
        points = {legend: [(value, run.row) for value, run in line] for legend, line in lines.items()}
        figures.append((f"sweep-{slug(key)}", plots.sweep_lines(points, short_key(key), metrics, metric_info,
                                                                   f"Metrics against {short_key(key)}", note),
                        f"Each metric against the swept parameter {key}, one line per method, 95% CI."))
    guided = [(run.name, run.row) for run in runs if not missing(run.row.get("guidance_clamp_fraction"))]
    calibration = [m for m in (style, structure) if m]
    if len(guided) > 1 and calibration:
        for column, label in (("guidance_clamp_fraction", "fraction of gradient elements at the clamp"),
                              ("match_displacement", "median match distance (cells)")):
            points = {"runs": [(row[column], row) for _, row in guided if not missing(row.get(column))]}
            figures.append((f"calibration-{column}", plots.sweep_lines(points, label, calibration, metric_info,
                                                                      f"Style and structure against {label}", note),
                            f"Calibration: {', '.join(calibration)} against each guided run's {label} (one point "
                            f"per run: {', '.join(name for name, _ in guided)}), 95% CI."))
    for run in runs:
        record = diagnostics_sample(run.summary)
        if record is None:
            continue
        title = f"Per-step diagnostics: {run.name}, sample {record['sample_id']}"
        figures.append((f"diagnostics-{slug(run.name)}", plots.diagnostics_plot(diagnostics_panels(record), title, note),
                        f"{run.name}: per-step diagnostics of sample {record['sample_id']}."))
    written = []
    for kind, png, caption in figures:
        relative = f"plots/{group_slug}__{kind}.png"
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(png)
        written.append(Figure(relative, caption))
    return written

