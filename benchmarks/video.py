"""Video benchmark: the per-frame cost of video Semantix against image Semantix, and its peak memory.

Measured in one process at the same resolution and number of steps, cache off (inversions computed),
each call `--repeats` times alternately (medians reported):
  (a) image Semantix on one image (image backbone, paper image settings: conf/method/semantix.yaml);
  (b) video Semantix on a clip of F frames (its video backbone, conf/method/semantix_video.yaml),
      reported per frame; the ratio (b) / (a) is the cost of doing a frame inside a video (motion
      modules, temporal attention, per-frame matching) rather than as an image.
On CUDA the full-size architectures with random weights (`sd15_random`, `animatediff_random`: SD1.5 +
a v1-5-2-sized motion adapter) run at 512 px with 16 frames (one AnimateDiff window) and 60 steps,
and the CUDA allocator's peak for the video call is compared with the target (fits in 40 GB on an
H100 with autocast, i.e. dtype auto = float16). On a CPU the tiny backbones run (their numbers
measure the algorithm's overhead, not SD1.5's cost).

    python -m benchmarks.video                         # tiny on CPU; full size on CUDA
    python -m benchmarks.video --frames 16 --steps 20

Writes results/benchmarks/video-<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from semantix import provenance
from semantix.backbones.tiny import build_animatediff_random, build_tiny_video
from semantix.config import compose_config
from semantix.data.dataset import demo_video_dataset
from semantix.io import atomic_write_json
from semantix.methods.semantix import Semantix

TARGETS = {"h100_16_frames_512px_peak_gib_max": 40.0}


def paper_semantix(name: str, **overrides) -> Semantix:
    """Semantix with the settings of conf/method/<name>.yaml as Hydra composes them, cache off."""
    config = OmegaConf.to_container(compose_config([f"method={name}"]).method[name])
    settings = {k: v for k, v in config.items() if k not in ("_target_", "name")}
    return Semantix(**{**settings, "cache_inversions": False, **overrides})


def timed_call(method: Semantix, backbone, sample, device: torch.device) -> tuple[float, float | None]:
    """Seconds and CUDA peak GiB of one call (inversions included) after `prepare`."""
    with tempfile.TemporaryDirectory() as cache:
        method.prepare(backbone, Path(cache))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        method(sample, 0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=None, help="default: 16 on CUDA, 8 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 60 on CUDA, 10 on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each, median reported")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)

    on_gpu = torch.cuda.is_available()
    frames, steps = args.frames or (16 if on_gpu else 8), args.steps or (60 if on_gpu else 10)
    video_backbone = build_animatediff_random() if on_gpu else build_tiny_video()
    image_backbone = video_backbone.image_backbone
    device = video_backbone.device
    sample = demo_video_dataset(video_backbone.resolution).load_sample("video_chelsea__sunset_strokes")
    if frames > sample.frames.shape[0]:
        raise ValueError(f"the demo clip has {sample.frames.shape[0]} frames; --frames {frames} is too many")
    clip = dataclasses.replace(sample, frames=sample.frames[:frames])

    # A first image call warms up kernels and allocator; the timed calls follow.
    timed_call(paper_semantix("semantix", num_steps=2), image_backbone, clip.frame_sample(0), device)
    # Alternate the two, `repeats` times each, and keep the medians (machines are noisy).
    video_method = paper_semantix("semantix_video", num_steps=steps)
    image_runs, video_runs = [], []
    for _ in range(args.repeats):
        image_runs.append(timed_call(paper_semantix("semantix", num_steps=steps), image_backbone,
                                     clip.frame_sample(0), device))
        video_runs.append(timed_call(video_method, video_backbone, clip, device))
    image_seconds, video_seconds = (statistics.median(s for s, _ in runs) for runs in (image_runs, video_runs))
    image_peak, video_peak = (max((p for _, p in runs), default=None) if on_gpu else None
                              for runs in (image_runs, video_runs))
    device_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    per_frame = video_seconds / frames
    report = {
        "benchmark": "video",
        "device": device_name,
        "device_info": provenance.device_info(),
        "git": provenance.git_state(),
        "versions": provenance.package_versions(),
        "time": provenance.now(),
        "backbones": {"image": image_backbone.name, "video": video_backbone.name},
        "random_weights": True,
        "dtype": str(video_backbone.dtype).removeprefix("torch."),
        "resolution": video_backbone.resolution,
        "frames": frames,
        "steps": steps,
        "repeats": args.repeats,
        "seconds_all": {"image_semantix_per_image": [s for s, _ in image_runs],
                        "video_semantix_per_clip": [s for s, _ in video_runs]},
        "window": {"size": video_method.window_size, "overlap": video_method.window_overlap},
        "seconds": {"image_semantix_per_image": image_seconds, "video_semantix_per_clip": video_seconds,
                    "video_semantix_per_frame": per_frame},
        "per_frame_cost_over_image": per_frame / image_seconds,
        "peak_cuda_gib": {"image_semantix": image_peak, "video_semantix": video_peak},
        "targets": TARGETS,
        "targets_met": {"h100_16_frames_512px_peak_gib": (
            video_peak <= TARGETS["h100_16_frames_512px_peak_gib_max"]
            if on_gpu and "H100" in device_name and frames == 16 and video_backbone.resolution == 512 else None)},
        "cpu_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    out = args.out / f"video-{device_name.lower().replace(' ', '-')}.json"
    atomic_write_json(out, report)
    print(json.dumps({k: report[k] for k in ("seconds", "per_frame_cost_over_image", "peak_cuda_gib")}, indent=2))
    print(f"-> {out}")
    return report


if __name__ == "__main__":
    main()
