"""All benchmarks in one process: sampler, metrics, harness overhead; one JSON and a Markdown summary.

    python -m benchmarks.run                          # full settings (minutes to an hour on a CPU)
    python -m benchmarks.run --quick                  # smoke run: tiny settings, to results/benchmarks/quick/
    python -m benchmarks.run --skip sampler metrics   # the harness only
    python -m benchmarks.run --cost-table             # print the projected cost table from existing JSON

Runs `benchmarks.sampler.main`, `benchmarks.metrics.main` and `benchmarks.harness.main` in-process
(each writes its own `<name>-<device>.json` into `--out`), then writes `<out>/<device>.json` (the
three reports, the projected cost table and provenance: git state, versions, device, time) and
`<out>/<device>.md`, a short summary. `<device>` is "cpu" or the CUDA device's name, lowercased,
spaces as dashes, as the other benchmarks name their files. A skipped part is summarised from its
earlier JSON in `--out` when there is one (labelled with its time), else reported as missing.

Figures are ratios measured within one process (the machines are noisy) plus absolute seconds,
labelled with the device they were measured on.

The projected cost table (`cost_table`, `render_cost_table`) prices the 1000-pair benchmark with
every method of conf/experiment/compare_style.yaml at its paper settings from the sampler
benchmark's measured cold seconds per pair (`results[i]["methods"][name]["seconds_cold"]`):
hours on one device = pairs x seconds / 3600, wall time on N shards = ceil(pairs / N) x seconds
(+ the per-shard model load where the sampler report has it). It uses a GPU measurement of the
SD1.5 architecture at 512 px when any sampler JSON in `--out` has one, and otherwise says plainly
that its figures are not a projection for SD1.5 on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from semantix import provenance
from semantix.io import atomic_write_bytes, atomic_write_json

PARTS = ("sampler", "metrics", "harness")
N_PAIRS = 1000
SHARDS = (1, 8, 32)
QUICK_OUT = Path("results/benchmarks/quick")
DEFAULT_OUT = Path("results/benchmarks")
# The backbone whose per-pair seconds price the paper's benchmark: SD1.5's architecture at 512 px.
PROJECTION_BACKBONE, PROJECTION_RESOLUTION = "sd15_random", 512
NOT_SD15 = "not a projection for SD1.5"
CLASSICAL = ("identity", "reinhard", "histogram_matching")  # no diffusion: not timed by benchmarks/sampler.py


def device_name() -> str:
    """The device the benchmarks name their files after: the CUDA device when there is one, else the CPU."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def compare_style_methods() -> list[str]:
    """The method labels of conf/experiment/compare_style.yaml (each at its paper settings)."""
    from semantix.config import compose_config

    return list(compose_config(["experiment=compare_style"]).method)


# -- projected cost --------------------------------------------------------------------------------
def result_device(report: dict, result: dict) -> str:
    """The device one sampler result ran on. benchmarks/sampler.py builds `tiny` with build_tiny()'s
    default device (the CPU) and sd15_random on the report's device; a result's own `device` wins."""
    if result.get("device"):
        return str(result["device"])
    return "cpu" if result.get("backbone") == "tiny" else report.get("device", "cpu")


def _is_gpu(device: str) -> bool:
    return device.lower() not in ("cpu", "") and not device.lower().startswith("cpu")


def is_gpu_projection(report: dict, result: dict) -> bool:
    return (result.get("backbone") == PROJECTION_BACKBONE and result.get("resolution") == PROJECTION_RESOLUTION
            and _is_gpu(result_device(report, result)))


def projection_result(report: dict) -> dict | None:
    """The sampler result that prices the benchmark best: SD1.5's architecture at 512 px on a GPU, then
    any SD1.5-architecture result, then any result that timed methods."""
    results = [r for r in report.get("results", []) if r.get("methods")]
    for rank in (lambda r: is_gpu_projection(report, r), lambda r: r.get("backbone") == PROJECTION_BACKBONE,
                 lambda r: True):
        for result in results:
            if rank(result):
                return result
    return None


