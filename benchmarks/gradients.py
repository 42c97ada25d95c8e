"""Semantix step cost on the CPU: per-term gradients batched vs separate, and batched inversion passes.

For each backbone (the tiny one at 64 px; `sd15_random`, SD1.5's architecture with random weights, at
a size a CPU allows), on one demo pair, in one process, repetitions interleaved (the CPU is shared:
medians and minima of wall seconds and of this process's CPU seconds are kept, with the load average
before and after; with one torch thread the CPU seconds measure the work whatever else runs):
  - seconds per plain DDPM step with batched CFG (`benchmarks.sampler.plain_cfg_sampling`);
  - seconds per Semantix guided step (`Semantix.sample` on warm inversions) with the three per-term
    gradients from separate backward passes (`batched_gradients: false`) and from one batched pass
    (`is_grads_batched`, forced with `fallback=False`), and their ratios to the plain step; plus what the
    default configuration met: the reason the batched pass fell back to separate passes, if it did;
  - seconds of the context + reference inversion with the unconditional/conditional UNet passes
    separate (default) and as one batch of 2B (`batch_cfg_inversion: true`), and each one's
    zero-guidance reconstruction error (sampling without guidance or AdaIN from the context's
    inversion, against its latent).

    OMP_NUM_THREADS=1 python -m benchmarks.gradients --threads 1   # results/benchmarks/semantix-gradients-cpu.json
    python -m benchmarks.gradients --threads 1 --backbones sd15_random --sd15-resolution 256 --sd15-steps 2 --append
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

import semantix.diffusion.energy as energy
import semantix.methods.semantix as semantix_module
from benchmarks.sampler import plain_cfg_sampling
from semantix import provenance
from semantix.backbones.tiny import build_sd15_random, build_tiny
from semantix.data import demo_manifest_path
from semantix.data.manifest import Manifest
from semantix.io import atomic_write_json
from semantix.methods.semantix import Semantix


@contextmanager
def always_batched():
    """The sampler's per-term gradients always from the batched pass (no fallback), to time that pass."""
    original = semantix_module.clamped_energy_gradient
    semantix_module.clamped_energy_gradient = functools.partial(energy.clamped_energy_gradient, fallback=False)
    try:
        yield
    finally:
        semantix_module.clamped_energy_gradient = original


class Clock:
    """Wall seconds and this process's CPU seconds of a block. On a shared CPU with one torch thread the
    CPU seconds are the work done, whatever else runs; wall seconds are what a user waits."""

    def __enter__(self):
        self.start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]


def _summary(clocks: list[Clock], per: int) -> dict:
    """Per-step (per `per`) median and minimum of each clock over the repetitions."""
    out = {}
    for kind in ("cpu", "wall"):
        values = [getattr(c, kind) / per for c in clocks]
        out[kind] = {"median": statistics.median(values), "min": min(values), "all": values}
    return out


def _ratio(a: dict, b: dict) -> dict:
    """a / b for each clock and statistic."""
    return {kind: {s: a[kind][s] / b[kind][s] for s in ("median", "min")} for kind in ("cpu", "wall")}


