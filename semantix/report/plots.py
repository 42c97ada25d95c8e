"""Matplotlib figures of the report, rendered to PNG bytes (Agg backend: no display, no network).

Every figure takes its rows as plain dicts with the leaderboard's columns (`<metric>_mean`,
`<metric>_ci95`, see `semantix.leaderboard`) and a `note` that names the experiment, dataset,
backbone (with its weights warning) and metric preset; the note is drawn under the title of every
figure, so a figure copied out of the report still says where its numbers come from.

Error bars are the half-width of the 95% Student-t confidence interval of the mean; runs with fewer
than 2 finished samples have none (drawn without a bar).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files only, whatever the environment says

import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

MAX_COLUMNS = 3
PANEL_SIZE = (4.2, 3.0)
MARKERS = "osD^vP*X<>"


def metric_title(name: str, metric_info: Mapping[str, dict]) -> str:
    """The metric's name with its direction: ↑ higher is better, ↓ lower is better."""
    arrow = {True: " ↑", False: " ↓"}.get(metric_info.get(name, {}).get("higher_is_better"), "")
    return f"{name}{arrow}"


def _number(value) -> float:
    """A table cell as a float; missing or non-numeric cells become nan."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ci(value) -> float:
    """A CI half-width for an error bar: nan (no interval, n < 2) draws no bar."""
    half = _number(value)
    return 0.0 if math.isnan(half) else half


def _grid(n_panels: int, height_scale: float = 1.0):
    columns = min(MAX_COLUMNS, max(n_panels, 1))
    rows = math.ceil(max(n_panels, 1) / columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows * height_scale + 0.9))
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def _render(fig, title: str, note: str) -> bytes:
    width = int(fig.get_figwidth() * 11)  # characters of a 10 pt line across the figure
    # the title wraps too: a one-panel figure is narrower than a long title
    fig.suptitle("\n".join([*textwrap.wrap(title, width), *textwrap.wrap(note, width)]), fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def comparison_bars(rows: Sequence[Mapping], names: Sequence[str], metrics: Sequence[str],
                    metric_info: Mapping[str, dict], title: str, note: str) -> bytes:
    """One horizontal bar per run (an ablation variant, a method) and one panel per metric."""
    fig, axes = _grid(len(metrics), height_scale=max(1.0, len(rows) / 6))
    positions = list(range(len(rows)))
    for ax, metric in zip(axes, metrics, strict=True):
        means = [_number(r.get(f"{metric}_mean")) for r in rows]
        halves = [_ci(r.get(f"{metric}_ci95")) for r in rows]
        ax.barh(positions, [0.0 if math.isnan(m) else m for m in means], xerr=halves, capsize=3,
                color="#4c72b0", ecolor="#222222")
        ax.set_yticks(positions, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(metric_title(metric, metric_info), fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    return _render(fig, title, note)


def sweep_lines(lines: Mapping[str, Sequence[tuple[object, Mapping]]], parameter: str,
                metrics: Sequence[str], metric_info: Mapping[str, dict], title: str, note: str) -> bytes:
    """Each metric against one swept parameter: one line per method (points: (value, row)).

    Numeric parameters use a numeric axis; any other values (strings, booleans, lists) are placed
    in first-seen order on a categorical axis.
    """
    values = [value for points in lines.values() for value, _ in points]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    categories = list(dict.fromkeys(repr(v) for v in values))

    def position(value) -> float:
        return float(value) if numeric else float(categories.index(repr(value)))

    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for label, points in lines.items():
            ordered = sorted(points, key=lambda p: position(p[0]))
            ax.errorbar([position(v) for v, _ in ordered],
                        [_number(r.get(f"{metric}_mean")) for _, r in ordered],
                        yerr=[_ci(r.get(f"{metric}_ci95")) for _, r in ordered],
                        marker="o", capsize=3, label=label)
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, fontsize=8, rotation=20)
        ax.set_xlabel(parameter, fontsize=8)
        ax.set_title(metric_title(metric, metric_info), fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    return _render(fig, title, note)


def tradeoff_scatter(rows: Sequence[Mapping], names: Sequence[str], style_metric: str,
                     structure_metric: str, metric_info: Mapping[str, dict], title: str, note: str) -> bytes:
    """Style against structure, one point per run with its 95% CI in both directions."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    for index, (row, name) in enumerate(zip(rows, names, strict=True)):
        x, y = _number(row.get(f"{style_metric}_mean")), _number(row.get(f"{structure_metric}_mean"))
        if math.isnan(x) or math.isnan(y):
            continue
        # a legend rather than labels at the points: runs with near-equal values would overlap
        ax.errorbar(x, y, xerr=_ci(row.get(f"{style_metric}_ci95")), yerr=_ci(row.get(f"{structure_metric}_ci95")),
                    marker=MARKERS[index % len(MARKERS)], capsize=3, linestyle="none", label=name)
    ax.legend(fontsize=7)
    ax.set_xlabel(f"style: {metric_title(style_metric, metric_info)}", fontsize=9)
    ax.set_ylabel(f"structure: {metric_title(structure_metric, metric_info)}", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    return _render(fig, title, note)


def diagnostics_plot(panels: Mapping[str, Mapping[str, Sequence[float]]], title: str, note: str) -> bytes:
    """Per-step diagnostics of one sample: one panel per quantity (energies, gradient sizes, clamp
    fractions, match displacement, ...), one line per series in it (a term, a block)."""
    fig, axes = _grid(len(panels))
    for ax, (panel, series) in zip(axes, panels.items(), strict=True):
        for name, values in series.items():
            ax.plot(range(len(values)), [_number(v) for v in values], marker=".", label=name)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("sampling step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    return _render(fig, title, note)