def source_label(report: dict, result: dict) -> str:
    device = result_device(report, result)
    where = f"{result['backbone']} backbone at {result.get('resolution')} px on {device}"
    if is_gpu_projection(report, result):
        return (f"{where} (SD1.5's architecture with random weights: the weights do not change the cost): "
                f"a projection for one {device}")
    if result.get("backbone") == "tiny":
        on = "CPU" if not _is_gpu(device) else device
        return f"tiny backbone on {on}: {NOT_SD15} (random tiny weights, 64 px; code paths and overheads only)"
    if not _is_gpu(device):
        return f"{where}: a CPU cost, not a GPU projection"
    return f"{where}: not SD1.5 at {PROJECTION_RESOLUTION} px, {NOT_SD15} at the paper's resolution"


def _load_seconds(result: dict) -> float | None:
    """Per-shard model (backbone) load time, where the sampler report measured one."""
    for holder in (result, result.get("seconds", {})):
        for key in ("backbone_load_seconds", "backbone_load"):
            if isinstance(holder.get(key), int | float):
                return float(holder[key])
    return None


def shard_wall_seconds(n_pairs: int, seconds_per_pair: float, shards: int, load_seconds: float | None = None) -> float:
    """Wall time of `n_pairs` split evenly over `shards` devices: the largest shard, ceil(n / N) pairs,
    plus one model load per shard when given."""
    return math.ceil(n_pairs / shards) * seconds_per_pair + (load_seconds or 0.0)


def cost_table(report: dict, methods: list[str] | None = None, n_pairs: int = N_PAIRS,
               shards: tuple[int, ...] = SHARDS, source_file: str | None = None) -> dict:
    """The projected cost of `n_pairs` pairs per method (and for all of them in one job) from a sampler report."""
    methods = list(methods) if methods is not None else compare_style_methods()
    result = projection_result(report)
    table = {"n_pairs": n_pairs, "shards": list(shards), "methods": methods, "source_file": source_file}
    if result is None:
        table |= {"source": None, "label": "no sampler result with per-method times", "rows": [], "total": None,
                  "is_gpu_projection": False}
        return table
    device = result_device(report, result)
    load = _load_seconds(result)
    rows, measured = [], []
    for name in methods:
        entry = result["methods"].get(name)
        if not entry or not isinstance(entry.get("seconds_cold"), int | float):
            rows.append({"method": name, "measured": False,
                         "reason": ("classical method: not timed by benchmarks/sampler.py" if name in CLASSICAL
                                    else "not in this sampler report")})
            continue
        seconds = float(entry["seconds_cold"])
        measured.append(seconds)
        rows.append({"method": name, "measured": True, "steps_run": entry.get("steps_run"),
                     "seconds_per_pair": seconds, "hours_1_device": n_pairs * seconds / 3600,
                     "wall_seconds": {str(n): shard_wall_seconds(n_pairs, seconds, n, load) for n in shards}})
    total = None
    if measured:
        seconds = sum(measured)
        total = {"methods": [r["method"] for r in rows if r["measured"]], "seconds_per_pair": seconds,
                 "hours_1_device": n_pairs * seconds / 3600,
                 "wall_seconds": {str(n): shard_wall_seconds(n_pairs, seconds, n, load) for n in shards}}
    notes = [
        "seconds per pair: each method's cold time on one pair (its inversions computed, as for every new "
        "pair of the benchmark) at its paper settings; methods that share inversions in one job "
        "(Eye-for-an-eye, Cross-Image Attention) cost somewhat less together than the sum",
        f"wall time on N devices: ceil({n_pairs} / N) pairs per shard (shards by sha256 of the sample id are "
        "only about even: the largest shard sets the wall time)",
        ("per-shard model load included: " + f"{load:.1f} s" if load is not None
         else "per-shard model load time not included (not measured by benchmarks/sampler.py)"),
        "not included: metrics (see the metrics benchmark), sample loading, writing results, queueing",
    ]
    table |= {
        "source": {"device": device, "backbone": result.get("backbone"), "resolution": result.get("resolution"),
                   "weights": result.get("weights"), "dtype": result.get("dtype"), "time": report.get("time"),
                   "git": report.get("git")},
        "label": source_label(report, result),
        "is_gpu_projection": is_gpu_projection(report, result),
        "device_kind": "GPU" if _is_gpu(device) else "CPU",
        "per_shard_load_seconds": load,
        "rows": rows,
        "total": total,
        "notes": notes,
    }
    return table



