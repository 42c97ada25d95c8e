"""`semantix-report`: a static HTML report of run directories (no server, no network).

    semantix-report [--runs results/runs] [--out results/report] [--filter KEY=VALUE ...]
                    [--thumbnail-size 256]

The report shows, per group of runs (experiment x dataset x backbone x manifest): a comparison grid
with, per sample, the content, the reference(s) and every run's output with its metric values; bar
charts of every metric with 95% confidence intervals (for an ablation job: the ablation chart);
the style/structure trade-off scatter; each metric against each swept parameter; the per-step
diagnostics of one sample of every guided run. Above the groups: the leaderboard of the selected
runs (sortable by clicking a column header) and filters by dataset, domain and style. Every table
and figure names its backbone (with the RANDOM-weights warning of the `tiny` backbone) and metric
preset. Numbers come from `semantix.leaderboard` (the same means and CIs as the leaderboard CSV);
inputs are found through each run's provenance (`data.manifest`, `data.root`) and its manifest.
Nothing is re-run or re-scored.

The report folder is self-contained (move or zip it and it still works)::

    index.html                 the page (inline CSS and JS)
    leaderboard.csv            the leaderboard rows of the selected runs
    images/inputs/<sha>.png    content and reference images as the methods saw them (the harness's
                               resize and centre crop), once per distinct file
    images/outputs/<experiment>/<dataset>/<backbone>/<run>/<sample>.png   outputs (thumbnails; a video
                               output: its looping GIF preview, <sample>.gif)
    plots/<group>__<kind>.png  the figures, also shown in the page

It is built in a sibling temporary folder and then moved into place; an existing folder at --out
is replaced only when it is an earlier report (it has this generator's index.html) or is empty.

Swept parameters: runs of one group that share a method label (hence a plugin) are diffed on
their resolved `config.yaml` (method section, backbone, dataset and seed; not paths, logger,
runner, metrics, device or dataset.limit). A key with more than one value among them is swept, and
the runs that agree on every other swept key form one line in its plot. Different labels
(the ablation variants, other methods) are compared in the bar charts instead.

`--filter KEY=VALUE` selects runs by a leaderboard column (experiment, dataset, method, backbone,
weights, metrics_preset, config_hash, commit); VALUE may be a shell-style pattern (`semantix*`).
Repeating a key allows any of its values; different keys must all match.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import html
import json
import logging
import math
import os
import re
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from PIL import Image

from semantix import diagnostics
from semantix.data.images import resize_center_crop, sha256_file
from semantix.data.manifest import REFERENCE_SEPARATOR, Manifest
from semantix.leaderboard import KEY_COLUMNS, RunSummary, build_table, find_runs, set_cell
from semantix.store import safe_filename

log = logging.getLogger(__name__)

GENERATOR = "semantix-report"
FILTER_KEYS = ("experiment", "dataset", "method", "backbone", "weights", "metrics_preset", "config_hash", "commit")
# Config sections that do not change a run's outputs (or are not part of its identity).
IGNORED_CONFIG = ("paths", "logger", "runner", "metrics", "device", "dataset.limit", "backbone.device")
# The trade-off scatter uses the first metric present from each list; failing that, any metric
# comparing the output with the reference (style) or with the content (structure).
STYLE_METRICS = ("clip_style", "dino_appearance", "gram", "colour_histogram", "correspondence_colour")
STRUCTURE_METRICS = ("structure_dino", "lpips", "cfsd", "clip_content", "ssim_grey")
# Manifest columns that name a sample's style, in order; otherwise the reference file names.
STYLE_COLUMNS = ("style", "reference_style")
SMALL_IMAGE = 128  # thumbnails smaller than this are scaled up with crisp pixels


class ReportError(Exception):
    """The report cannot be made as asked (no runs, bad filter, --out not a report folder)."""


# -- runs ------------------------------------------------------------------------------------------
@dataclass
class ReportRun:
    """One run directory with its leaderboard row and the parameters that determine its outputs."""

    summary: RunSummary
    row: dict
    params: dict[str, Any]
    slug: str  # its path under the runs root: the folder of its output thumbnails
    name: str = ""  # unique within its group: the method label, plus swept values when needed

    @property
    def label(self) -> str:
        return str(self.row["method"])

    @property
    def data(self) -> dict:
        return self.summary.provenance.get("data") or {}

    @property
    def group(self) -> tuple[str, str, str, str]:
        return (str(self.row["experiment"]), str(self.row["dataset"]), str(self.row["backbone"]),
                str(self.data.get("manifest", "")))

    @property
    def random_weights(self) -> bool:
        return str(self.row["weights"]).startswith("RANDOM")


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    """`KEY=VALUE` strings as {key: [patterns]}; raises ReportError for a malformed or unknown key."""
    filters: dict[str, list[str]] = defaultdict(list)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReportError(f"--filter {item!r}: expected KEY=VALUE")
        if key not in FILTER_KEYS:
            raise ReportError(f"--filter {item!r}: unknown key {key!r}; use one of {', '.join(FILTER_KEYS)}")
        filters[key].append(value)
    return dict(filters)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def run_parameters(config: dict, label: str) -> dict[str, Any]:
    """The resolved config of a run, flattened, with the method section under `method.`."""
    relevant = {key: value for key, value in config.items() if key not in IGNORED_CONFIG and key != "method"}
    relevant["method"] = (config.get("method") or {}).get(label, {})
    return {key: value for key, value in _flatten(relevant).items() if key not in IGNORED_CONFIG}


def load_runs(runs_root: Path, filters: dict[str, list[str]]) -> tuple[list[ReportRun], dict]:
    """The selected runs (leaderboard order) and the metric descriptions."""
    table, metric_info = build_table(runs_root)
    if table.empty:
        raise ReportError(f"no runs under {runs_root} (run semantix-bench first)")
    for key, patterns in filters.items():
        table = table[table[key].astype(str).map(lambda v, p=patterns: any(fnmatch.fnmatchcase(v, x) for x in p))]
    if table.empty:
        raise ReportError(f"no run under {runs_root} matches the filters {filters}")
    by_key = {tuple(run.provenance.get(c) for c in KEY_COLUMNS): run for run in find_runs(runs_root)}
    runs = []
    for row in table.to_dict("records"):
        summary = by_key[tuple(row[c] for c in KEY_COLUMNS)]
        config_path = summary.run_dir / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        slug = "/".join(_slug(part) for part in summary.run_dir.relative_to(runs_root).parts)
        runs.append(ReportRun(summary, row, run_parameters(config or {}, row["method"]), slug))
    for group_runs in group_runs_by_key(runs).values():
        _name_runs(group_runs)
    return runs, metric_info


def group_runs_by_key(runs: list[ReportRun]) -> dict[tuple, list[ReportRun]]:
    groups: dict[tuple, list[ReportRun]] = defaultdict(list)
    for run in runs:
        groups[run.group].append(run)
    return dict(groups)


def _comparable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varying_parameters(runs: list[ReportRun]) -> dict[str, list[str]]:
    """Per method label, the config keys whose values differ between its runs (in one group)."""
    by_label: dict[str, list[ReportRun]] = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    varying = {}
    for label, label_runs in by_label.items():
        keys = sorted({key for run in label_runs for key in run.params})
        varying[label] = [k for k in keys if len({_comparable(r.params.get(k)) for r in label_runs}) > 1]
    return varying


def swept_parameters(runs: list[ReportRun]) -> list[str]:
    """Every key that is swept for some method label of the group, in sorted order."""
    return sorted({key for keys in varying_parameters(runs).values() for key in keys})


def sweep_lines(runs: list[ReportRun], key: str) -> dict[str, list[tuple[Any, ReportRun]]]:
    """Lines of one swept key: runs of a label that agree on every other swept key of that label.

    Returns {legend: [(value, run), ...]} for lines with at least two points.
    """
    varying = varying_parameters(runs)
    lines: dict[str, list[tuple[Any, ReportRun]]] = defaultdict(list)
    for run in runs:
        keys = varying[run.label]
        if key not in keys:
            continue
        fixed = ", ".join(f"{_short(k)}={run.params.get(k)}" for k in keys if k != key)
        lines[f"{run.label} ({fixed})" if fixed else run.label].append((run.params.get(key), run))
    return {legend: points for legend, points in lines.items() if len(points) >= 2}


def _short(key: str) -> str:
    return key.removeprefix("method.")


def _name_runs(runs: list[ReportRun]) -> None:
    """Display names unique within a group: label, then the label's swept values, then the hash."""
    varying = varying_parameters(runs)
    for run in runs:
        values = ", ".join(f"{_short(k)}={run.params.get(k)}" for k in varying[run.label])
        run.name = f"{run.label} ({values})" if values else run.label
    counts = defaultdict(int)
    for run in runs:
        counts[run.name] += 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.name} [{run.row['config_hash']}]"


