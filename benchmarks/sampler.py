"""Sampler benchmark: the cost of Semantix relative to plain DDPM sampling with CFG.

Measured in one process, on one demo pair, for each backbone:
  (a) plain DDPM sampling with classifier-free guidance (batched CFG, as diffusers pipelines do);
  (b) Semantix with a cold cache: inversion of context and reference, then guided sampling;
  (c) Semantix with a warm cache: the inversions come from disk; guided sampling only;
  (d) a gamma sweep of N configs on a warm cache, against the model "N sampling passes + one
      inversion per image" of the target.
Per-step times are reported as ratios to (a), measured in the same process (machines are noisy),
plus absolute seconds labelled with the device. Peak memory: CUDA allocator peak per phase on a
GPU; on a CPU only the process's peak resident set, once.

Every method of the comparison (`METHODS`, paper settings from conf/method/<name>.yaml) is timed
on the same pair: cold (inversions computed) and warm (inversions from the cache), with its warm
time per step it runs (denoising or optimisation steps) as a ratio to (a)'s step, and its CUDA
peak. Semantix's per-sample throughput with 4 samples per UNet call (`runner.batch_size=4`) is
compared with one at a time (target on a GPU: at least 2.5x). On CUDA, `bench_kernels` times the
SD1.5 architecture per precision (float32, float16, bfloat16) and kernel option (channels_last,
torch.compile), with each variant's UNet error relative to float32. Eye-for-an-eye's vectorised correspondence search is timed against the authors' per-pixel
loop at 64x64 with SD1.5's channel count (target: at least 100x faster).

    python -m benchmarks.sampler                       # tiny on CPU; + sd15_random at 512 px on CUDA
    python -m benchmarks.sampler --backbone sd15_random --steps 60
    python -m benchmarks.sampler --skip correspondence kernels  # parts the GPU kit runs on their own

Writes results/benchmarks/sampler-<device>.json, rewritten after each part (backbone, batching, each
method) so that a run stopped by a time limit keeps what it measured; `complete` is true once all ran.
The tiny backbone's numbers measure the harness and the algorithm's overhead on a CPU, not SD1.5's cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from semantix import provenance
from semantix.backbones.tiny import build_sd15_random, build_tiny
from semantix.data import demo_manifest_path
from semantix.data.manifest import Manifest
from semantix.diffusion import DDPMStepper, cosine_correspondence
from semantix.io import atomic_write_json
from semantix.methods.base import seeded_generator
from semantix.methods.semantix import Semantix
from semantix.registry import METHODS as REGISTRY

CONF_METHOD = Path(__file__).resolve().parents[1] / "conf" / "method"
# The diffusion methods of the comparison, at their papers' settings.
METHODS = ("semantix", "styleid", "eye_for_an_eye", "cross_image_attention", "stylegallery")

TARGETS = {
    "semantix_step_over_plain_step_max": 3.0,
    "sweep_over_model_max": 1.0,
    "h100_512px_60_steps_seconds_per_pair_max": 8.0,
    "correspondence_speedup_over_loop_min": 100.0,
    "semantix_batch4_throughput_over_batch1_min": 2.5,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Phase:
    """Wall time (synchronised) and CUDA peak memory of a block."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start
        self.peak_gib = (torch.cuda.max_memory_allocated(self.device) / 2**30
                         if self.device.type == "cuda" else None)


