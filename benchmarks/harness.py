"""Harness-overhead benchmark: the whole demo job against the sum of its methods' bare sampling time.

Target (issue 8): on the tiny backbone on a CPU, the whole demo experiment (`semantix.runner.Runner`,
as `semantix-bench` runs it: sample loading and validation, metrics, PNG and record writes, resume
checks, run files, leaderboard) takes at most 1.5x the sum of its methods' bare calls.

Measured in one process (the machines are noisy), on the same samples, both with a cold cache:

  (a) bare: every method of the experiment, built from the composed config
      (`hydra.utils.instantiate(cfg.method[label])`), prepared on `build_tiny()` with a fresh cache
      directory (one for all methods, as in a job: methods that share inversions share them here
      too), called on every sample (loaded beforehand, untimed) with the runner's per-sample seed;
      only the method calls are timed;
  (b) whole job: the same composed config through `Runner(cfg, labels).run()` plus the leaderboard
      (what `semantix-bench` does), results and cache in a fresh temporary folder, progress off.
      Its parts: runner construction, preparation (backbone build, method preparation, run files),
      sample loading, method calls, metrics, the rest of the loop (seeding, output checks,
      quantisation, PNG and record writes, resume checks), finishing (set metrics, invocation
      files) and the leaderboard, from the records' timings and timers around the runner's phases.

ratio = (b) / (a). Before both, every method runs once on the first sample (untimed, throwaway
cache) so that neither side pays the process's first-call costs (`--no-warmup` turns this off).

    python -m benchmarks.harness                     # the demo experiment, all samples, CPU
    python -m benchmarks.harness --limit 2 --methods identity reinhard

Writes results/benchmarks/harness-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from semantix import config as semantix_config
from semantix import provenance
from semantix.backbones import build_tiny
from semantix.config import RunLabels
from semantix.io import atomic_write_json
from semantix.leaderboard import write_leaderboard
from semantix.runner import Runner, sample_seed

TARGETS = {"whole_job_over_bare_methods_max": 1.5}
CONSISTENT = (0.8, 1.25)  # per-method job/bare range expected when the machine's load is steady


def device_slug(device: torch.device | str) -> str:
    """"cpu", or the CUDA device's name lowercased with spaces as dashes (as the other benchmarks)."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return name.lower().replace(" ", "-")


def compose_job(experiment: str, results_dir: Path, cache_dir: Path, device: str, limit: int | None = None,
                methods: list[str] | None = None) -> tuple[DictConfig, RunLabels, list[str]]:
    """The config `semantix-bench experiment=<experiment> ...` composes, and its run labels."""
    overrides = [f"experiment={experiment}", f"paths.results_dir={results_dir}", f"paths.cache_dir={cache_dir}",
                 "runner.progress=false", "runner.leaderboard=true", f"device={device}"]
    if limit is not None:
        overrides.append(f"dataset.limit={limit}")
    if methods:
        overrides.append(f"method=[{','.join(methods)}]")
    cfg, labels = semantix_config.compose_job(overrides)
    return cfg, labels, overrides


def _seed(seed: int) -> int:
    """As the runner seeds each (sample, method) call: the global RNGs; returns the seed the method gets."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepared_methods(cfg: DictConfig, backbone, cache_dir: Path) -> dict:
    methods = {label: instantiate(mcfg) for label, mcfg in cfg.method.items()}
    for method in methods.values():
        method.prepare(backbone if method.uses_backbone else None, cache_dir)
    return methods


def _tiny(cfg: DictConfig):
    if cfg.backbone.name != "tiny":
        raise ValueError(f"the harness benchmark runs on the tiny backbone, not {cfg.backbone.name!r}")
    return build_tiny(resolution=cfg.backbone.resolution, seed=cfg.backbone.seed, device=_resolve(cfg.device),
                      dtype=cfg.backbone.dtype)


def bare_methods(cfg: DictConfig, samples: list, work: Path) -> dict:
    """(a): seconds of the method calls only, per method, cold cache, in the runner's order (sample-major)."""
    start = time.perf_counter()
    backbone = _tiny(cfg)
    backbone_seconds = time.perf_counter() - start
    methods = _prepared_methods(cfg, backbone, work / "bare-cache")
    per_method = dict.fromkeys(methods, 0.0)
    for sample in samples:
        seed = sample_seed(cfg.seed, sample.sample_id)
        for label, method in methods.items():
            method_seed = _seed(seed)
            _sync(backbone.device)
            start = time.perf_counter()
            method(sample, method_seed)
            _sync(backbone.device)
            per_method[label] += time.perf_counter() - start
    return {"per_method": per_method, "total": sum(per_method.values()), "backbone_build": backbone_seconds}