def metric_names(runs: list[ReportRun]) -> list[str]:
    """Per-sample metrics with a mean in at least one of the runs."""
    return sorted({c[: -len("_mean")] for r in runs for c, v in r.row.items()
                   if c.endswith("_mean") and not _missing(v)})


def pick_metric(available: list[str], preference: tuple[str, ...], metric_info: dict, compares: str) -> str | None:
    """The first preferred metric present, else the first present that compares `compares`."""
    for name in preference:
        if name in available:
            return name
    return next((n for n in available if metric_info.get(n, {}).get("compares") == compares), None)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def describe_rows(rows: list[dict]) -> str:
    """Experiment, dataset, backbone (with the weights warning) and metric preset(s) of leaderboard rows."""
    first = rows[0]
    backbone = str(first["backbone"])
    if any(str(r["weights"]).startswith("RANDOM") for r in rows):
        backbone += " (RANDOM weights: not a quality result)"
    presets = ", ".join(sorted({str(r["metrics_preset"]) for r in rows}))
    return (f"experiment {first['experiment']} · dataset {first['dataset']} · "
            f"backbone {backbone} · metrics {presets}")


# -- inputs and thumbnails -------------------------------------------------------------------------
@dataclass
class SampleInputs:
    """Where a sample's inputs are, and its labels, from the run's manifest."""

    content: Path | None
    references: list[Path]
    domain: str | None
    style: str
    prompt: str | None


