"""Paper-table exports: our leaderboard rows in a published table's column order and units, beside the
published values (`semantix-leaderboard --table styleid`).

A `PaperTable` names the metric preset whose protocol reproduces the paper's evaluation, the
leaderboard columns behind each paper column, the decimals shown, and the CSV of published values
(`results/published/<name>.csv`, comment lines `#` give the source). Our rows carry their N and a
`comparable` flag: false when a set metric covers fewer samples than the manifest or the protocol's N
(StyleID: 800 = 40 styles x 20 contents), or when the weights were random; such rows are never numbers
to paste next to the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from semantix.leaderboard import is_quality_result

PUBLISHED_DIR = Path("results") / "published"


@dataclass(frozen=True)
class Column:
    header: str        # the paper's column name
    source: str        # the leaderboard column it comes from
    decimals: int      # digits shown (the paper's precision)


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    presets: tuple[str, ...]      # metric presets whose rows follow the protocol (first: the protocol's own)
    columns: tuple[Column, ...]
    set_metrics: tuple[str, ...]  # set-level metrics whose N and comparability the row reports
    protocol_n: int

    def published_path(self, root: Path = PUBLISHED_DIR) -> Path:
        return Path(root) / f"{self.name}.csv"


TABLES = {
    "styleid": PaperTable(
        name="styleid",
        title="StyleID (Chung, Hyun, Heo, CVPR 2024), quantitative comparison: ArtFID, FID, LPIPS, CFSD "
              "(all lower is better; FID on art-fid's art Inception)",
        presets=("styleid", "image_style", "styleid_tiny"),
        columns=(Column("ArtFID ↓", "artfid_set", 3), Column("FID ↓", "fid_set", 3),
                 Column("LPIPS ↓", "lpips_mean", 4), Column("CFSD ↓", "cfsd_mean", 4)),
        set_metrics=("artfid", "fid"),
        protocol_n=800,
    ),
}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _flag(value) -> bool:
    """A leaderboard boolean column's cell: True only when set (a missing cell, from rows aggregated
    before the column existed, reads False)."""
    return not _missing(value) and bool(value)


def _rounded(value, decimals: int):
    return None if _missing(value) else round(float(value), decimals)


def read_published(path: Path) -> pd.DataFrame:
    """The published values: columns `method`, the paper's headers, `source` (comment lines skipped)."""
    if not Path(path).is_file():
        return pd.DataFrame()
    return pd.read_csv(path, comment="#", dtype={"method": str, "source": str})


def paper_table(leaderboard: pd.DataFrame, table: PaperTable, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per leaderboard row of the table's presets (ours), then the published rows.

    Columns: `method`, `row` ("ours" | "published"), the paper's columns (rounded to its decimals),
    `N` (the set metrics' smallest N), `comparable` (N = manifest = protocol N, real weights), and `note`.
    """
    rows = []
    if not leaderboard.empty and "metrics_preset" in leaderboard:
        ours = leaderboard[leaderboard["metrics_preset"].isin(table.presets)]
        for _, row in ours.iterrows():
            out = {"method": row["method"], "row": "ours"}
            for column in table.columns:
                out[column.header] = _rounded(row.get(column.source), column.decimals)
            ns = [row.get(f"{name}_n") for name in table.set_metrics]
            ns = [int(n) for n in ns if not _missing(n)]
            out["N"] = min(ns) if ns else None
            flags = [row.get(f"{name}_comparable") for name in table.set_metrics]
            # random backbone weights, or a metric scored with seeded random networks (a random-weight
            # preset such as `styleid_tiny`, or an override such as metrics.fid.weights=random)
            random_weights = (not is_quality_result(row.get("weights", ""))
                              or _flag(row.get("random_metric_weights")))
            comparable = (bool(ns) and all(not _missing(f) and bool(f) for f in flags)
                          and out["N"] >= table.protocol_n and not random_weights)
            out["comparable"] = comparable
            notes = [f"metrics={row['metrics_preset']}", f"dataset={row.get('dataset')}"]
            if row.get("partial"):
                notes.append(f"partial: {row.get('n_ok')} of {row.get('n_manifest')} samples")
            if out["N"] is not None and out["N"] < table.protocol_n:
                notes.append(f"N below the protocol's {table.protocol_n}")
            if random_weights:
                notes.append("RANDOM weights")
            if _flag(row.get("metric_weights_overridden")):
                notes.append("metric weights set on the command line")
            out["note"] = "; ".join(notes)
            rows.append(out)
    if published is not None and not published.empty:
        for _, row in published.iterrows():
            out = {"method": row["method"], "row": "published"}
            for column in table.columns:
                out[column.header] = _rounded(row.get(column.header), column.decimals)
            out["N"] = table.protocol_n
            out["comparable"] = True
            out["note"] = str(row.get("source", ""))
            rows.append(out)
    headers = ["method", "row", *(c.header for c in table.columns), "N", "comparable", "note"]
    return pd.DataFrame(rows, columns=headers)


def to_markdown(frame: pd.DataFrame, table: PaperTable) -> str:
    """The table in the paper's column order, values at its decimals; empty cells where a value is missing."""
    decimals = {c.header: c.decimals for c in table.columns}
    headers = list(frame.columns)
    lines = [f"**{table.title}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in frame.iterrows():
        cells = []
        for header in headers:
            value = row[header]
            if header in decimals:
                cells.append("" if _missing(value) else f"{float(value):.{decimals[header]}f}")
            elif header == "N":
                cells.append("" if _missing(value) else str(int(value)))
            elif header == "comparable":
                cells.append("yes" if bool(value) else "**no**")
            else:
                cells.append("" if _missing(value) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Only rows marked comparable (N = {table.protocol_n}, the whole manifest, real weights, "
                  f"metrics={table.presets[0]}) stand next to the published ones."]
    return "\n".join(lines) + "\n"
