"""Metric benchmark: time and peak memory per sample of every registered metric.

Every metric of `semantix.registry.METRICS` is built with seeded random weights (`random` for each
constructor argument named `weights` or `*_weights`: the real architectures, so the costs are real,
the values meaningless) and fed synthetic samples at each image size:

- per-sample metrics: the time of `metric(output, sample)`, as the runner calls it, per sample;
- set-level metrics (FID, ArtFID): the amortised `update(output, sample)` time per sample, plus the
  time of one `compute()` per run (once per metric, at the first size: it does not depend on the image
  size; a 2048-d Fréchet distance is an eigendecomposition of a 2048 x 2048 matrix).

Every image of every call is new (no embedding cache hits, also across metrics), so per-sample times
are upper bounds. Medians over `--samples` x `--repeats` calls, after one untimed warm-up call. Build
time and memory are charged to the first metric that builds a shared model (CLIP, DINO, VGG19,
Inception), in registry order. Peak memory of each size (warm-up included): on CUDA the allocator
peak above the start; on a CPU the peak resident set of the process above its level at the start
(sampled every 2 ms), which misses memory the process already held.

A metric whose module does not exist yet, or whose build fails, is recorded as skipped with the
reason. The `image_style` metrics (ArtFID, FID, LPIPS, CFSD, CLIP style and content, Gram) are
summed per sample and compared with a Semantix sample's time from the sampler benchmark of the same
device (results/benchmarks/sampler-<device>.json), target < 10 %.

    python -m benchmarks.metrics                              # CPU, 64 and 512 px
    python -m benchmarks.metrics --sizes 64 --samples 2 --repeats 1 --no-compute

Writes results/benchmarks/metrics-<device>.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import threading
import time
from pathlib import Path

import torch

from semantix import provenance
from semantix.io import atomic_write_json
from semantix.metrics.base import SetMetric
from semantix.registry import METRICS
from semantix.types import Sample

# The image_style metric preset of the leaderboard.
IMAGE_STYLE = ("artfid", "fid", "lpips", "cfsd", "clip_style", "clip_content", "gram")
TARGETS = {"image_style_over_semantix_sample_max": 0.10}
PROMPT = "a watercolour painting of a house by a river"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


class PeakMemory:
    """Peak memory of a block above its start, in MiB: the CUDA allocator's on a GPU; on a CPU the
    process's resident set, sampled by a thread every 2 ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start = self.peak = _rss_bytes()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
            return
        self.done.set()
        self.thread.join()
        self.mib = (max(self.peak, _rss_bytes()) - self.start) / 2**20