@dataclass
class InputIndex:
    """Manifests named by runs' provenance, each loaded once; `warnings` say what could not be used."""

    manifests: dict[tuple[str, str], Manifest | None] = field(default_factory=dict)
    warnings: dict[tuple[str, str], str] = field(default_factory=dict)

    def manifest(self, data: dict) -> Manifest | None:
        key = (str(data.get("manifest")), str(data.get("root")))
        if key not in self.manifests:
            try:
                manifest = Manifest.load(data["manifest"], data.get("root"))
            except Exception as e:  # noqa: BLE001 - a moved or broken manifest leaves the outputs usable
                self.warnings[key] = f"inputs not shown: manifest {key[0]} cannot be loaded ({e})"
                manifest = None
            if manifest is not None and data.get("manifest_sha256") not in (None, manifest.sha256):
                self.warnings[key] = (f"manifest {key[0]} changed since the runs (sha256 differs): "
                                      "inputs shown are today's files")
            self.manifests[key] = manifest
        return self.manifests[key]

    def inputs(self, data: dict, sample_id: str) -> SampleInputs | None:
        manifest = self.manifest(data) if data.get("manifest") else None
        if manifest is None or sample_id not in manifest:
            return None
        row = manifest.row(sample_id)
        references = [r.strip() for r in (row.get("reference") or "").split(REFERENCE_SEPARATOR) if r.strip()]
        style = next((row[c] for c in STYLE_COLUMNS if row.get(c)), None)
        return SampleInputs(
            content=_resolve(manifest, row.get("content")),
            references=[p for p in (_resolve(manifest, r) for r in references) if p is not None],
            domain=row.get("domain"),
            style=style or "+".join(Path(r).stem for r in references),
            prompt=row.get("prompt"),
        )


def _resolve(manifest: Manifest, relative: str | None) -> Path | None:
    if not relative:
        return None
    try:
        path = manifest.resolve(relative)
    except Exception:  # noqa: BLE001 - a path outside the root is shown as missing
        return None
    return path if path.is_file() else None


def input_thumbnail(path: Path, size: int) -> Image.Image:
    """An input as the methods saw it: the harness's resize and centre crop, at most `size` px."""
    with Image.open(path) as image:
        return resize_center_crop(image.convert("RGB"), size)


def output_thumbnail(path: Path, size: int) -> Image.Image:
    """A stored output, shrunk to at most `size` px on its long side (never enlarged)."""
    with Image.open(path) as image:
        thumbnail = image.convert("RGB")
        thumbnail.thumbnail((size, size), Image.Resampling.LANCZOS)
        return thumbnail


def input_strip(paths: list[Path], size: int) -> Image.Image:
    """Several inputs (a multi-reference sample) side by side, each as `input_thumbnail` makes it."""
    images = [input_thumbnail(p, size) for p in paths]
    strip = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        strip.paste(image, (x, 0))
        x += image.width
    return strip


@dataclass
class Thumbnails:
    """Writes images into the report folder and returns their paths relative to it."""

    root: Path
    size: int
    _inputs: dict[tuple[Path, int], tuple[str, int, int]] = field(default_factory=dict)

    def input(self, path: Path, resolution: int) -> tuple[str, int, int] | None:
        side = min(self.size, resolution)
        if (path, side) not in self._inputs:
            try:
                image = input_thumbnail(path, side)
                relative = f"images/inputs/{sha256_file(path)[:16]}-{side}.png"
            except Exception as e:  # noqa: BLE001 - an unreadable input is shown as missing
                log.warning("cannot read input %s: %s", path, e)
                return None
            self._inputs[(path, side)] = self._save(image, relative)
        return self._inputs[(path, side)]

    def output(self, path: Path, relative: str) -> tuple[str, int, int] | None:
        try:
            image = output_thumbnail(path, self.size)
        except Exception as e:  # noqa: BLE001
            log.warning("cannot read output %s: %s", path, e)
            return None
        return self._save(image, relative)

    def copy(self, path: Path, relative: str) -> tuple[str, int, int] | None:
        """A file (a video's GIF preview) copied as it is, with display sizes fitting the thumbnail size."""
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as e:  # noqa: BLE001
            log.warning("cannot read output %s: %s", path, e)
            return None
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        scale = min(1.0, self.size / max(width, height))
        return relative, round(width * scale), round(height * scale)

    def _save(self, image: Image.Image, relative: str) -> tuple[str, int, int]:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            image.save(target, format="PNG")
        return relative, image.width, image.height


