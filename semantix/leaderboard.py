"""Aggregate run directories into leaderboard tables (CSV and Markdown); runs are read through
`semantix.store.find_runs`.

One row per (experiment, dataset, method, backbone, config hash). Per metric: the mean over the
samples that finished, and the half-width of a two-sided 95% Student-t confidence interval of that
mean, t_{0.975, n-1} * s / sqrt(n) with s the sample standard deviation (ddof=1); undefined (empty)
for n < 2. Counts: `n` samples in the dataset, `n_ok`, `n_failed`, `n_missing` (not yet run: the run
is incomplete, e.g. a shard has not finished), `n_duplicated` (record files repeating a sample id,
counted once), `n_manifest` (the whole manifest, before `dataset.limit`) and `partial` (fewer ok
samples than the manifest). Set-level metrics carry their N (`<name>_n`) and `<name>_comparable`
(false below the manifest's N or the protocol's `min_n`). Shards of one run write into the same run directory, so a row merges them. Every value is computed from the records on disk; nothing is cached or typed in.

Values of different metric configs are never averaged together: a metric's mean covers only the
values computed under its current config (the run's `metric_info/<name>.json`); `<metric>_missing`
counts the finished samples without such a value (shown as "(k missing)" in the Markdown table), and
a set-level value of another config is left out.

Guided runs (Semantix) also get `guidance_clamp_fraction`, `guidance_ratio` and `match_displacement`:
the means over samples of their per-step guidance diagnostics (semantix.diagnostics), so a table
shows whether the guidance acted and whether matches follow content or position.

The `backbone` and `weights` columns say where numbers come from: rows of the `tiny` backbone are
random-weight runs that test the code, never quality results, and the Markdown table says so.
`random_metric_weights` and `metric_weights_overridden` (booleans) say the same of the metrics' networks.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from semantix import diagnostics
from semantix.io import atomic_write_bytes
from semantix.store import RunSummary, find_runs

CONFIDENCE = 0.95
KEY_COLUMNS = ["experiment", "dataset", "method", "backbone", "config_hash"]


def mean_ci(values: list[float] | np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (nan half-width for n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return mean, float(half)


NOT_A_QUALITY_RESULT = "not a quality result"


def is_quality_result(label: str) -> bool:
    """False for a `weights_label` that says the numbers test the code (random or partly random weights)."""
    return not str(label).endswith(NOT_A_QUALITY_RESULT)


def weights_label(prov: dict) -> str:
    """Where the numbers of a run come from, in words."""
    weights = prov.get("backbone_weights")
    if weights is None:
        return "none (method uses no backbone)"
    if weights.get("weights_label"):  # a backbone that labels its own weights (tiny: trained VAE, random UNet)
        return str(weights["weights_label"])
    if weights.get("random_weights", False) or str(weights.get("weights", "")).startswith("random"):
        return f"RANDOM weights: {NOT_A_QUALITY_RESULT}"
    ref = weights.get("pretrained") or weights.get("id") or "pretrained"
    revision = weights.get("revision")
    return f"{ref}@{revision}" if revision else str(ref)


def metric_weights_flags(run: RunSummary) -> tuple[bool, bool]:
    """(random, overridden): whether a metric of the run scores with seeded random weights (its config in
    metric_info says `random` for any weights setting), and whether a metric's weights were set on the
    command line (`metrics.<name>.<...weights>=...`): either way the numbers are not the preset's
    published networks'."""
    configs = [(info.get("config") or {}) for info in run.metric_info.values()]
    random = any(value == "random" for config in configs for key, value in config.items() if key.endswith("weights"))
    overridden = any(re.match(r"[+~]*metrics\.[^=]+weights=", override)
                     for override in run.provenance.get("overrides") or [])
    return random, overridden


def summarise(run: RunSummary) -> dict:
    prov = run.provenance
    git = prov.get("git") or {}
    commit = git.get("commit") or "unknown"
    if git.get("dirty"):
        commit += "+dirty"
    records, n_duplicated = run.unique_records()
    ok = [r for r in records if r.get("status") == "ok"]
    n_expected = (prov.get("data") or {}).get("n_samples", len(records))
    row = {
        "experiment": prov.get("experiment"),
        "dataset": prov.get("dataset"),
        "method": prov.get("method"),
        "backbone": prov.get("backbone"),
        "weights": weights_label(prov),
        "metrics_preset": prov.get("metrics_preset"),
        "config_hash": prov.get("config_hash"),
        "overrides": " ".join(prov.get("overrides") or []),
        "commit": commit,
        "n": n_expected,
        "n_ok": len(ok),
        "n_failed": sum(r.get("status") == "failed" for r in records),
        "n_missing": max(0, n_expected - len(records)),
        "n_duplicated": n_duplicated,
        # The whole manifest (before dataset.limit): a run covering fewer samples is partial.
        "n_manifest": (prov.get("data") or {}).get("n_manifest", n_expected),
    }
    row["partial"] = bool(len(ok) < row["n_manifest"])
    row["random_metric_weights"], row["metric_weights_overridden"] = metric_weights_flags(run)
    metric_names = sorted({name for r in ok for name in r.get("metrics", {})})
    for name in metric_names:
        # Only values computed under the metric's current config (the run's metric_info) are averaged;
        # ok samples without one (not re-scored yet, or scored under another config) count as missing.
        current = (run.metric_info.get(name) or {}).get("config_hash")
        values = [r["metrics"][name] for r in ok if name in r.get("metrics", {})
                  and (current is None or (r.get("metric_config") or {}).get(name) == current)]
        row[f"{name}_mean"], row[f"{name}_ci95"] = mean_ci(values)
        row[f"{name}_missing"] = len(ok) - len(values)
    for name, result in sorted(run.set_metrics.items()):
        current = (run.metric_info.get(name) or {}).get("config_hash")
        stale = current is not None and result.get("config_hash") != current
        row[f"{name}_set"] = math.nan if stale else result.get("value", math.nan)
        row[f"{name}_n"] = None if stale else result.get("n")
        # False when the value covers fewer samples than the manifest or than its protocol's N (min_n).
        row[f"{name}_comparable"] = None if stale else result.get("comparable")
    guidance = diagnostics.run_summary(ok)
    for name in diagnostics.LEADERBOARD_COLUMNS:
        if name in guidance:
            row[name] = guidance[name]
    return row