def bench_backbone(backbone, steps: int, repeats: int) -> dict:
    manifest = Manifest.load(demo_manifest_path())
    sample = manifest.load_sample(next(s for s in manifest.sample_ids if "+" not in s), backbone.resolution)
    prompt = sample.prompt or ""
    cache_dir = Path(tempfile.mkdtemp(prefix="semantix-bench-gradients-"))

    def method(**overrides) -> Semantix:
        m = Semantix(num_steps=steps, cache_inversions=False, **overrides)
        m.prepare(backbone, cache_dir)
        return m

    def invert_pair(m: Semantix, seed: int):
        return (m.invert(sample.content, sample.input_sha256["content"], prompt, seed, "context"),
                m.invert(sample.reference, sample.input_sha256["reference"], "", seed, "reference_0"))

    cond = backbone.encode_prompt([prompt])
    methods = {"separate": method(batched_gradients=False), "batched": method(batched_gradients=True)}
    inverters = {"separate": method(batch_cfg_inversion=False), "batched": method(batch_cfg_inversion=True)}
    context, reference = invert_pair(inverters["separate"], 0)

    # Warm-up, and what the default configuration (batched, with fallback) meets in this process.
    plain_cfg_sampling(methods["separate"], cond, 0)
    energy._batched_unavailable = None
    methods["batched"].sample([context], [[reference]], cond)
    fallback_reason = energy._batched_unavailable
    methods["separate"].sample([context], [[reference]], cond)

    plain, guided, inversion, encode = [], {k: [] for k in methods}, {k: [] for k in inverters}, []
    inversions = {}
    for repeat in range(repeats):
        with Clock() as c:
            plain_cfg_sampling(methods["separate"], cond, repeat)
        plain.append(c)
        for name, m in methods.items():
            with always_batched() if name == "batched" else nullcontext(), Clock() as c:
                m.sample([context], [[reference]], cond)
            guided[name].append(c)
        for name, m in inverters.items():
            with Clock() as c:
                inversions[name] = invert_pair(m, 1)
            inversion[name].append(c)
        with Clock() as c:  # the VAE encodings inside each inversion pair: not what the option changes
            inverters["separate"].encode(sample.content), inverters["separate"].encode(sample.reference)
        encode.append(c)
        print(f"{backbone.name} repeat {repeat + 1}/{repeats} (CPU s): plain {plain[-1].cpu / steps:.3f}/step, "
              "guided " + ", ".join(f"{k} {v[-1].cpu / steps:.3f}" for k, v in guided.items()) + "/step, "
              "inversion pair " + ", ".join(f"{k} {v[-1].cpu:.2f}" for k, v in inversion.items()), flush=True)

    # Zero guidance, no AdaIN: the output retraces the context's inversion (separate passes in the sampler).
    unguided = method(gamma_ref=0.0, gamma_c=0.0, gamma_reg=0.0, adain_start_step=None)
    reconstruction = {}
    for name, (ctx, ref) in inversions.items():
        latent, _ = unguided.sample([ctx], [[ref]], cond)
        error = (latent - ctx.x0).abs()
        reconstruction[name] = {"max_abs": float(error.max()), "mean_abs": float(error.mean()),
                                "latent_std": float(ctx.x0.std())}
    # The stored (float16) decoder features of the context's last step: largest difference relative to
    # their largest magnitude.
    last = {k: [inversions[v][0].features[-1][k].float() for v in ("separate", "batched")]
            for k in inversions["separate"][0].features[-1]}
    difference = {k: float((b - a).abs().max() / a.abs().max()) for k, (a, b) in last.items()}

    plain_step = _summary(plain, steps)
    guided_step = {k: _summary(v, steps) for k, v in guided.items()}
    inversion_pair = {k: _summary(v, 1) for k, v in inversion.items()}
    encode_pair = _summary(encode, 1)
    unet_part = {k: {kind: {s: v[kind][s] - encode_pair[kind][s] for s in ("median", "min")}
                     for kind in ("cpu", "wall")} for k, v in inversion_pair.items()}
    return {
        "backbone": backbone.name,
        "weights": backbone.provenance.get("weights"),
        "resolution": backbone.resolution,
        "latent_size": backbone.latent_size,
        "dtype": str(backbone.dtype),
        "steps": steps,
        "repeats": repeats,
        "seconds_per_plain_cfg_step": plain_step,
        "seconds_per_guided_step": guided_step,
        "guided_step_over_plain_step": {k: _ratio(v, plain_step) for k, v in guided_step.items()},
        "batched_gradients_speedup_over_separate": _ratio(guided_step["separate"], guided_step["batched"]),
        "default_config_batched_fallback": fallback_reason,
        "inversion": {
            "seconds_per_pair": inversion_pair,
            "seconds_vae_encode_pair": encode_pair,
            "seconds_per_inversion_step": {k: _summary(v, 2 * steps) for k, v in inversion.items()},
            "batched_speedup_over_separate": _ratio(inversion_pair["separate"], inversion_pair["batched"]),
            # The pair's time less its two VAE encodings: the UNet passes, which the option batches.
            "batched_speedup_over_separate_without_vae_encode": _ratio(unet_part["separate"], unet_part["batched"]),
            "zero_guidance_reconstruction_error": reconstruction,
            "last_step_features_relative_max_difference": difference,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", choices=["tiny", "sd15_random"], default=["tiny", "sd15_random"])
    parser.add_argument("--tiny-steps", type=int, default=10)
    parser.add_argument("--sd15-resolution", type=int, default=128)
    parser.add_argument("--sd15-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or torch's)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/semantix-gradients-cpu.json"))
    parser.add_argument("--append", action="store_true",
                        help="add this run's results to those already in --out (each result names its own run)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "benchmark": "semantix-gradients",
        "device": "cpu",
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "load_average_before": os.getloadavg(),
        "torch": torch.__version__,
        "git": provenance.git_state(),
        "versions": provenance.package_versions(),
        "time": provenance.now(),
        "results": [],
        "complete": False,
    }
    if args.append and args.out.exists():
        report["results"] = json.loads(args.out.read_text())["results"]
    builds = {"tiny": (build_tiny, args.tiny_steps),
              "sd15_random": (lambda: build_sd15_random(resolution=args.sd15_resolution, device="cpu"),
                              args.sd15_steps)}
    for name in args.backbones:
        build, steps = builds[name]
        load_before = os.getloadavg()
        result = bench_backbone(build(), steps, args.repeats)
        result["run"] = {"time": report["time"], "git": report["git"], "threads": report["threads"],
                         "load_average_before": load_before, "load_average_after": os.getloadavg()}
        report["results"].append(result)
        atomic_write_json(args.out, report)
    report["load_average_after"] = os.getloadavg()
    report["complete"] = True
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
