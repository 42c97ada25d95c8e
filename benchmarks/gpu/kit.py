"""The GPU run kit's own parts and its summary (run_kit.sh calls these; benchmarks/gpu/README.md).

    python -m benchmarks.gpu.kit correspondence --out DIR [--side 64 --channels 320 --repeats 3]
    python -m benchmarks.gpu.kit kernels --out DIR [--steps 10 --repeats 2 --no-compile]
    python -m benchmarks.gpu.kit summary --out DIR --status FILE [--junit FILE --quick --budget S ...]
    python -m benchmarks.gpu.kit collect DIR [--into results/benchmarks]

`correspondence` and `kernels` run `benchmarks.sampler`'s correspondence search and precision/kernel
benchmarks in processes of their own, each writing `<name>-<device>.json` (kernels after each variant,
so a time limit keeps the variants already measured). `summary` writes `kit-<device>.json`: the device
(the GPU's name), each part's status (ok, failed, timeout, skipped), seconds and file, the key figures
against the issue's targets, the `pytest -m gpu` outcome per test; and it completes the sampler JSON
with the correspondence and kernel results that the kit measured in their own processes, so that
`sampler-<device>.json` reads as one sampler report (`benchmarks.run --cost-table`). The summary
imports no part of the harness, so it is written even when the harness cannot be imported. `collect`
copies a kit run's JSON files (from the device's output folder) into results/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = ("correspondence", "sampler", "metrics", "video", "pytest", "kernels")
# The GPU targets, as the benchmarks define them; "hopper" ones hold for an H100-class GPU.
TARGETS = {
    "semantix_step_over_plain_step_max": 3.0,
    "semantix_pair_cold_seconds_max_hopper": 8.0,
    "semantix_pair_batched_seconds_max": 2.0,
    "batch4_throughput_over_batch1_min": 2.5,
    "correspondence_speedup_over_loop_min": 100.0,
    "image_style_over_semantix_sample_max": 0.10,
    "video_16_frames_512px_peak_gib_max": 40.0,
}


def slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def write_json(path: Path, obj) -> None:
    """Write atomically (a temporary file in the folder, then a rename): no half file after a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def provenance_header(benchmark: str, name: str) -> dict:
    from semantix import provenance

    return {"benchmark": benchmark, "device": name, "device_info": provenance.device_info(),
            "git": provenance.git_state(), "versions": provenance.package_versions(), "time": provenance.now()}


# -- parts ------------------------------------------------------------------------------------------
def run_correspondence(args) -> dict:
    import torch

    from benchmarks.sampler import bench_correspondence

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = device_name()
    report = provenance_header("correspondence", name) | {
        "what": "Eye-for-an-eye's vectorised correspondence search (semantix.diffusion.cosine_correspondence) "
                "against the authors' per-pixel loop (benchmarks.sampler.correspondence_loop)",
        "targets": {"speedup_over_loop_min": TARGETS["correspondence_speedup_over_loop_min"]},
        "result": bench_correspondence(device, side=args.side, channels=args.channels, repeats=args.repeats),
    }
    write_json(args.out / f"correspondence-{slug(name)}.json", report)
    print(json.dumps(report["result"], indent=2))
    return report


def with_speedups(variants: list[dict]) -> list[dict]:
    """Each variant's speed-ups over the first (float32 without options)."""
    if not variants:
        return variants
    base = variants[0]
    return [v | {"plain_speedup_vs_float32": base["plain_cfg_step_s"] / v["plain_cfg_step_s"],
                 "semantix_speedup_vs_float32": base["semantix_pair_warm_per_step_s"]
                 / v["semantix_pair_warm_per_step_s"]} for v in variants]


def run_kernels(args) -> dict:
    from benchmarks.sampler import KERNEL_VARIANTS, bench_kernels

    name = device_name()
    out = args.out / f"kernels-{slug(name)}.json"
    variants = [v for v in KERNEL_VARIANTS if not (args.no_compile and v["compile_unet"])]
    header = provenance_header("kernels", name) | {
        "what": "SD1.5's architecture (random weights, 512 px): a plain CFG step and a warm Semantix pair per "
                "step for each precision and kernel option (SDPA attention in every variant), with the UNet's "
                "relative error against float32",
        "steps": args.steps, "repeats": args.repeats, "variants_planned": variants}

    def partial(results: list[dict]) -> None:
        write_json(out, header | {"complete": False, "result": {"steps": args.steps, "repeats": args.repeats,
                                                                "variants": with_speedups(results)}})
        print(f"kernels: {len(results)} of {len(variants)} variants measured", flush=True)

    result = bench_kernels(steps=args.steps, repeats=args.repeats, variants=variants, on_variant=partial)
    report = header | {"complete": True, "result": result}
    if "skipped" in result:
        report["skipped"] = result["skipped"]
    write_json(out, report)
    print(json.dumps(result, indent=2))
    return report