def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_cost_table(table: dict) -> str:
    """The projected cost table in Markdown, headed by where its figures come from (device, backbone)."""
    n = table["n_pairs"]
    lines = [f"**Projected cost of the {n}-pair benchmark** (every method of `experiment=compare_style` "
             "at its paper settings)"]
    if table.get("source") is None:
        lines += ["", f"No sampler figures: {table['label']}. Run `python -m benchmarks.sampler` (or "
                  "`python -m benchmarks.run`) first."]
        return "\n".join(lines) + "\n"
    source, kind = table["source"], table["device_kind"]
    commit = (source.get("git") or {}).get("commit")
    lines += ["", f"Source: {table['label']}. Measured {source.get('time')}"
              + (f", commit {commit[:12]}" if commit else "")
              + (f", {table['source_file']}" if table.get("source_file") else "") + "."]
    if not table["is_gpu_projection"]:
        lines += ["", f"**These figures are {NOT_SD15} on a GPU"
                  + (" (tiny backbone on CPU)" if source.get("backbone") == "tiny" else "")
                  + ": they show the arithmetic, not the cost of the paper's benchmark.**"]
    unit = "GPU" if kind == "GPU" else "CPU machine"
    walls = [f"wall, {s} {unit}{'s' if s > 1 else ''}" for s in table["shards"]]
    hours = "GPU-hours, 1 GPU" if kind == "GPU" else "hours, 1 CPU machine"
    lines += ["", f"| method | steps | s / pair | {hours} | " + " | ".join(walls) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(walls)]
    for row in table["rows"]:
        if row["measured"]:
            cells = [f"{row['seconds_per_pair']:.2f}", f"{row['hours_1_device']:.2f}",
                     *(duration(row["wall_seconds"][str(s)]) for s in table["shards"])]
            lines.append(f"| {row['method']} | {row.get('steps_run') or ''} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"| {row['method']} | | {row['reason']} | | " + " | ".join("" for _ in walls) + " |")
    total = table["total"]
    if total:
        cells = [f"{total['seconds_per_pair']:.2f}", f"{total['hours_1_device']:.2f}",
                 *(duration(total["wall_seconds"][str(s)]) for s in table["shards"])]
        lines.append("| **all timed methods, one job** | | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {note}" for note in table.get("notes", [])]
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pick_sampler_report(out: Path, current: dict | None = None, current_path: Path | None = None
                        ) -> tuple[dict | None, Path | None]:
    """The sampler report to price the benchmark with: one with SD1.5's architecture at 512 px on a GPU
    (any `sampler-*.json` in `out`, or this run's), else this run's (or this device's file), else any."""
    candidates = []
    if current is not None:
        candidates.append((current, current_path))
    own = out / f"sampler-{slug(device_name())}.json"
    for path in [own, *sorted(p for p in out.glob("sampler-*.json") if p != own)]:
        if current_path is not None and path.resolve() == current_path.resolve():
            continue
        report = _read_json(path)
        if report is not None and report.get("results"):
            candidates.append((report, path))
    for report, path in candidates:
        if any(is_gpu_projection(report, r) and r.get("methods") for r in report["results"]):
            return report, path
    return candidates[0] if candidates else (None, None)


# -- the Markdown summary ----------------------------------------------------------------------------
def _f(value, digits: int = 2) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "n/a"}[value]
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)