def image(seed: int, size: int) -> torch.Tensor:
    """A smooth random image with some texture, (3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bilinear")
    return (coarse[0] + 0.05 * torch.randn(3, size, size, generator=g)).clamp(0, 1)


def make_samples(count: int, size: int, first_seed: int) -> list[tuple[torch.Tensor, Sample]]:
    """(output, sample) pairs of new images."""
    pairs = []
    for i in range(count):
        seed = first_seed + 3 * i
        sample = Sample(f"bench-{seed}", image(seed, size), (image(seed + 1, size),), prompt=PROMPT)
        pairs.append((image(seed + 2, size), sample))
    return pairs


def random_kwargs(cls, device: str) -> dict:
    """`random` for every weights argument of the constructor; the device where there is one."""
    parameters = inspect.signature(cls.__init__).parameters
    kwargs = {name: "random" for name in parameters if name == "weights" or name.endswith("_weights")}
    if "device" in parameters:
        kwargs["device"] = device
    return kwargs


def timed(device: torch.device, call) -> float:
    _sync(device)
    start = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - start


def bench_size(metric, set_level: bool, size: int, samples: int, repeats: int, device: torch.device,
               with_compute: bool, seed: int) -> dict:
    step = metric.update if set_level else metric
    times = []
    with PeakMemory(device) as memory:
        step(*make_samples(1, size, first_seed=seed)[0])  # warm-up: lazy inits, allocator; not timed
        for repeat in range(repeats):
            for output, sample in make_samples(samples, size, first_seed=seed + 10_000 * (repeat + 1)):
                times.append(timed(device, lambda o=output, s=sample: step(o, s)))
        compute_seconds = timed(device, metric.compute) if set_level and with_compute else None
    metric.reset()
    result = {
        "seconds_per_sample": statistics.median(times),
        "seconds_per_call": times,
        ("peak_cuda_mib" if device.type == "cuda" else "peak_rss_increase_mib"): memory.mib,
    }
    if set_level:
        result["what"] = "update() per sample, amortised; compute() once per run"
        result["compute_seconds"] = compute_seconds
    return result


def bench_metric(name: str, sizes: list[int], samples: int, repeats: int, device: torch.device,
                 with_compute: bool, seed: int) -> dict:
    """Build `name` (time and memory; a model shared with a metric built before it is not built again)
    and time it at each size on images from `seed` on."""
    try:
        cls = METRICS.get(name)
    except (ImportError, AttributeError) as e:
        return {"status": "skipped", "reason": f"not importable: {type(e).__name__}: {e}"}
    kwargs = random_kwargs(cls, str(device))
    set_level = issubclass(cls, SetMetric)
    entry = {"class": f"{cls.__module__}.{cls.__qualname__}", "set_level": set_level, "kwargs": kwargs}
    try:
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            metric = cls(**kwargs)
            build_seconds = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - one metric failing to build must not stop the benchmark
        return entry | {"status": "skipped", "reason": f"build failed: {type(e).__name__}: {e}"}
    entry |= {"status": "ok", "build_seconds": build_seconds, "build_memory_mib": memory.mib, "sizes": {}}
    for index, size in enumerate(sizes):
        try:
            entry["sizes"][str(size)] = bench_size(metric, set_level, size, samples, repeats, device,
                                                   with_compute and index == 0, seed + 100_000 * index)
        except Exception as e:  # noqa: BLE001 - e.g. a metric that refuses an image size
            entry["sizes"][str(size)] = {"error": f"{type(e).__name__}: {e}"}
        print(f"{name:24s} {size:4d} px  {entry['sizes'][str(size)].get('seconds_per_sample')}", flush=True)
    return entry


def image_style_summary(results: dict, sizes: list[int], sampler_report: dict | None, sampler_path: Path) -> dict:
    per_size = {}
    for size in sizes:
        measured = {n: results[n]["sizes"][str(size)] for n in IMAGE_STYLE if results.get(n, {}).get("status") == "ok"}
        timed_ok = {n: m["seconds_per_sample"] for n, m in measured.items() if "seconds_per_sample" in m}
        per_size[str(size)] = {"seconds_per_sample_sum": sum(timed_ok.values()), "seconds_per_sample": timed_ok,
                               "missing": [n for n in IMAGE_STYLE if n not in timed_ok]}
    summary = {"metrics": list(IMAGE_STYLE), "per_size": per_size,
               "note": "set metrics count their amortised update() only; compute() is once per run"}
    if sampler_report is None:
        summary["vs_sampler"] = f"no {sampler_path}: run `python -m benchmarks.sampler` on this device first"
        return summary
    comparisons = []
    for run in sampler_report["results"]:
        size = str(run["resolution"])
        semantix_seconds = run["seconds"]["semantix_pair_cold"]
        comparison = {
            "backbone": run["backbone"],
            "resolution": run["resolution"],
            "semantix_sample_seconds": semantix_seconds,
            "semantix_sample": "semantix_pair_cold of the sampler benchmark: inversions + guided sampling",
            "label": ("tiny backbone (far cheaper than SD1.5) vs real metric architectures: this ratio overstates "
                      "the metrics' share of an SD1.5 run" if run["backbone"] == "tiny" else
                      f"{run['backbone']} (real SD1.5 architecture) vs real metric architectures"),
        }
        if size in per_size:
            ratio = per_size[size]["seconds_per_sample_sum"] / semantix_seconds
            comparison |= {"image_style_seconds_per_sample": per_size[size]["seconds_per_sample_sum"],
                           "ratio": ratio, "partial": bool(per_size[size]["missing"]),
                           "target_met": ratio < TARGETS["image_style_over_semantix_sample_max"]}
        else:
            comparison["ratio"] = f"metrics not measured at {size} px (add it to --sizes)"
        comparisons.append(comparison)
    summary["vs_sampler"] = comparisons
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512], help="square image sizes in px")
    parser.add_argument("--samples", type=int, default=2, help="samples per repeat")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metrics", nargs="+", default=None, help="default: every registered metric")
    parser.add_argument("--no-compute", dest="compute", action="store_false",
                        help="skip the set metrics' compute() (seconds each on a CPU at 2048-d)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = device_name.lower().replace(" ", "-")
    names = args.metrics or METRICS.names()
    # Seeds differ between metrics: the CLIP metrics share an embedding cache, which must not hit.
    results = {name: bench_metric(name, args.sizes, args.samples, args.repeats, device, args.compute,
                                  seed=1_000_000 * index)
               for index, name in enumerate(names)}
    sampler_path = args.out / f"sampler-{slug}.json"
    sampler_report = json.loads(sampler_path.read_text()) if sampler_path.is_file() else None
    report = {
        "benchmark": "metrics",
        "device": device_name,
        "device_info": provenance.device_info(),
        "git": provenance.git_state(),
        "versions": provenance.package_versions(),
        "time": provenance.now(),
        "settings": {"sizes": args.sizes, "samples": args.samples, "repeats": args.repeats,
                     "compute": args.compute, "weights": "random (real architectures)",
                     "torch_threads": torch.get_num_threads()},
        "targets": TARGETS,
        "metrics": results,
        "image_style": image_style_summary(results, args.sizes, sampler_report, sampler_path),
        "cpu_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    out = args.out / f"metrics-{slug}.json"
    atomic_write_json(out, report)
    print(json.dumps(report["image_style"], indent=2))
    print(f"-> {out}")
    return report


if __name__ == "__main__":
    main()
