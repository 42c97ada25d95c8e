"""Which runs the report shows, in which order, under which names, and what each run sweeps.

Runs are read once (`semantix.store.find_runs`), summarised into leaderboard rows
(`semantix.leaderboard`), selected by `--filter`, grouped (experiment x dataset x backbone x
manifest) and ordered: within a group the runs follow `METHOD_ORDER` (the headline method, then the
baselines, then the classical references); a label's variants (`semantix_20steps`,
`frames_styleid`) follow its base; labels the order does not name come last, alphabetically.

Swept parameters: runs of one group that share a method label are diffed on their stored identity
(`RunSummary.identity`: the method section, seed, backbone and dataset less what does not change
outputs). A key with more than one value among them is swept, and the runs that agree on every other
swept key of that label form one line in its plot.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semantix.leaderboard import NOT_A_QUALITY_RESULT, is_quality_result, runs_table
from semantix.store import RunSummary, find_runs

FILTER_KEYS = ("experiment", "dataset", "method", "backbone", "weights", "metrics_preset", "config_hash", "commit")
# The headline method, the diffusion baselines, then the classical references (`--order`).
METHOD_ORDER = ("semantix", "styleid", "stylegallery", "eye_for_an_eye", "cross_image_attention",
                "reinhard", "histogram_matching", "identity")


class ReportError(Exception):
    """The report cannot be made as asked (no runs, bad filter, --out not a report folder)."""


@dataclass
class ReportRun:
    """One run directory with its leaderboard row and the parameters that determine its outputs."""

    summary: RunSummary
    row: dict
    params: dict[str, Any]  # the run's identity, flattened ("method.eps", "backbone.resolution", "seed")
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
    def caveat(self) -> str | None:
        """Why the run's numbers are no quality result: its weights label less that verdict ("RANDOM
        weights", "tiny: trained 64 px VAE, random UNet"), and whether its metrics scored with random or
        overridden networks (the leaderboard's boolean columns); None for a quality result."""
        weights = str(self.row["weights"])
        caveats = [] if is_quality_result(weights) else [weights.removesuffix(NOT_A_QUALITY_RESULT).rstrip(": ")]
        if _flag(self.row.get("random_metric_weights")):
            caveats.append("RANDOM metric weights")
        elif _flag(self.row.get("metric_weights_overridden")):
            caveats.append("metric weights overridden")
        return "; ".join(caveats) or None


def _flag(value: Any) -> bool:
    """A leaderboard boolean; absent (runs aggregated before the column existed) or NaN reads False."""
    return isinstance(value, bool | np.bool_) and bool(value)


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


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys ({"method": {"eps": 1}} -> {"method.eps": 1})."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def slug(text: str) -> str:
    """`text` as a file-name part: runs of other characters than letters, digits, `.`, `_`, `-` become `_`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def method_rank(label: str, order: tuple[str, ...] | list[str]) -> tuple[int, bool]:
    """Where a method label goes in `order`: (position of its base, whether it is a variant).

    A label's base is the first entry of `order` whose `_`-separated words appear consecutively in
    the label's (`semantix_no_adain` and `frames_semantix` are variants of `semantix`)."""
    words = label.split("_")
    for position, base in enumerate(order):
        base_words = base.split("_")
        span = len(base_words)
        if any(words[i:i + span] == base_words for i in range(len(words) - span + 1)):
            return position, label != base
    return len(order), False


def load_runs(runs_root: Path, filters: dict[str, list[str]],
              order: tuple[str, ...] | list[str] = METHOD_ORDER) -> tuple[list[ReportRun], dict]:
    """The selected runs (grouped, then in method `order`) and the metric descriptions.

    Leaderboard order (experiment, dataset, method, backbone, config hash) is kept wherever `order`
    does not decide, so `[r.row for r in runs]` differs from the leaderboard CSV only in method order."""
    summaries = find_runs(runs_root)
    table, metric_info = runs_table(summaries)
    if table.empty:
        raise ReportError(f"no runs under {runs_root} (run semantix-bench first)")
    for key, patterns in filters.items():
        table = table[table[key].astype(str).map(lambda v, p=patterns: any(fnmatch.fnmatchcase(v, x) for x in p))]
    if table.empty:
        raise ReportError(f"no run under {runs_root} matches the filters {filters}")
    runs = []
    for position, row in zip(table.index, table.to_dict("records"), strict=True):
        summary = summaries[position]
        run_slug = "/".join(slug(part) for part in summary.run_dir.relative_to(runs_root).parts)
        runs.append(ReportRun(summary, row, flatten(summary.identity), run_slug))
    runs.sort(key=lambda r: (str(r.row["experiment"]), str(r.row["dataset"]), method_rank(r.label, order)))
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
    """Per method label, the identity keys whose values differ between its runs (in one group)."""
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
        fixed = ", ".join(f"{short_key(k)}={run.params.get(k)}" for k in keys if k != key)
        lines[f"{run.label} ({fixed})" if fixed else run.label].append((run.params.get(key), run))
    return {legend: points for legend, points in lines.items() if len(points) >= 2}


def short_key(key: str) -> str:
    """A parameter key as shown in names and legends (`method.eps` -> `eps`)."""
    return key.removeprefix("method.")


def _name_runs(runs: list[ReportRun]) -> None:
    """Display names unique within a group: label, then the label's swept values, then the hash."""
    varying = varying_parameters(runs)
    for run in runs:
        values = ", ".join(f"{short_key(k)}={run.params.get(k)}" for k in varying[run.label])
        run.name = f"{run.label} ({values})" if values else run.label
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        counts[run.name] += 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.name} [{run.row['config_hash']}]"


def metric_names(runs: list[ReportRun]) -> list[str]:
    """Per-sample metrics with a mean in at least one of the runs."""
    return sorted({c[: -len("_mean")] for r in runs for c, v in r.row.items()
                   if c.endswith("_mean") and not missing(v)})


def missing(value: Any) -> bool:
    """A leaderboard cell without a value (None or nan)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def describe_rows(rows: list[dict]) -> str:
    """Experiment, dataset, backbone (with the weights warning) and metric preset(s) of leaderboard rows."""
    first = rows[0]
    backbone = str(first["backbone"])
    labels = sorted({str(r["weights"]) for r in rows if not is_quality_result(r["weights"])})
    if labels:
        backbone += f" ({'; '.join(labels)})"
    presets = ", ".join(sorted({str(r["metrics_preset"]) for r in rows}))
    return (f"experiment {first['experiment']} · dataset {first['dataset']} · "
            f"backbone {backbone} · metrics {presets}")