class _Timer:
    """Wraps a bound method of one object and adds up its wall time."""

    def __init__(self, owner, name: str):
        self.seconds = 0.0
        self.inner = getattr(owner, name)
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def whole_job(cfg: DictConfig, labels: RunLabels) -> dict:
    """(b): `Runner(cfg, labels).run()` and the leaderboard, as `semantix-bench` runs a job; with its parts."""
    start = time.perf_counter()
    runner = Runner(cfg, labels)
    init_seconds = time.perf_counter() - start
    prepare, finish = _Timer(runner, "_prepare"), _Timer(runner, "_finish")
    run_start = time.perf_counter()
    result = runner.run()
    _sync(runner.backbone.device if runner.backbone is not None else torch.device("cpu"))
    run_seconds = time.perf_counter() - run_start
    start = time.perf_counter()
    if cfg.runner.leaderboard:
        results_dir = Path(cfg.paths.results_dir)
        write_leaderboard(results_dir / "runs", results_dir / "leaderboard.csv", results_dir / "leaderboard.md")
    leaderboard_seconds = time.perf_counter() - start
    total = init_seconds + run_seconds + leaderboard_seconds

    per_method, load_per_sample, metrics_seconds = {}, {}, 0.0
    status = {"ok": 0, "failed": 0, "errors": []}
    for run in result.runs:
        per_method[run.label] = 0.0
        for record in run.store.records():
            timings = record.get("timings") or {}
            per_method[run.label] += timings.get("method_s", 0.0)
            metrics_seconds += timings.get("metrics_s", 0.0)
            if "load_s" in timings:  # the same load for every method of a sample
                load_per_sample[record["sample_id"]] = timings["load_s"]
        status["ok"] += run.ok
        status["failed"] += run.failed
        status["errors"] += [f"{run.label}: {e}" for e in run.errors[:5]]
    loop_seconds = run_seconds - prepare.seconds - finish.seconds
    methods_seconds, loading_seconds = sum(per_method.values()), sum(load_per_sample.values())
    parts = {
        "runner_init": init_seconds,
        "prepare": prepare.seconds,
        "sample_loading": loading_seconds,
        "methods": methods_seconds,
        "metrics": metrics_seconds,
        "loop_other": loop_seconds - loading_seconds - methods_seconds - metrics_seconds,
        "finish": finish.seconds,
        "leaderboard": leaderboard_seconds,
    }
    return {"total": total, "parts": parts, "per_method": per_method, "status": status,
            "device": str(runner.backbone.device) if runner.backbone is not None else "cpu"}


PARTS_HELP = {
    "runner_init": "Runner(): dataset (manifest validation), metrics, methods instantiated",
    "prepare": "backbone build, method.prepare, run files (config, provenance, metric info, invocation)",
    "sample_loading": "load + validate each sample once (records' load_s)",
    "methods": "method calls (records' method_s, includes the runner's output check and quantisation)",
    "metrics": "per-sample metrics (records' metrics_s)",
    "loop_other": "rest of the loop: resume checks, seeding, PNG and record writes, progress",
    "finish": "set-level metrics, invocation and provenance files",
    "leaderboard": "write_leaderboard over the job's runs",
}