def _origin(part: dict) -> str:
    if part.get("from_file"):
        return f" (not re-run: from `{part['from_file']}`, measured {part['report'].get('time')})"
    return ""


def render_sampler(part: dict) -> list[str]:
    report = part["report"]
    lines = [f"## Sampler{_origin(part)}", "",
             "Per-step ratios to a plain batched-CFG DDPM step of the same backbone, same process.", "",
             "| backbone | device | px | steps | Semantix step / plain step (<= 3) | warm / cold pair | "
             "sweep / model (<= 1) | plain step s | Semantix pair cold s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.get("results", []):
        ratios, seconds = r.get("ratios", {}), r.get("seconds", {})
        lines.append(f"| {r.get('backbone')} | {result_device(report, r)} | {r.get('resolution')} | {r.get('steps')} | "
                     f"{_f(ratios.get('semantix_step_over_plain_step'))} | {_f(ratios.get('semantix_pair_warm_over_cold'))} | "
                     f"{_f(ratios.get('sweep_over_model'))} | {_f(seconds.get('plain_cfg_step'), 4)} | "
                     f"{_f(seconds.get('semantix_pair_cold'))} |")
    for r in report.get("results", []):
        if not r.get("methods"):
            continue
        lines += ["", f"Methods at their paper settings, {r.get('backbone')} on {result_device(report, r)}:", "",
                  "| method | steps | cold s | warm s | warm s per step / plain step |", "|---|---:|---:|---:|---:|"]
        for name, m in r["methods"].items():
            lines.append(f"| {name} | {m.get('steps_run')} | {_f(m.get('seconds_cold'))} | "
                         f"{_f(m.get('seconds_warm_cache'))} | {_f(m.get('warm_seconds_per_step_over_plain_cfg_step'))} |")
    corr = report.get("correspondence")
    if corr:
        lines += ["", f"Correspondence search, {corr.get('side')}x{corr.get('side')} x {corr.get('channels')} on "
                  f"{corr.get('device')}: vectorised {_f(corr.get('speedup'), 1)}x the per-pixel loop "
                  f"(target >= 100x on a GPU; met: {_f(corr.get('target_met'))})."]
    return lines


def render_metrics(part: dict) -> list[str]:
    report = part["report"]
    settings = report.get("settings", {})
    sizes = [str(s) for s in settings.get("sizes", [])]
    lines = [f"## Metrics{_origin(part)}", "",
             f"Random weights, real architectures, on {report.get('device')}; median seconds per sample "
             f"(set metrics: amortised update()). Sizes: {', '.join(sizes)} px.", "",
             "| metric | " + " | ".join(f"s / sample at {s} px" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for name, m in report.get("metrics", {}).items():
        if m.get("status") != "ok":
            lines.append(f"| {name} | skipped: {m.get('reason', '')[:80]} |" + " |" * (len(sizes) - 1))
            continue
        cells = [_f(m["sizes"].get(s, {}).get("seconds_per_sample"), 3) for s in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    style = report.get("image_style", {})
    for size, entry in style.get("per_size", {}).items():
        lines += ["", f"`image_style` preset at {size} px: {_f(entry.get('seconds_per_sample_sum'))} s per sample"
                  + (f" (missing: {', '.join(entry['missing'])})" if entry.get("missing") else "") + "."]
    vs = style.get("vs_sampler")
    if isinstance(vs, list):
        for c in vs:
            lines.append(f"- vs a Semantix sample ({c.get('backbone')}, {c.get('resolution')} px): ratio "
                         f"{_f(c.get('ratio'))} (target < 0.10). {c.get('label', '')}")
    elif vs:
        lines.append(f"- vs sampler: {vs}")
    return lines


def render_harness(part: dict) -> list[str]:
    report = part["report"]
    settings = report.get("settings", {})
    ratio = report.get("ratio_whole_job_over_bare_methods")
    target = report.get("targets", {}).get("whole_job_over_bare_methods_max")
    lines = [f"## Harness overhead{_origin(part)}", "",
             f"`experiment={settings.get('experiment')}` ({settings.get('n_samples')} samples, "
             f"{len(settings.get('methods', []))} methods, {settings.get('backbone')} backbone, "
             f"{settings.get('device')}): the whole job (`Runner` + leaderboard) over the sum of the methods' "
             "bare calls, both cold cache, same process.", "",
             f"- **ratio {_f(ratio, 3)}x** (target <= {target}: {'met' if report.get('target_met') else 'NOT met'}"
             + ("" if report.get("target_applies") else "; the target is for the tiny backbone on a CPU") + ")",
             f"- whole job {_f(report['seconds']['whole_job'])} s, bare method calls "
             f"{_f(report['seconds']['bare_methods'])} s; whole job over its own method calls "
             f"{_f(report.get('ratio_whole_job_over_its_method_calls'), 3)} (one pass: not moved by load changes "
             "between the two passes)"]
    if report.get("noise_warning"):
        lines.append(f"- **Unreliable**: {report['noise_warning']}")
    status = report.get("whole_job_status", {})
    if status.get("failed"):
        lines.append(f"- **{status['failed']} sample(s) failed in the job**: the comparison is not valid "
                     f"({'; '.join(status.get('errors', [])[:3])})")
    lines += ["", "| method | bare s | in job s | job / bare |", "|---|---:|---:|---:|"]
    for name, m in report.get("per_method", {}).items():
        lines.append(f"| {name} | {_f(m.get('bare_seconds'), 3)} | {_f(m.get('job_method_seconds'), 3)} | "
                     f"{_f(m.get('job_over_bare'))} |")
    lines += ["", "| part of the whole job | s |", "|---|---:|"]
    for name, seconds in report.get("whole_job_parts", {}).items():
        lines.append(f"| {name} | {_f(seconds, 3)} |")
    return lines


def render_summary(combined: dict) -> str:
    git = combined.get("git") or {}
    versions = combined.get("versions") or {}
    command = " ".join(["python -m benchmarks.run", *combined.get("argv", [])])
    data = [f"`{path}`" for key, path in combined.get("files", {}).items() if key != "summary"]
    lines = [f"# Benchmarks on {combined['device']}", "",
             f"{combined['time']}, commit {(git.get('commit') or 'unknown')[:12]}"
             + (" (uncommitted changes)" if git.get("dirty") else "")
             + f", torch {versions.get('torch')}, python {versions.get('python')}, "
             f"{(combined.get('device_info') or {}).get('cpu_count')} torch threads. Generated by `{command}`.", "",
             "Ratios are measured within one process (the machines are noisy); absolute seconds are for the "
             "device named. Full data: " + ", ".join(data) + "."]
    if combined.get("quick"):
        lines += ["", "**Quick smoke settings** (few steps, repeats, sizes and samples): these figures check "
                  "that the benchmarks run; they are not results."]
    for name, render in (("sampler", render_sampler), ("metrics", render_metrics), ("harness", render_harness)):
        part = combined["parts"].get(name)
        lines.append("")
        if part is None:
            lines.append(f"## {name.capitalize()}: skipped, no earlier `{name}-*.json` in the output folder")
        else:
            lines += render(part)
    lines += ["", "## Projected cost", "", render_cost_table(combined["cost_table"]).rstrip()]
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------------
def part_argv(name: str, quick: bool, out: Path, limit: int | None, harness_methods: list[str] | None) -> list[str]:
    """Arguments of each benchmark's main(): its defaults, or tiny settings for a smoke run."""
    if name == "sampler":
        quick_args = ["--steps", "4", "--sweep", "2", "--repeats", "1", "--methods", "styleid"]
        return [*(quick_args if quick else []), "--out", str(out)]
    if name == "metrics":
        device = ["--device", "cuda"] if torch.cuda.is_available() else []
        quick_args = ["--sizes", "64", "--samples", "1", "--repeats", "1", "--no-compute"]
        return [*(quick_args if quick else []), *device, "--out", str(out)]
    args = ["--out", str(out)] + (["--quick"] if quick else [])
    if limit is not None:
        args += ["--limit", str(limit)]
    if harness_methods:
        args += ["--methods", *harness_methods]
    return args


def _part_main(name: str):
    if name == "sampler":
        from benchmarks.sampler import main
    elif name == "metrics":
        from benchmarks.metrics import main
    else:
        from benchmarks.harness import main
    return main


def _earlier(name: str, out: Path, device_slug: str) -> tuple[dict, Path] | None:
    names = [f"{name}-{device_slug}.json"] + (["harness-cpu.json"] if name == "harness" else [])
    for file_name in names:
        report = _read_json(out / file_name)
        if report is not None:
            return report, out / file_name
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: few steps/repeats/sizes, 2 demo samples; default --out results/benchmarks/quick")
    parser.add_argument("--skip", nargs="+", choices=PARTS, default=[], help="parts not to run")
    parser.add_argument("--out", type=Path, default=None, help="default: results/benchmarks")
    parser.add_argument("--limit", type=int, default=None,
                        help="harness: first N demo samples (default all; --quick: 2)")
    parser.add_argument("--harness-methods", nargs="+", default=None,
                        help="harness: these method labels instead of the demo experiment's")
    parser.add_argument("--cost-table", action="store_true",
                        help="print the projected cost table from the sampler JSON in --out and exit")
    args = parser.parse_args(argv)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    name = device_name()
    device_slug = slug(name)

    if args.cost_table:
        report, path = pick_sampler_report(out)
        table = cost_table(report or {}, source_file=str(path) if path else None)
        print(render_cost_table(table), end="")
        return table

    start = time.perf_counter()
    parts, files, seconds = {}, {}, {}
    for part in PARTS:
        if part in args.skip:
            earlier = _earlier(part, out, device_slug)
            if earlier is not None:
                parts[part] = {"report": earlier[0], "from_file": str(earlier[1])}
                files[part] = str(earlier[1])
            continue
        part_args = part_argv(part, args.quick, out, args.limit, args.harness_methods)
        print(f"== {part}: {' '.join(part_args)}", flush=True)
        part_start = time.perf_counter()
        report = _part_main(part)(part_args)
        seconds[part] = time.perf_counter() - part_start
        parts[part] = {"report": report, "from_file": None, "argv": part_args}
        if part == "harness":
            files[part] = str(out / f"harness-{slug(report['device'])}.json")
        else:
            files[part] = str(out / f"{part}-{slug(report['device'])}.json")

    sampler_current = parts.get("sampler")
    sampler_report, sampler_path = pick_sampler_report(
        out, sampler_current["report"] if sampler_current else None,
        Path(files["sampler"]) if sampler_current else None)
    table = cost_table(sampler_report or {}, source_file=str(sampler_path) if sampler_path else None)

    json_path, md_path = out / f"{device_slug}.json", out / f"{device_slug}.md"
    combined = {
        "benchmark": "all",
        "device": name,
        "device_info": provenance.device_info(),
        "git": provenance.git_state(),
        "versions": provenance.package_versions(),
        "time": provenance.now(),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "skipped": list(args.skip),
        "seconds": seconds | {"total": time.perf_counter() - start},
        "files": files | {"summary": str(md_path), "combined": str(json_path)},
        "parts": parts,
        "cost_table": table,
    }
    combined["summary"] = {
        "harness_ratio": (parts["harness"]["report"].get("ratio_whole_job_over_bare_methods")
                          if "harness" in parts else None),
        "cost_table_is_gpu_projection": table.get("is_gpu_projection"),
        "cost_table_source": table.get("label"),
    }
    atomic_write_json(json_path, combined)
    atomic_write_bytes(md_path, render_summary(combined).encode())
    print(f"-> {json_path}\n-> {md_path}")
    return combined


if __name__ == "__main__":
    main()