# -- plots -----------------------------------------------------------------------------------------
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


def guidance_findings(run: ReportRun) -> list[str]:
    """What the run's guidance diagnostics say a reader must know (semantix.diagnostics.findings)."""
    return diagnostics.findings(diagnostics.run_summary(run.summary.records), run.name)


def diagnostics_sample(run: RunSummary) -> dict | None:
    """The first finished record (by sample id) with per-step diagnostics, or None."""
    return next((r for r in sorted(run.records, key=lambda r: r["sample_id"])
                 if r.get("status") == "ok" and guided_series(r)), None)


def make_plots(runs: list[ReportRun], metric_info: dict, out: Path, group_slug: str) -> list[Figure]:
    """Every figure of one group, written under out/plots/."""
    from semantix import plots

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
        figures.append((f"sweep-{_slug(key)}", plots.sweep_lines(points, _short(key), metrics, metric_info,
                                                                   f"Metrics against {_short(key)}", note),
                        f"Each metric against the swept parameter {key}, one line per method, 95% CI."))
    guided = [(run.name, run.row) for run in runs if not _missing(run.row.get("guidance_clamp_fraction"))]
    calibration = [m for m in (style, structure) if m]
    if len(guided) > 1 and calibration:
        for column, label in (("guidance_clamp_fraction", "fraction of gradient elements at the clamp"),
                              ("match_displacement", "median match distance (cells)")):
            points = {"runs": [(row[column], row) for _, row in guided if not _missing(row.get(column))]}
            figures.append((f"calibration-{column}", plots.sweep_lines(points, label, calibration, metric_info,
                                                                      f"Style and structure against {label}", note),
                            f"Calibration: {', '.join(calibration)} against each guided run's {label} (one point "
                            f"per run: {', '.join(name for name, _ in guided)}), 95% CI."))
    for run in runs:
        record = diagnostics_sample(run.summary)
        if record is None:
            continue
        title = f"Per-step diagnostics: {run.name}, sample {record['sample_id']}"
        figures.append((f"diagnostics-{_slug(run.name)}", plots.diagnostics_plot(diagnostics_panels(record), title, note),
                        f"{run.name}: per-step diagnostics of sample {record['sample_id']}."))
    written = []
    for kind, png, caption in figures:
        relative = f"plots/{group_slug}__{kind}.png"
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(png)
        written.append(Figure(relative, caption))
    return written


# -- HTML ------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _fmt(value: Any) -> str:
    if _missing(value):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _arrow(name: str, metric_info: dict) -> str:
    return {True: " ↑", False: " ↓"}.get(metric_info.get(name, {}).get("higher_is_better"), "")


def _img(entry: tuple[str, int, int] | None, alt: str) -> str:
    if entry is None:
        return '<div class="absent">image not available</div>'
    src, width, height = entry
    small = ' class="small"' if max(width, height) < SMALL_IMAGE else ""
    return (f'<img src="{_e(src)}" alt="{_e(alt)}" width="{width}" height="{height}" '
            f'loading="lazy"{small}>')


