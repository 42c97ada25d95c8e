"""Aggregate run directories into leaderboard tables (CSV and Markdown).

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
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from semantix import diagnostics
from semantix.io import atomic_write_bytes

log = logging.getLogger(__name__)

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


def weights_label(prov: dict) -> str:
    """Where the numbers of a run come from, in words."""
    weights = prov.get("backbone_weights")
    if weights is None:
        return "none (method uses no backbone)"
    if weights.get("random_weights", False) or str(weights.get("weights", "")).startswith("random"):
        return "RANDOM weights: not a quality result"
    ref = weights.get("pretrained") or weights.get("id") or "pretrained"
    revision = weights.get("revision")
    return f"{ref}@{revision}" if revision else str(ref)


def read_invocations(run_dir: Path) -> list[dict]:
    """Every invocation of a run, oldest first: `invocations/*.json`, plus any a pre-sharding
    `provenance.json` listed inline (kept so older run directories still report their history)."""
    legacy: list[dict] = []
    inv_dir = Path(run_dir) / "invocations"
    if not inv_dir.is_dir():
        try:
            legacy = json.loads((Path(run_dir) / "provenance.json").read_text()).get("invocations", [])
        except (OSError, ValueError):
            legacy = []
    out = []
    for path in sorted(inv_dir.glob("*.json")) if inv_dir.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable invocation file %s (%s)", path, e)
    return sorted(legacy + out, key=lambda inv: str(inv.get("start")))


def merged_metric_info(run_dir: Path) -> dict:
    """Metric descriptions of a run from `metric_info/<name>.json` (over an older `metrics.json`)."""
    merged: dict = {}
    try:
        merged.update(json.loads((Path(run_dir) / "metrics.json").read_text()))
    except (OSError, ValueError):
        pass
    for path in sorted((Path(run_dir) / "metric_info").glob("*.json")):
        try:
            merged[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable metric description %s (%s)", path, e)
    return merged


@dataclass
class RunSummary:
    run_dir: Path
    provenance: dict
    metric_info: dict
    records: list[dict]
    set_metrics: dict  # name -> {"value", "n", ...} from summary.json (FID-like metrics of the whole run)


def load_run(run_dir: Path) -> RunSummary | None:
    try:
        prov = json.loads((run_dir / "provenance.json").read_text())
    except (OSError, ValueError) as e:
        log.warning("skipping %s: unreadable provenance.json (%s)", run_dir, e)
        return None
    # Shards write per-invocation and per-metric files; these merged views never lose one to a race.
    prov["invocations"] = read_invocations(run_dir)
    metric_info = merged_metric_info(run_dir)
    summary_path = run_dir / "summary.json"
    set_metrics = json.loads(summary_path.read_text()).get("set_metrics", {}) if summary_path.is_file() else {}
    records = []
    for path in sorted((run_dir / "records").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable record %s (%s)", path, e)
    return RunSummary(run_dir, prov, metric_info, records, set_metrics)


def find_runs(runs_root: Path) -> list[RunSummary]:
    runs = (load_run(p.parent) for p in sorted(Path(runs_root).rglob("provenance.json")))
    return [r for r in runs if r is not None]


def unique_records(run: RunSummary) -> tuple[list[dict], int]:
    """One record per sample id, and how many record files repeated an id already seen.

    Records are one file per sample, so shards writing into one run directory cannot duplicate a
    sample; a duplicate means a hand-copied or renamed file. It is counted (`n_duplicated`), warned
    about, and only the first file (in path order) enters the statistics.
    """
    seen: dict[str, dict] = {}
    duplicated = 0
    for record in run.records:
        sample_id = record.get("sample_id")
        if sample_id in seen:
            duplicated += 1
            log.warning("%s: sample %r has more than one record file; counting it once", run.run_dir, sample_id)
            continue
        seen[sample_id] = record
    return list(seen.values()), duplicated


def summarise(run: RunSummary) -> dict:
    prov = run.provenance
    git = prov.get("git") or {}
    commit = git.get("commit") or "unknown"
    if git.get("dirty"):
        commit += "+dirty"
    records, n_duplicated = unique_records(run)
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


def build_table(runs_root: Path) -> tuple[pd.DataFrame, dict]:
    """The leaderboard DataFrame and the metric descriptions (direction, comparison) it uses."""
    runs = find_runs(runs_root)
    rows = [summarise(run) for run in runs]
    metric_info: dict = {}
    for run in runs:
        metric_info.update(run.metric_info)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)
    return table, metric_info


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
        if row["weights"].startswith("RANDOM"):
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