# -- summary ----------------------------------------------------------------------------------------
def read_status(path: Path) -> dict[str, dict]:
    """run_kit.sh's status lines: name, status, exit code, seconds, time limit, command (tab-separated)."""
    parts = {}
    if not path.is_file():
        return parts
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 5:
            continue
        name, status, rc, seconds, budget = fields[:5]
        parts[name] = {"status": status, "exit_code": int(rc) if rc.lstrip("-").isdigit() else None,
                       "seconds": float(seconds), "time_limit_seconds": float(budget),
                       "command": fields[5] if len(fields) > 5 else None}
    return parts


def pytest_outcome(junit: Path | None) -> dict | None:
    if junit is None or not junit.is_file():
        return None
    try:
        root = ElementTree.parse(junit).getroot()
    except ElementTree.ParseError as e:
        return {"error": f"unreadable junit file: {e}"}
    cases, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in root.iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (element.get("message") or element.text or "")[:500]
                break
        counts[outcome] += 1
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message})
    return counts | {"tests": len(cases), "cases": cases}


def figures(out: Path, device: str) -> dict:
    """The key figures of each part's JSON, against the targets (None where a figure is missing)."""
    s = slug(device)
    hopper = any(k in device for k in ("H100", "H200", "GH200"))
    found: dict = {}
    sampler = read_json(out / f"sampler-{s}.json")
    if sampler:
        result = next((r for r in sampler.get("results", []) if r.get("backbone") == "sd15_random"),
                      (sampler.get("results") or [None])[-1])
        if result:
            batching = result.get("batching") or {}
            batched = batching.get("seconds_batched")
            ratio = result.get("ratios", {}).get("semantix_step_over_plain_step")
            cold = result.get("seconds", {}).get("semantix_pair_cold")
            found["sampler"] = {
                "backbone": result.get("backbone"), "resolution": result.get("resolution"), "steps": result.get("steps"),
                "dtype": result.get("dtype"), "complete": sampler.get("complete"),
                "semantix_step_over_plain_step": ratio,
                "plain_cfg_step_seconds": result.get("seconds", {}).get("plain_cfg_step"),
                "semantix_pair_cold_seconds": cold,
                "semantix_pair_warm_cache_seconds": result.get("seconds", {}).get("semantix_pair_warm_cache"),
                "peak_cuda_gib": result.get("peak_cuda_gib"),
                "batch4_throughput_over_batch1": batching.get("throughput_ratio"),
                "semantix_pair_batched_seconds": batched / batching["batch"] if batched and batching.get("batch") else None,
                "methods_timed": sorted(result.get("methods") or {}),
                "targets_met": {  # the targets are for a GPU: None on a CPU
                    "semantix_step_over_plain_step": None if ratio is None or device == "cpu"
                    else ratio <= TARGETS["semantix_step_over_plain_step_max"],
                    "semantix_pair_cold_seconds_hopper": (cold <= TARGETS["semantix_pair_cold_seconds_max_hopper"]
                                                          if cold is not None and hopper else None),
                    "batch4_throughput_over_batch1": (batching["throughput_ratio"]
                                                      >= TARGETS["batch4_throughput_over_batch1_min"]
                                                      if batching.get("throughput_ratio") and device != "cpu" else None),
                }}
    correspondence = read_json(out / f"correspondence-{s}.json")
    if correspondence:
        r = correspondence.get("result", {})
        found["correspondence"] = {k: r.get(k) for k in ("side", "channels", "speedup", "indices_agree",
                                                         "seconds_vectorised", "seconds_per_pixel_loop")}
        found["correspondence"]["target_met"] = (r["speedup"] >= TARGETS["correspondence_speedup_over_loop_min"]
                                                 if r.get("speedup") and device != "cpu" else None)
    metrics = read_json(out / f"metrics-{s}.json")
    if metrics:
        style = metrics.get("image_style", {})
        vs = style.get("vs_sampler")
        found["metrics"] = {
            "image_style_seconds_per_sample": {size: e.get("seconds_per_sample_sum")
                                               for size, e in style.get("per_size", {}).items()},
            "missing": {size: e.get("missing") for size, e in style.get("per_size", {}).items() if e.get("missing")},
            "vs_semantix_sample": [{k: c.get(k) for k in ("backbone", "resolution", "ratio", "target_met", "partial")}
                                   for c in vs] if isinstance(vs, list) else vs,
            "skipped": {n: m.get("reason") for n, m in metrics.get("metrics", {}).items() if m.get("status") != "ok"}}
    video = read_json(out / f"video-{s}.json")
    if video:
        peak = (video.get("peak_cuda_gib") or {}).get("video_semantix")
        found["video"] = {"frames": video.get("frames"), "resolution": video.get("resolution"),
                          "steps": video.get("steps"), "dtype": video.get("dtype"),
                          "peak_cuda_gib": peak, "per_frame_cost_over_image": video.get("per_frame_cost_over_image"),
                          "target_met": (peak <= TARGETS["video_16_frames_512px_peak_gib_max"]
                                         if peak is not None and video.get("frames") == 16
                                         and video.get("resolution") == 512 else None)}
    kernels = read_json(out / f"kernels-{s}.json")
    if kernels:
        result = kernels.get("result", {})
        found["kernels"] = {"complete": kernels.get("complete"), "skipped": result.get("skipped"),
                            "variants": [{k: v.get(k) for k in ("dtype", "channels_last", "compile_unet",
                                                                "plain_speedup_vs_float32", "semantix_speedup_vs_float32",
                                                                "unet_relative_error_vs_float32", "peak_cuda_gib")}
                                         for v in result.get("variants", [])]}
    return found