def plain_cfg_sampling(method: Semantix, cond: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard DDPM sampling with batched CFG over the same schedule (the baseline (a))."""
    backbone = method.backbone
    stepper: DDPMStepper = method.stepper
    eps_fn = method.eps_fn(cond, method.guidance_scale, batch_cfg=True)
    generator = seeded_generator(seed)
    shape = (1, backbone.latent_channels, backbone.latent_size, backbone.latent_size)
    x = torch.randn(shape, generator=generator).to(backbone.device)
    with torch.no_grad():
        for i, t in enumerate(stepper.timesteps):
            eps, _ = eps_fn(x, t)
            x = stepper.step(x, eps, i, torch.randn(shape, generator=generator).to(backbone.device))
    return x


def bench_backbone(backbone, steps: int, sweep: int, repeats: int) -> dict:
    device = backbone.device
    manifest = Manifest.load(demo_manifest_path())
    sample = manifest.load_sample(next(s for s in manifest.sample_ids if "+" not in s), backbone.resolution)
    cache_dir = Path(tempfile.mkdtemp(prefix="semantix-bench-cache-"))

    def method(**overrides) -> Semantix:
        m = Semantix(num_steps=steps, **overrides)
        m.prepare(backbone, cache_dir)
        return m

    semantix = method()
    cond = backbone.encode_prompt([sample.prompt or ""])
    plain_cfg_sampling(semantix, cond, 0)  # warm-up: kernels, allocator, lazy inits

    plain_times, cold_inversion, cold_sampling, warm_total = [], [], [], []
    plain_peak = semantix_peak = None
    for repeat in range(repeats):
        with Phase(device) as p:
            plain_cfg_sampling(semantix, cond, repeat)
        plain_times.append(p.seconds)
        plain_peak = p.peak_gib
        cold = method(cache_inversions=False)
        with Phase(device) as p:
            context = cold.invert(sample.content, None, sample.prompt or "", repeat, "context")
            reference = cold.invert(sample.reference, None, "", repeat, "reference_0")
        cold_inversion.append(p.seconds)
        with Phase(device) as p:
            cold.sample([context], [[reference]], cond)
        cold_sampling.append(p.seconds)
        semantix_peak = p.peak_gib
        semantix(sample, 100 + repeat)  # fills the cache for this seed
        with Phase(device) as p:
            warm_context = semantix.invert(sample.content, sample.input_sha256["content"], sample.prompt or "",
                                            100 + repeat, "context")
            warm_reference = semantix.invert(sample.reference, sample.input_sha256["reference"], "",
                                              100 + repeat, "reference_0")
            semantix.sample([warm_context], [[warm_reference]], cond)
        warm_total.append(p.seconds)

    # (d) gamma sweep on a warm cache: N configs, one pair.
    sweep_seed = 999
    method()(sample, sweep_seed)  # inversion, cached
    with Phase(device) as p:
        for gamma_ref in torch.linspace(1.0, 6.0, sweep).tolist():
            method(gamma_ref=gamma_ref)(sample, sweep_seed)
    sweep_seconds = p.seconds

    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    plain_step = median(plain_times) / steps
    semantix_step = median(cold_sampling) / steps
    inversion_pair = median(cold_inversion)
    model = sweep * median(cold_sampling) + inversion_pair
    result = {
        "backbone": backbone.name,
        "weights": backbone.provenance.get("weights"),
        "resolution": backbone.resolution,
        "dtype": str(backbone.dtype),
        "steps": steps,
        "repeats": repeats,
        "seconds": {
            "plain_cfg_step": plain_step,
            "semantix_sampling_step": semantix_step,
            "inversion_pair": inversion_pair,
            "semantix_pair_cold": median(cold_inversion) + median(cold_sampling),
            "semantix_pair_warm_cache": median(warm_total),
            f"sweep_{sweep}_configs_warm_cache": sweep_seconds,
            "sweep_model_n_sampling_plus_one_inversion": model,
        },
        "ratios": {
            "semantix_step_over_plain_step": semantix_step / plain_step,
            "semantix_pair_cold_over_plain_sampling": (median(cold_inversion) + median(cold_sampling))
            / median(plain_times),
            "semantix_pair_warm_over_cold": median(warm_total)
            / (median(cold_inversion) + median(cold_sampling)),
            "sweep_over_model": sweep_seconds / model,
        },
        "peak_cuda_gib": {"plain_cfg": plain_peak, "semantix_sampling": semantix_peak},
    }
    result["targets_met"] = {
        "semantix_step_over_plain_step": result["ratios"]["semantix_step_over_plain_step"]
        <= TARGETS["semantix_step_over_plain_step_max"],
        "sweep_over_model": result["ratios"]["sweep_over_model"] <= TARGETS["sweep_over_model_max"],
    }
    return result


def paper_method(name: str):
    """The method built from conf/method/<name>.yaml (the paper's settings), not yet prepared."""
    config = OmegaConf.to_container(OmegaConf.load(CONF_METHOD / f"{name}.yaml"))
    return REGISTRY.build(name, **{k: v for k, v in config.items() if k not in ("_target_", "name")})


def steps_run(method) -> int:
    """Denoising (or latent-optimisation) steps the method runs per sample."""
    if hasattr(method, "opt_steps"):  # StyleGallery: Adam steps
        return int(method.opt_steps)
    return len(method.run_steps) if hasattr(method, "run_steps") else int(method.num_steps)


def bench_methods(backbone, plain_step: float, names=METHODS) -> dict:
    """Each method on one demo pair: cold, warm cache, warm seconds per step over a plain CFG step."""
    device = backbone.device
    manifest = Manifest.load(demo_manifest_path())
    sample = manifest.load_sample(next(s for s in manifest.sample_ids if "+" not in s), backbone.resolution)
    results = {}
    for name in names:
        method = paper_method(name)
        method.prepare(backbone, Path(tempfile.mkdtemp(prefix=f"semantix-bench-{name}-")))
        with Phase(device) as cold:
            method(sample, 0)
        with Phase(device) as warm:
            method(sample, 0)
        steps = steps_run(method)
        results[name] = {
            "steps_run": steps,
            "seconds_cold": cold.seconds,
            "seconds_warm_cache": warm.seconds,
            "warm_seconds_per_step_over_plain_cfg_step": warm.seconds / steps / plain_step,
            "peak_cuda_gib": warm.peak_gib,
            "peak_cuda_gib_cold": cold.peak_gib,
        }
        print(f"{name}: cold {cold.seconds:.2f} s, warm {warm.seconds:.2f} s over {steps} steps", flush=True)
    return results


def bench_batching(backbone, steps: int, batch: int = 4) -> dict:
    """Semantix per-sample throughput with `batch` samples per UNet call over one at a time (warm cache)."""
    device = backbone.device
    manifest = Manifest.load(demo_manifest_path())
    samples = [manifest.load_sample(sid, backbone.resolution) for sid in manifest.sample_ids[:batch]]
    method = Semantix(num_steps=steps)
    method.prepare(backbone, Path(tempfile.mkdtemp(prefix="semantix-bench-batch-")))

    seeds = list(range(len(samples)))
    method.call_batch(samples, seeds)  # fills the inversion cache; warm-up
    with Phase(device) as one_by_one:
        for sample, seed in zip(samples, seeds, strict=True):
            method(sample, seed)
    with Phase(device) as batched:
        method.call_batch(samples, seeds)
    ratio = one_by_one.seconds / batched.seconds
    return {"batch": len(samples), "steps": steps, "seconds_one_at_a_time": one_by_one.seconds,
            "seconds_batched": batched.seconds, "throughput_ratio": ratio,
            "peak_cuda_gib_batched": batched.peak_gib,
            # The target is for a GPU; a CPU is already busy with one sample per call.
            "target_met": ratio >= TARGETS["semantix_batch4_throughput_over_batch1_min"]
            if device.type == "cuda" else None}


KERNEL_VARIANTS = (
    {"dtype": "float32", "channels_last": False, "compile_unet": False},
    {"dtype": "float16", "channels_last": False, "compile_unet": False},
    {"dtype": "bfloat16", "channels_last": False, "compile_unet": False},
    {"dtype": "float16", "channels_last": True, "compile_unet": False},
    {"dtype": "float16", "channels_last": True, "compile_unet": True},
)


def bench_kernels(steps: int = 10, repeats: int = 3, variants=KERNEL_VARIANTS, on_variant=None) -> dict:
    """SD1.5 architecture on CUDA: a plain CFG step and a Semantix step per precision / kernel option.

    Ratios are to float32 without options, in this process. Numerics are checked against float32 on
    the same inputs (the relative error of one UNet call), so a fast variant that breaks the
    numbers shows it. CUDA only: these options are about GPU kernels. `variants` must start with
    float32 without options (the reference); `on_variant(results)` is called after each variant
    (the GPU kit writes its JSON then, so a time limit keeps the variants already measured).
    """
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: precision and kernel options are measured on a GPU"}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 64, 64, generator=g)
    results, reference = [], None
    for variant in variants:
        backbone = build_sd15_random(**variant)
        method = Semantix(num_steps=steps)
        method.prepare(backbone, Path(tempfile.mkdtemp(prefix="semantix-bench-kernels-")))
        cond = backbone.encode_prompt([""])
        with torch.no_grad():
            eps = backbone.unet(x.to(backbone.device, backbone.dtype), 500, encoder_hidden_states=cond).sample.float()
        reference = eps if reference is None else reference
        plain_cfg_sampling(method, cond, 0)  # warm-up (and compilation)
        plain, guided = [], []
        manifest = Manifest.load(demo_manifest_path())
        sample = manifest.load_sample(manifest.sample_ids[0], backbone.resolution)
        method(sample, 0)  # inversions cached, warm-up
        for _ in range(repeats):
            with Phase(backbone.device) as p:
                plain_cfg_sampling(method, cond, 0)
            plain.append(p.seconds / steps)
            with Phase(backbone.device) as p:
                method(sample, 0)
            guided.append(p.seconds / steps)
        results.append({**variant, "plain_cfg_step_s": min(plain), "semantix_pair_warm_per_step_s": min(guided),
                        "peak_cuda_gib": p.peak_gib,
                        "unet_relative_error_vs_float32": float((eps - reference).norm() / reference.norm())})
        del backbone, method
        torch.cuda.empty_cache()
        if on_variant is not None:
            on_variant(results)
    base = results[0]
    for r in results:
        r["plain_speedup_vs_float32"] = base["plain_cfg_step_s"] / r["plain_cfg_step_s"]
        r["semantix_speedup_vs_float32"] = base["semantix_pair_warm_per_step_s"] / r["semantix_pair_warm_per_step_s"]
    return {"steps": steps, "repeats": repeats, "variants": results}


def correspondence_loop(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The authors' matching, per output pixel: normalise it and the reference map, cosine, argmax on the host."""
    out = []
    for n in range(query.shape[0]):
        cos = F.normalize(query[n:n + 1], dim=-1) @ F.normalize(keys, dim=-1).T
        out.append(int(cos.cpu().numpy().argmax()))
    return torch.tensor(out)


def bench_correspondence(device: torch.device, side: int = 64, channels: int = 320, repeats: int = 3) -> dict:
    """Vectorised chunked argmax vs the per-pixel loop, (side x side) locations x `channels`."""
    g = torch.Generator().manual_seed(0)
    query, keys = (torch.randn(side * side, channels, generator=g).to(device) for _ in range(2))
    cosine_correspondence(query, keys)  # warm-up
    fast = []
    for _ in range(repeats):
        with Phase(device) as p:
            indices = cosine_correspondence(query, keys)
        fast.append(p.seconds)
    with Phase(device) as p:
        loop_indices = correspondence_loop(query, keys)
    agree = float((indices.cpu() == loop_indices).float().mean())
    speedup = p.seconds / min(fast)
    return {"device": str(device), "side": side, "channels": channels, "seconds_vectorised": min(fast),
            "seconds_per_pixel_loop": p.seconds, "speedup": speedup, "indices_agree": agree,
            # On a CPU both versions are bound by the same arithmetic; the loop's cost on a GPU is
            # one launch and one host sync per pixel, which the target is about.
            "target_met": speedup >= TARGETS["correspondence_speedup_over_loop_min"] if device.type == "cuda" else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=["tiny", "sd15_random", "all"], default="all",
                        help="all: tiny on CPU, plus sd15_random at 512 px when CUDA is available")
    parser.add_argument("--steps", type=int, default=None, help="default: 20 for tiny, 60 for sd15_random")
    parser.add_argument("--sweep", type=int, default=3, help="configs in the gamma sweep")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--methods", nargs="*", default=list(METHODS),
                        help="methods to time at their paper settings (none: skip)")
    parser.add_argument("--skip", nargs="+", default=[], choices=["correspondence", "kernels", "batching"],
                        help="parts not to run (the GPU kit runs correspondence and kernels in their own processes)")
    args = parser.parse_args(argv)

    runs = []  # (backbone, steps, seconds to build it: a shard's model load, for the cost projection)
    if args.backbone in ("tiny", "all"):
        start = time.perf_counter()
        runs.append((build_tiny(), args.steps or 20, time.perf_counter() - start))
    if args.backbone == "sd15_random" or (args.backbone == "all" and torch.cuda.is_available()):
        start = time.perf_counter()
        runs.append((build_sd15_random(), args.steps or 60, time.perf_counter() - start))
    device = runs[-1][0].device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {
        "benchmark": "sampler",
        "device": device_name,
        "device_info": provenance.device_info(),
        "git": provenance.git_state(),
        "versions": provenance.package_versions(),
        "time": provenance.now(),
        "targets": TARGETS,
        "results": [],
        "correspondence": (bench_correspondence(device) if "correspondence" not in args.skip
                           else {"skipped": "--skip correspondence"}),
        "kernels": bench_kernels() if "kernels" not in args.skip else {"skipped": "--skip kernels"},
        "complete": False,  # True once every part has run; the file is rewritten after each part
    }
    slug = device_name.lower().replace(" ", "-")
    out = args.out / f"sampler-{slug}.json"
    for backbone, steps, load_seconds in runs:
        result = bench_backbone(backbone, steps, args.sweep, args.repeats)
        result["device"] = torch.cuda.get_device_name(backbone.device) if backbone.device.type == "cuda" else "cpu"
        # Random weights are built, not read from disk: a lower bound on loading SD1.5's files.
        result["backbone_load_seconds"] = load_seconds
        report["results"].append(result)
        atomic_write_json(out, report)
        result["batching"] = (bench_batching(backbone, steps) if "batching" not in args.skip
                              else {"skipped": "--skip batching"})
        atomic_write_json(out, report)
        result["methods"] = {}
        for name in args.methods:  # one at a time, each written as it is measured
            result["methods"] |= bench_methods(backbone, result["seconds"]["plain_cfg_step"], [name])
            atomic_write_json(out, report)
    report["complete"] = True
    report["cpu_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    for r in report["results"]:
        if r["backbone"] == "sd15_random" and r["resolution"] == 512 and r["steps"] == 60:
            r["targets_met"]["h100_512px_60_steps_seconds_per_pair"] = (
                r["seconds"]["semantix_pair_cold"] <= TARGETS["h100_512px_60_steps_seconds_per_pair_max"]
                if "H100" in device_name else None
            )
    atomic_write_json(out, report)
    print(json.dumps({r["backbone"]: r["ratios"] | {"seconds": r["seconds"]} for r in report["results"]}, indent=2))
    print(json.dumps({"correspondence": report["correspondence"]}, indent=2))
    print(f"-> {out}")
    return report


if __name__ == "__main__":
    main()