def runs_table(runs: list[RunSummary]) -> tuple[pd.DataFrame, dict]:
    """The leaderboard rows of `runs` in leaderboard order (`KEY_COLUMNS`), each indexed by its run's
    position in `runs`, and the metric descriptions (direction, comparison) they use."""
    metric_info: dict = {}
    for run in runs:
        metric_info.update(run.metric_info)
    table = pd.DataFrame([summarise(run) for run in runs])
    if not table.empty:
        table = table.sort_values(KEY_COLUMNS, kind="stable")
    return table, metric_info


def build_table(runs_root: Path) -> tuple[pd.DataFrame, dict]:
    """The leaderboard DataFrame of every run under `runs_root` (indexed 0..n-1 in leaderboard order)
    and the metric descriptions it uses."""
    table, metric_info = runs_table(find_runs(runs_root))
    return table.reset_index(drop=True), metric_info


def _format(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}"


def set_cell(row, name: str) -> str:
    """A set metric's value with its N, and "not comparable" when it covers fewer samples than the
    manifest or than its protocol's N (e.g. "18.13 (N=2, not comparable)")."""
    cell = _format(row.get(f"{name}_set"))
    n = row.get(f"{name}_n")
    if not cell or n is None or (isinstance(n, float) and math.isnan(n)):
        return cell
    cell += f" (N={int(n)}"
    comparable = row.get(f"{name}_comparable")
    known = comparable is not None and not (isinstance(comparable, float) and math.isnan(comparable))
    return cell + (", not comparable)" if known and not bool(comparable) else ")")


def to_markdown(table: pd.DataFrame, metric_info: dict) -> str:
    metric_names = sorted({c[: -len("_mean")] for c in table.columns if c.endswith("_mean")})
    set_names = sorted({c[: -len("_set")] for c in table.columns if c.endswith("_set")})
    header = ["experiment", "dataset", "method", "backbone", "weights", "metrics", "n", "failed"]
    guidance_names = [name for name in diagnostics.LEADERBOARD_COLUMNS if name in table.columns]
    for name in set_names + metric_names:
        direction = metric_info.get(name, {}).get("higher_is_better")
        arrow = {True: " ↑", False: " ↓"}.get(direction, "")
        header.append(f"{name}{arrow}")
    header += guidance_names
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        backbone = row["backbone"]
        if not is_quality_result(row["weights"]):
            backbone = f"{backbone} (random weights)"
        cells = [str(row["experiment"]), str(row["dataset"]), str(row["method"]), str(backbone),
                 str(row["weights"]), str(row["metrics_preset"]), str(row["n"]), str(row["n_failed"])]
        if row["n_missing"]:
            cells[-2] += f" ({row['n_missing']} not run)"
        if row.get("n_duplicated"):
            cells[-2] += f" ({row['n_duplicated']} duplicated)"
        if row.get("partial"):
            cells[-2] += f" (partial: {row['n_ok']} of {row['n_manifest']})"
        for name in set_names:
            cells.append(set_cell(row, name))
        for name in metric_names:
            mean, half = row.get(f"{name}_mean"), row.get(f"{name}_ci95")
            cell = _format(mean)
            if cell and _format(half):
                cell += f" ± {_format(half)}"
            missing = row.get(f"{name}_missing")
            if isinstance(missing, (int, float)) and not math.isnan(missing) and missing > 0:
                cell += f" ({int(missing)} missing)"
            cells.append(cell)
        cells += [_format(row.get(name)) for name in guidance_names]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Values: mean ± half-width of the 95% Student-t confidence interval over samples "
        "(empty when fewer than 2 samples); set-level metrics (FID, ArtFID) are one value per run, "
        "over its finished samples, shown with its N (`<name>_n` in the CSV); \"not comparable\" when N is "
        "below the manifest's (a partial run: `dataset.limit`, failures, samples not run) or below the "
        "metric's protocol N (FID: 50; StyleID: 800). ↑ higher is better, ↓ lower is better.",
        "Rows on the `tiny` backbone (random weights) exercise the code and say nothing about quality.",
    ]
    if guidance_names:
        notes.append("Guidance diagnostics (guided methods): "
                     + "; ".join(f"`{n}`: {diagnostics.LEADERBOARD_COLUMNS[n]}" for n in guidance_names) + ".")
    return "\n".join(lines + notes) + "\n"


def write_leaderboard(runs_root: Path, csv_path: Path, markdown_path: Path) -> pd.DataFrame:
    table, metric_info = build_table(runs_root)
    atomic_write_bytes(Path(csv_path), table.to_csv(index=False).encode())
    atomic_write_bytes(Path(markdown_path), to_markdown(table, metric_info).encode())
    return table