def complete_sampler_report(out: Path, device: str) -> bool:
    """Fill the sampler JSON's correspondence and kernels (skipped there: the kit ran them in their own
    processes) from the kit's files. True when the file changed."""
    s = slug(device)
    path = out / f"sampler-{s}.json"
    report = read_json(path)
    if report is None:
        return False
    changed = False
    for key, name in (("correspondence", "correspondence"), ("kernels", "kernels")):
        part = read_json(out / f"{name}-{s}.json")
        if part and str((report.get(key) or {}).get("skipped", "")).startswith("--skip") and part.get("result"):
            report[key] = part["result"] | {"measured_by": f"benchmarks.gpu.kit {name} ({name}-{s}.json), "
                                                          "a process of its own in the same kit run"}
            changed = True
    if changed:
        write_json(path, report)
    return changed


def git_commit() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def summarize(args) -> dict:
    parts = read_status(args.status)
    try:
        import torch

        device = device_name()
        versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    except Exception as e:  # noqa: BLE001 - the summary is written whatever failed
        device, versions = "unknown", {"torch": f"not importable: {e}"}
    versions["python"] = platform.python_version()
    s = slug(device)
    files = {"sampler": f"sampler-{s}.json", "correspondence": f"correspondence-{s}.json",
             "metrics": f"metrics-{s}.json", "video": f"video-{s}.json", "kernels": f"kernels-{s}.json"}
    for name in PARTS:
        entry = parts.setdefault(name, {"status": "not run", "exit_code": None, "seconds": 0.0,
                                        "time_limit_seconds": 0.0, "command": None})
        if name in files:
            report = read_json(args.out / files[name])
            entry["file"] = files[name] if report is not None else None
            if entry["status"] == "ok" and report is None:
                entry["status"], entry["reason"] = "failed", f"exited 0 without writing {files[name]}"
            elif entry["status"] == "ok" and report.get("skipped"):
                entry["status"], entry["reason"] = "skipped", report["skipped"]
            elif entry["status"] == "timeout" and report is not None:
                entry["reason"] = "time limit reached: the file holds what was measured before it"
    sampler_completed = complete_sampler_report(args.out, device)
    summary = {
        "kit": "semantix GPU run kit (benchmarks/gpu)",
        "device": device,
        "gpu": device if device not in ("cpu", "unknown") else None,
        "quick": args.quick,
        "versions": versions,
        "git": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "budget_seconds": args.budget,
        "seconds_total": args.elapsed,
        "install": {"status": args.install_status, "target": args.site, "wheels": args.wheels or []},
        "parts": parts,
        "parts_ok": [n for n in PARTS if parts[n]["status"] == "ok"],
        "sampler_report_completed_with_kit_parts": sampler_completed,
        "pytest": pytest_outcome(args.junit),
        "targets": TARGETS,
        "figures": figures(args.out, device),
        "files": sorted({p.name for p in args.out.iterdir() if p.is_file() and not p.name.startswith(".")}
                        | {f"kit-{s}.json"}),
    }
    if args.quick:
        summary["note"] = ("quick rehearsal settings (tiny backbones, few steps, on the CPU): the figures check "
                           "that the kit runs; they are not results")
    path = args.out / f"kit-{s}.json"
    write_json(path, summary)
    print(json.dumps({"device": device, "parts": {n: parts[n]["status"] for n in PARTS},
                      "figures": summary["figures"]}, indent=2, default=str))
    print(f"-> {path}")
    return summary


def collect(args) -> list[Path]:
    """Copy a kit run's JSON (its output folder) into `--into`, keeping their names."""
    copied = []
    args.into.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.folder.glob("*.json")):
        shutil.copyfile(path, args.into / path.name)
        copied.append(args.into / path.name)
        print(f"{path} -> {args.into / path.name}")
    return copied


def main(argv: list[str] | None = None) -> object:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("correspondence")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--channels", type=int, default=320)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("kernels")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    p = sub.add_parser("summary")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--status", type=Path, required=True)
    p.add_argument("--junit", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--elapsed", type=float, default=None)
    p.add_argument("--install-status", default="unknown")
    p.add_argument("--site", default=None)
    p.add_argument("--wheels", nargs="*", default=None)
    p = sub.add_parser("collect")
    p.add_argument("folder", type=Path)
    p.add_argument("--into", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    return {"correspondence": run_correspondence, "kernels": run_kernels, "summary": summarize,
            "collect": collect}[args.command](args)


if __name__ == "__main__":
    main()
    sys.exit(0)