def measure(experiment: str = "demo", limit: int | None = None, methods: list[str] | None = None,
            device: str = "cpu", warmup: bool = True) -> dict:
    """The harness-overhead measurement (no provenance; everything written goes to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="semantix-bench-harness-") as work:
        return _measure(Path(work), experiment, limit, methods, device, warmup)


def _measure(work: Path, experiment: str, limit: int | None, methods: list[str] | None, device: str,
             warmup: bool) -> dict:
    cfg, labels, overrides = compose_job(experiment, work / "results", work / "cache", device, limit, methods)
    dataset = instantiate(cfg.dataset)
    samples = [dataset.load_sample(sid) for sid in dataset.sample_ids]
    if not samples:
        raise ValueError(f"experiment {experiment!r} with limit {limit} has no samples")

    warmup_seconds = None
    if warmup:  # first-call costs (allocator, lazy imports and inits) paid by neither side
        start = time.perf_counter()
        backbone = _tiny(cfg)
        for method in _prepared_methods(cfg, backbone, work / "warmup-cache").values():
            method(samples[0], _seed(sample_seed(cfg.seed, samples[0].sample_id)))
        del backbone
        warmup_seconds = time.perf_counter() - start

    bare = bare_methods(cfg, samples, work)
    job = whole_job(cfg, labels)
    # Records store timings to 0.1 ms: a per-method ratio under 10 ms of work would be rounding noise.
    per_method = {
        label: {"bare_seconds": bare["per_method"][label], "job_method_seconds": job["per_method"].get(label),
                "job_over_bare": (job["per_method"][label] / bare["per_method"][label]
                                  if bare["per_method"][label] >= 0.01 and label in job["per_method"] else None)}
        for label in bare["per_method"]
    }
    ratio = job["total"] / bare["total"] if bare["total"] > 0 else None
    noise_warning = load_change_warning(per_method)
    return {
        "settings": {
            "experiment": experiment, "dataset": labels.dataset, "backbone": labels.backbone,
            "metrics": labels.metrics, "methods": list(cfg.method), "limit": limit, "n_samples": len(samples),
            "sample_ids": [s.sample_id for s in samples], "device": _resolve(cfg.device), "warmup": warmup,
            "torch_threads": torch.get_num_threads(), "overrides": overrides,
        },
        "targets": TARGETS,
        "seconds": {
            "bare_methods": bare["total"],
            "whole_job": job["total"],
            "bare_backbone_build": bare["backbone_build"],
            "warmup": warmup_seconds,
        },
        "ratio_whole_job_over_bare_methods": ratio,
        # The same job against its own method calls (records' method_s): no second pass, so not
        # moved by load changing between (a) and (b) on a shared machine; a cross-check of `ratio`.
        "ratio_whole_job_over_its_method_calls": (job["total"] / job["parts"]["methods"]
                                                  if job["parts"]["methods"] > 0 else None),
        "target_met": ratio is not None and ratio <= TARGETS["whole_job_over_bare_methods_max"],
        "target_applies": labels.backbone == "tiny" and _resolve(cfg.device) == "cpu",
        "noise_warning": noise_warning,
        "per_method": per_method,
        "whole_job_parts": job["parts"],
        "whole_job_parts_help": PARTS_HELP,
        "whole_job_status": job["status"],
        "what": {
            "bare_methods": "sum of the method calls alone (cold cache, samples preloaded, backbone prebuilt)",
            "whole_job": "Runner(cfg).run() + leaderboard, from construction to the leaderboard written",
            "ratio_whole_job_over_its_method_calls": "whole_job / whole_job_parts.methods (one pass, noise-robust)",
        },
    }


def load_change_warning(per_method: dict) -> str | None:
    """The same calls in both passes should take about the same time; when a method's job/bare ratio
    (over at least 1 s of work) is outside `CONSISTENT`, the machine's load changed between the passes
    and the whole-job ratio measures that, not the harness."""
    off = sorted(label for label, m in per_method.items()
                 if m["job_over_bare"] is not None and m["bare_seconds"] >= 1.0
                 and not CONSISTENT[0] <= m["job_over_bare"] <= CONSISTENT[1])
    if not off:
        return None
    return (f"per-method job/bare outside [{CONSISTENT[0]}, {CONSISTENT[1]}] for {', '.join(off)}: the load "
            "changed between the passes (a shared machine?); the ratio is not reliable, rerun on a quiet "
            "machine (ratio_whole_job_over_its_method_calls comes from one pass)")


def _resolve(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}x"


def summary_line(result: dict) -> str:
    seconds = result["seconds"]
    met = "met" if result["target_met"] else "NOT met"
    return (f"whole job {seconds['whole_job']:.2f} s / bare methods {seconds['bare_methods']:.2f} s = "
            f"{_x(result['ratio_whole_job_over_bare_methods'])} "
            f"(target <= {TARGETS['whole_job_over_bare_methods_max']}x: {met}); whole job / its own method "
            f"calls = {_x(result['ratio_whole_job_over_its_method_calls'])}"
            + (f"\nWARNING: {result['noise_warning']}" if result.get("noise_warning") else ""))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="demo", help="conf/experiment/<name>.yaml (default: demo)")
    parser.add_argument("--limit", type=int, default=None, help="first N samples (default: all; --quick: 2)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="method labels instead of the experiment's (conf/method/<label>.yaml)")
    parser.add_argument("--device", default="cpu", help="cpu (the target's setting), cuda or auto")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed first pass over one sample")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 samples unless --limit is given, no warm-up pass")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)
    limit = args.limit if args.limit is not None else (2 if args.quick else None)

    result = measure(args.experiment, limit, args.methods, args.device, args.warmup and not args.quick)
    device = torch.device(result["settings"]["device"])
    report = {
        "benchmark": "harness",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device_info": provenance.device_info(),
        "git": provenance.git_state(),
        "versions": provenance.package_versions(),
        "time": provenance.now(),
        "quick": args.quick,
        **result,
    }
    out = args.out / f"harness-{device_slug(device)}.json"
    atomic_write_json(out, report)
    print(json.dumps({"per_method": result["per_method"], "whole_job_parts": result["whole_job_parts"]}, indent=2))
    print(summary_line(result))
    print(f"-> {out}")
    return report


if __name__ == "__main__":
    main()
