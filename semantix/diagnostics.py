"""Did the guidance act? Summaries of a guided sampler's per-step diagnostics and the checks that warn
when it did not.

Semantix records, per sample and per denoising step (docs/method.md, "Diagnostics"): each energy
term's largest raw gradient element (`grad_max_<term>`) and the fraction of gradient elements at the
clamp (`clamp_fraction_<term>`), the guidance's size relative to the noise prediction
(`guidance_ratio`), and per guidance block the median and 90th percentile of the distance between a
location and its match (`match_median_<block>`, `match_p90_<block>`, in cells) and the fraction
matched within one cell of its own position (`match_local_<block>`). A frame-by-frame method records
one such list per frame: the summaries pool them.

`summarise` turns one record's series into a few numbers (the leaderboard averages them over a run's
samples); `findings` says, for a whole run, what a user must not miss: guidance that never reached
the clamp and stayed under 1% of the noise prediction, or matching pinned to position.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["LEADERBOARD_COLUMNS", "findings", "run_summary", "summarise"]

# A run whose guidance never clamps and whose largest share of eps stays below this acted very little.
INERT_GUIDANCE_RATIO = 0.01
# A run with at least this share of matches within one cell of their own position matches by position.
POSITIONAL_MATCHING = 0.95

# Per-run means of the per-record summaries, as leaderboard columns.
LEADERBOARD_COLUMNS = {
    "guidance_clamp_fraction": "mean over steps of the largest per-term fraction of gradient elements at the clamp",
    "guidance_ratio": "mean over steps of |guidance| / |eps|",
    "match_displacement": "mean over steps and blocks of the median distance (cells) between a location and its match",
}


def _steps(series: Any) -> list[float]:
    """A per-step series as a flat list of finite numbers (a frame-by-frame list of lists is pooled)."""
    if isinstance(series, int | float):
        return [float(series)] if math.isfinite(series) else []
    if isinstance(series, Sequence) and not isinstance(series, str):
        return [v for item in series for v in _steps(item)]
    return []


def _per_step_max(diagnostics: Mapping[str, Any], prefix: str) -> list[float]:
    """Step by step, the largest value over the series named `prefix*` (e.g. over the three terms)."""
    columns = [_steps(v) for k, v in diagnostics.items() if k.startswith(prefix)]
    columns = [c for c in columns if c]
    return [max(values) for values in zip(*columns, strict=False)] if columns else []


def _pooled(diagnostics: Mapping[str, Any], prefix: str) -> list[float]:
    return [v for k, series in diagnostics.items() if k.startswith(prefix) for v in _steps(series)]


def summarise(diagnostics: Mapping[str, Any] | None) -> dict[str, float]:
    """One record's guidance and matching summary; empty when it has no such diagnostics."""
    diagnostics = diagnostics or {}
    summary: dict[str, float] = {}
    clamp = _per_step_max(diagnostics, "clamp_fraction_")
    if clamp:
        summary["guidance_clamp_fraction"] = statistics.fmean(clamp)
        summary["guidance_clamp_max"] = max(clamp)
        summary["grad_max"] = max(_pooled(diagnostics, "grad_max_"), default=0.0)
    ratio = _steps(diagnostics.get("guidance_ratio"))
    if ratio:
        summary["guidance_ratio"] = statistics.fmean(ratio)
        summary["guidance_ratio_max"] = max(ratio)
    median = _pooled(diagnostics, "match_median_")
    if median:
        summary["match_displacement"] = statistics.fmean(median)
        summary["match_local_fraction"] = statistics.fmean(_pooled(diagnostics, "match_local_"))
    return summary


def run_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """A run's summary over its finished records: means of the per-record numbers, maxima of the maxima."""
    per_record = [summarise(r.get("diagnostics")) for r in records if r.get("status") == "ok"]
    per_record = [s for s in per_record if s]
    if not per_record:
        return {}
    out: dict[str, float] = {}
    for key in sorted({k for s in per_record for k in s}):
        values = [s[key] for s in per_record if key in s]
        out[key] = max(values) if key.endswith("_max") or key == "grad_max" else statistics.fmean(values)
    return out


def findings(summary: Mapping[str, float], method_label: str) -> list[str]:
    """What a run's summary says a user must know, each with the figure and the config keys to change."""
    out = []
    if ("guidance_clamp_max" in summary and summary["guidance_clamp_max"] == 0.0
            and summary.get("guidance_ratio_max", 0.0) < INERT_GUIDANCE_RATIO):
        out.append(
            f"guidance never reached the clamp (largest gradient element {summary.get('grad_max', 0.0):.3g}) and "
            f"its share of the noise prediction stayed at most {summary.get('guidance_ratio_max', 0.0):.2%} "
            f"(< {INERT_GUIDANCE_RATIO:.0%}): the guidance barely changed the output. Raise "
            f"method.{method_label}.energy_scale (or the gammas), or run experiment=semantix_calibration"
        )
    if summary.get("match_local_fraction", 0.0) >= POSITIONAL_MATCHING:
        out.append(
            f"{summary['match_local_fraction']:.0%} of matches lie within one cell of their own position: "
            f"position, not content, decides the correspondence. Lower method.{method_label}.lambda_pe or use "
            f"method.{method_label}.pe_form=prior"
        )
    return out