def leaderboard_html(runs: list[ReportRun], metric_info: dict) -> str:
    """The sortable leaderboard of the selected runs (the same rows as leaderboard.csv)."""
    metrics = metric_names(runs)
    set_names = sorted({c[: -len("_set")] for r in runs for c in r.row if c.endswith("_set")})
    head = ["experiment", "dataset", "method", "backbone", "weights", "metrics", "n", "ok", "failed", "missing"]
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    cells += "".join(f'<th data-metric="{_e(n)}_set">{_e(n)} (set){_e(_arrow(n, metric_info))}</th>' for n in set_names)
    cells += "".join(f'<th data-metric="{_e(n)}">{_e(n)}{_e(_arrow(n, metric_info))}</th>' for n in metrics)
    guidance = [n for n in diagnostics.LEADERBOARD_COLUMNS if any(not _missing(r.row.get(n)) for r in runs)]
    cells += "".join(f'<th title="{_e(diagnostics.LEADERBOARD_COLUMNS[n])}">{_e(n)}</th>' for n in guidance)
    cells += "<th>config</th><th>commit</th>"
    body = []
    for run in runs:
        row = run.row
        backbone = _e(row["backbone"]) + (' <span class="warn">RANDOM weights</span>' if run.random_weights else "")
        warnings = "".join(f'<div class="warn guidance-warning">{_e(f)}</div>' for f in guidance_findings(run))
        text = {"experiment": _e(row["experiment"]), "dataset": _e(row["dataset"]), "method": _e(run.name) + warnings,
                "backbone": backbone, "weights": _e(row["weights"]), "metrics_preset": _e(row["metrics_preset"])}
        sort = {**{c: row[c] for c in text}, "method": run.name}
        out = [f'<td data-sort="{_e(sort[c])}">{text[c]}</td>' for c in text]
        for column in ("n", "n_ok", "n_failed", "n_missing"):
            out.append(f'<td class="num" data-sort="{_e(row[column])}">{_e(row[column])}</td>')
        if row.get("partial"):
            out[-1] = out[-1].replace("</td>", f' <span class="warn">partial: {_e(row.get("n_ok"))} of '
                                               f'{_e(row.get("n_manifest"))}</span></td>')
        for name in set_names:
            value = row.get(f"{name}_set")
            out.append(f'<td class="num" data-sort="{_e(_fmt(value))}">{_e(set_cell(row, name))}</td>')
        for name in metrics:
            mean, half = row.get(f"{name}_mean"), row.get(f"{name}_ci95")
            text = _fmt(mean) + (f" ± {_fmt(half)}" if _fmt(mean) and _fmt(half) else "")
            sort = repr(float(mean)) if not _missing(mean) else ""
            out.append(f'<td class="num" data-sort="{_e(sort)}">{_e(text)}</td>')
        for name in guidance:
            value = row.get(name)
            out.append(f'<td class="num" data-sort="{_e(_fmt(value))}">{_e(_fmt(value))}</td>')
        out.append(f'<td data-sort="{_e(row["config_hash"])}"><code>{_e(row["config_hash"])}</code></td>')
        out.append(f'<td data-sort="{_e(row["commit"])}"><code>{_e(str(row["commit"])[:12])}</code></td>')
        css = ' class="random"' if run.random_weights else ""
        body.append(f'<tr data-filterable data-dataset="{_e(row["dataset"])}"{css}>{"".join(out)}</tr>')
    random = {str(r.row["backbone"]) for r in runs if r.random_weights}
    backbones = ", ".join(b + (" (RANDOM weights)" if b in random else "")
                          for b in sorted({str(r.row["backbone"]) for r in runs}))
    presets = ", ".join(sorted({str(r.row["metrics_preset"]) for r in runs}))
    caption = (f"Backbone(s): {backbones} · metric preset(s): {presets} · values: mean ± half-width of the "
               "95% Student-t CI over samples; (set) = one value per run. Click a header to sort.")
    return (f'<div class="scroll"><table class="sortable" id="leaderboard-table"><caption>{_e(caption)}</caption>'
            f"<thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def grid_html(runs: list[ReportRun], metric_info: dict, index: InputIndex, thumbs: Thumbnails,
              note: str) -> tuple[str, list[dict]]:
    """The comparison grid of one group, and the labels of its samples (for the filters)."""
    records = {run.name: {r["sample_id"]: r for r in run.summary.records} for run in runs}
    data = runs[0].data
    manifest = index.manifest(data) if data.get("manifest") else None
    order = {sample_id: i for i, sample_id in enumerate(manifest.sample_ids)} if manifest else {}
    sample_ids = sorted({s for by_id in records.values() for s in by_id},
                        key=lambda s: (order.get(s, len(order)), s))
    resolution = int(data.get("resolution") or thumbs.size)
    n_refs = max([len(i.references) for s in sample_ids if (i := index.inputs(data, s))] or [1])
    head = "<th>sample</th><th>content</th>" + "".join(
        f"<th>reference {k + 1 if n_refs > 1 else ''}</th>" for k in range(n_refs))
    head += "".join(f'<th data-run="{_e(run.name)}">{_e(run.name)}</th>' for run in runs)
    body, labels = [], []
    for sample_id in sample_ids:
        inputs = index.inputs(data, sample_id)
        domain = (inputs.domain if inputs else None) or ""
        style = inputs.style if inputs else ""
        labels.append({"domain": domain, "style": style})
        info = [f"<b>{_e(sample_id)}</b>"]
        if domain:
            info.append(f"domain: {_e(domain)}")
        if style:
            info.append(f"style: {_e(style)}")
        if inputs and inputs.prompt:
            info.append(f"prompt: {_e(inputs.prompt)}")
        cells = [f'<td class="info">{"<br>".join(info)}</td>']
        content = thumbs.input(inputs.content, resolution) if inputs and inputs.content else None
        cells.append(f"<td>{_img(content, f'content of {sample_id}')}</td>")
        references = inputs.references if inputs else []
        for k in range(n_refs):
            if k < len(references):
                cells.append(f"<td>{_img(thumbs.input(references[k], resolution), f'reference of {sample_id}')}</td>")
            else:
                cells.append("<td></td>")
        for run in runs:
            cells.append(_output_cell(run, records[run.name].get(sample_id), metric_info, thumbs))
        body.append(f'<tr data-filterable data-sample="{_e(sample_id)}" data-dataset="{_e(runs[0].row["dataset"])}" '
                    f'data-domain="{_e(domain)}" data-style="{_e(style)}">{"".join(cells)}</tr>')
    table = (f'<div class="scroll"><table class="grid"><caption>{_e(note)}</caption>'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    return table, labels


def _output_cell(run: ReportRun, record: dict | None, metric_info: dict, thumbs: Thumbnails) -> str:
    run_attr = f'data-run="{_e(run.name)}"'
    if record is None:
        return f'<td class="absent" {run_attr} data-status="missing">not run</td>'
    if record.get("status") != "ok":
        error = record.get("error") or {}
        return (f'<td class="failed" {run_attr} data-status="failed">failed at {_e(error.get("stage", "?"))}: '
                f'{_e(error.get("type", ""))}: {_e(error.get("message", ""))}</td>')
    source = run.summary.run_dir / record.get("image", "")
    relative = f"images/outputs/{run.slug}/{safe_filename(record['sample_id'])}"
    preview = run.summary.run_dir / record["preview"] if record.get("preview") else None
    if preview is not None and preview.is_file():  # a video: its looping GIF
        image = thumbs.copy(preview, f"{relative}.gif")
    else:
        image = thumbs.output(source, f"{relative}.png") if source.is_file() else None
    values = "".join(f"<tr><td>{_e(name)}{_e(_arrow(name, metric_info))}</td><td>{_e(_fmt(value))}</td></tr>"
                     for name, value in sorted(record.get("metrics", {}).items()))
    alt = f"{run.name} on {record['sample_id']}"
    return f'<td {run_attr} data-status="ok">{_img(image, alt)}<table class="values"><tbody>{values}</tbody></table></td>'


def _select(key: str, values: set[str]) -> str:
    options = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in sorted(values) if v)
    return (f'<label>{_e(key)} <select data-filter="{_e(key)}"><option value="">all</option>{options}'
            "</select></label>")


def build_report(runs_root: Path, out: Path, filters: dict[str, list[str]] | None = None,
                 thumbnail_size: int = 256) -> Path:
    """Write the report of the runs under `runs_root` (selected by `filters`) to `out`; return index.html."""
    runs_root, out = Path(runs_root), Path(out)
    runs, metric_info = load_runs(runs_root, filters or {})
    _check_replaceable(out)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_report(runs, metric_info, runs_root, staging, filters or {}, thumbnail_size)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"


def _write_report(runs: list[ReportRun], metric_info: dict, runs_root: Path, out: Path,
                  filters: dict[str, list[str]], thumbnail_size: int) -> None:
    index, thumbs = InputIndex(), Thumbnails(out, thumbnail_size)
    pd.DataFrame([r.row for r in runs]).to_csv(out / "leaderboard.csv", index=False)
    sections, datasets, domains, styles = [], set(), set(), set()
    for key, group in group_runs_by_key(runs).items():
        experiment, dataset, backbone, manifest = key
        group_slug = _slug(f"{experiment}__{dataset}__{backbone}__{hashlib.sha256(manifest.encode()).hexdigest()[:6]}")
        note = describe_rows([r.row for r in group])
        figures = make_plots(group, metric_info, out, group_slug)
        grid, labels = grid_html(group, metric_info, index, thumbs, note)
        datasets.add(dataset)
        domains.update(label["domain"] for label in labels)
        styles.update(label["style"] for label in labels)
        warnings = [index.warnings[k] for k in index.warnings if k[0] == manifest]
        warnings += [f"{r.name}: {r.row['n_missing']} sample(s) not run yet" for r in group if r.row["n_missing"]]
        random = ('<p class="warn">RANDOM weights: these outputs and numbers exercise the code and say '
                  "nothing about quality.</p>" if any(r.random_weights for r in group) else "")
        figures_html = "".join(
            f'<figure><img src="{_e(f.path)}" alt="{_e(f.caption)}" loading="lazy">'
            f"<figcaption>{_e(f.caption)} {_e(note)}</figcaption></figure>" for f in figures)
        sections.append(
            f'<section class="group" data-filterable data-dataset="{_e(dataset)}">'
            f"<h2>{_e(experiment)} / {_e(dataset)} / {_e(backbone)}</h2>"
            f'<p class="note">{_e(note)}<br>manifest: <code>{_e(manifest or "unknown")}</code></p>{random}'
            + "".join(f'<p class="warn">{_e(w)}</p>' for w in warnings)
            + (f"<h3>Plots</h3><div class=\"figures\">{figures_html}</div>" if figures else "")
            + f"<h3>Samples</h3>{grid}</section>"
        )
    filter_text = "; ".join(f"{k} in {v}" for k, v in filters.items()) or "none"
    random_banner = ('<p class="warn">Some runs use a backbone with RANDOM weights (marked below): their '
                     "numbers test the code, not quality.</p>" if any(r.random_weights for r in runs) else "")
    page = PAGE.format(
        generator=GENERATOR,
        title=f"semantix report: {len(runs)} run(s)",
        generated=_e(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        runs_root=_e(runs_root),
        filters=_e(filter_text),
        random=random_banner,
        selects=_select("dataset", datasets) + _select("domain", domains) + _select("style", styles),
        leaderboard=leaderboard_html(runs, metric_info),
        sections="".join(sections),
        css=CSS,
        script=SCRIPT,
    )
    (out / "index.html").write_text(page, encoding="utf-8")


def _is_report(folder: Path) -> bool:
    index = folder / "index.html"
    return index.is_file() and f'<meta name="generator" content="{GENERATOR}">' in index.read_text(errors="replace")[:2000]


def _check_replaceable(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_report(out))):
        raise ReportError(f"{out} exists and is not an earlier report; choose another --out")


def _replace(staging: Path, out: Path) -> None:
    """Move the finished report into place; the earlier one (if any) is removed afterwards."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="semantix-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of run directories")
    parser.add_argument("--out", type=Path, default=Path("results/report"), help="report folder to write")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help=f"select runs by {', '.join(FILTER_KEYS)} (shell patterns; repeatable)")
    parser.add_argument("--thumbnail-size", type=int, default=256, help="longest side of image thumbnails, px")
    parser.add_argument("--wandb", metavar="PROJECT", default=None,
                        help="also log the leaderboard and every plot to this wandb project (offline without "
                             "WANDB_API_KEY): the multi-run figures that no single run's logger can see")
    args = parser.parse_args(argv)
    if args.thumbnail_size < 16:
        parser.error("--thumbnail-size must be at least 16 px")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.runs.is_dir():
        sys.exit(f"semantix-report: no runs folder at {args.runs} (run semantix-bench first)")
    try:
        index = build_report(args.runs, args.out, parse_filters(args.filter), args.thumbnail_size)
    except ReportError as e:
        sys.exit(f"semantix-report: {e}")
    print(f"report -> {index}")
    if args.wandb:
        print(f"wandb -> {log_report_to_wandb(index.parent, args.wandb)}")


def log_report_to_wandb(report_dir: Path, project: str, mode: str = "auto") -> str:
    """Log a built report's leaderboard (a wandb.Table) and plots (wandb.Image) as one wandb run."""
    import pandas as pd
    import wandb

    from semantix.loggers import wandb_mode

    # The wandb folder goes beside the report, keeping the report folder portable.
    run = wandb.init(project=project, job_type="report", name=f"report/{report_dir.name}",
                     mode=wandb_mode(mode), dir=str(report_dir.parent), reinit="create_new")
    payload = {"leaderboard": wandb.Table(dataframe=pd.read_csv(report_dir / "leaderboard.csv"))}
    for plot in sorted((report_dir / "plots").glob("*.png")):
        payload[f"plots/{plot.stem}"] = wandb.Image(str(plot))
    run.log(payload)
    run.finish()
    return run.dir


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
[hidden] { display: none !important; }
h2 { border-top: 2px solid #ccc; padding-top: .6em; }
code { font-size: 90%; }
.warn { color: #9c1c00; font-weight: 600; }
.note { color: #555; }
nav.filters label { margin-right: 1.2em; }
table { border-collapse: collapse; }
caption { caption-side: top; text-align: left; color: #555; padding: .3em 0; }
#leaderboard-table th, #leaderboard-table td { border: 1px solid #ddd; padding: 3px 6px; white-space: nowrap; }
#leaderboard-table th { background: #f2f2f2; cursor: pointer; user-select: none; white-space: nowrap; }
#leaderboard-table th[aria-sort=ascending]::after { content: " ▲"; }
#leaderboard-table th[aria-sort=descending]::after { content: " ▼"; }
#leaderboard-table tr.random td { background: #fff6f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
table.grid th { position: sticky; top: 0; background: #fff; font-size: 12px; padding: 4px; }
table.grid td { vertical-align: top; padding: 4px; border-top: 1px solid #eee; }
table.grid td.info { font-size: 12px; max-width: 14em; overflow-wrap: anywhere; }
table.grid img { width: 160px; height: 160px; object-fit: contain; display: block; background: #f4f4f4; }
table.grid img.small { image-rendering: pixelated; }
table.values td { font-size: 11px; padding: 0 4px 0 0; border: none; }
td.failed { color: #9c1c00; font-size: 12px; max-width: 160px; }
.absent { color: #888; font-size: 12px; }
.figures figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; max-width: 100%; }
.figures img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; max-width: 60em; }
"""

# Sorting and filtering in plain JS. With `?selftest` in the URL the page checks itself (used by
# the browser test through `chromium --dump-dom`): it loads every image eagerly, then records
# which images have no pixels, whether clicking a metric header sorts the leaderboard up and then
# down, and which sample rows the first domain filter leaves, as JSON in #selftest-result.
SCRIPT = """
(function () {
  "use strict";
  function key(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
  }
  function compare(a, b) {
    var x = Number(a), y = Number(b);
    if (a !== "" && b !== "" && !isNaN(x) && !isNaN(y)) return x - y;
    return a.localeCompare(b);
  }
  function sortBy(th) {
    var tbody = th.closest("table").tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (r1, r2) {
      var a = key(r1, index), b = key(r2, index);
      if (a === "" || b === "") return (a === "") - (b === "");  /* empty cells last */
      return ascending ? compare(a, b) : compare(b, a);
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
  var selects = document.querySelectorAll("select[data-filter]");
  function applyFilters() {
    var chosen = {};
    selects.forEach(function (s) { if (s.value) chosen[s.getAttribute("data-filter")] = s.value; });
    document.querySelectorAll("[data-filterable]").forEach(function (el) {
      el.hidden = Object.keys(chosen).some(function (k) {
        var v = el.getAttribute("data-" + k);
        return v !== null && v !== chosen[k];
      });
    });
  }
  selects.forEach(function (s) { s.addEventListener("change", applyFilters); });

  if (!new URLSearchParams(location.search).has("selftest")) return;
  var images = Array.prototype.slice.call(document.images);
  var settled = images.map(function (img) {
    img.loading = "eager";
    if (img.complete) return Promise.resolve();
    return new Promise(function (resolve) {
      img.addEventListener("load", resolve);
      img.addEventListener("error", resolve);
    });
  });
  function column(index) {
    var tbody = document.getElementById("leaderboard-table").tBodies[0];
    return Array.prototype.map.call(tbody.rows, function (r) { return key(r, index); })
      .filter(function (v) { return v !== ""; }).map(Number);
  }
  function ordered(values, sign) {
    return values.every(function (v, i) { return i === 0 || sign * (v - values[i - 1]) >= 0; });
  }
  Promise.all(settled).then(function () {
    var result = {
      images: images.length,
      broken: images.filter(function (i) { return !(i.naturalWidth > 0); }).map(function (i) { return i.getAttribute("src"); })
    };
    var headers = Array.prototype.slice.call(document.querySelectorAll("#leaderboard-table th[data-metric]"));
    var th = headers.find(function (h) {
      var values = column(h.cellIndex);
      return values.some(function (v) { return v !== values[0]; });
    });
    if (th) {
      th.click();
      var up = column(th.cellIndex);
      th.click();
      var down = column(th.cellIndex);
      result.sort = {column: th.getAttribute("data-metric"), ascending: up, descending: down,
                     ascending_ok: ordered(up, 1), descending_ok: ordered(down, -1)};
    }
    var select = document.querySelector('select[data-filter="domain"]');
    if (select && select.options.length > 1) {
      select.value = select.options[1].value;
      select.dispatchEvent(new Event("change"));
      var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-sample]"));
      var shown = rows.filter(function (r) { return !r.hidden; });
      result.filter = {key: "domain", value: select.value, shown: shown.length, hidden: rows.length - shown.length,
                       all_match: shown.every(function (r) { return r.getAttribute("data-domain") === select.value; })};
      select.value = "";
      select.dispatchEvent(new Event("change"));
    }
    document.getElementById("selftest-result").textContent = JSON.stringify(result);
  });
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{generator}">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="note">Generated {generated} from <code>{runs_root}</code>; run filters: {filters}. Every number is
read from the run directories (records, leaderboard aggregation); nothing was re-run.</p>
{random}
<nav class="filters">Show: {selects}</nav>
</header>
<section id="leaderboard">
<h2>Leaderboard</h2>
{leaderboard}
</section>
{sections}
<pre id="selftest-result" hidden></pre>
<script>{script}</script>
</body>
</html>
"""
