"""Video samples through the runner: stored frames, MP4 and GIF, per-frame image metrics averaged over
frames, temporal metrics, resume, and clear per-sample failures for bad clips and wrong outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_png
from harness import manifest_overrides, run_job

from semantix.data.manifest import write_manifest
from semantix.metrics.structure import GreySSIM
from semantix.store import RunStore, load_png

FAST_METRICS = ["metrics=demo"]


def _write_clips(root: Path) -> Path:
    """Two 4-frame clips (one with a frame of another size) and a 1-frame clip, 64 px, one style."""
    write_png(root / "style.png", size=(64, 64), seed=50)
    rows = []
    for name, sizes in {"good": [(64, 64)] * 4, "mixed": [(64, 64)] * 3 + [(80, 64)], "short": [(64, 64)]}.items():
        frames = [write_png(root / name / f"{i:03d}.png", size=size, seed=i) for i, size in enumerate(sizes)]
        rows.append({"sample_id": name, "content": f"{name}/000.png", "reference": "style.png",
                     "frames": ";".join(str(f.relative_to(root)) for f in frames)})
    return write_manifest(rows, root / "manifest.csv")


@pytest.fixture
def clips(tmp_path) -> Path:
    return _write_clips(tmp_path / "data")


def _records(results: Path, method: str) -> dict[str, dict]:
    run_dir = next((results / "runs").glob(f"*/*/*/{method}-*"))
    return {r["sample_id"]: r for r in RunStore(run_dir).records()}, run_dir


def test_video_outputs_are_stored_scored_per_frame_and_resumed(clips, tmp_path):
    overrides = [*manifest_overrides(clips), "method=[frames_identity,frames_reinhard]", "backbone=tiny_video",
                 *FAST_METRICS]
    result = run_job(overrides, tmp_path / "results")
    records, run_dir = _records(tmp_path / "results", "frames_reinhard")
    good = records["good"]
    assert good["status"] == "ok" and len(good["frames"]) == 4
    assert (run_dir / good["video"]).stat().st_size > 0 and (run_dir / good["preview"]).stat().st_size > 0
    stored = torch.stack([load_png(run_dir / f) for f in good["frames"]])
    # The image metric of a video is the mean of its per-frame values against the same source frame.
    from semantix.data.manifest import Manifest

    sample = Manifest.load(clips).load_sample("good", 64)
    per_frame = [float(GreySSIM()(stored[f], sample.frame_sample(f))) for f in range(4)]
    assert good["metrics"]["ssim_grey"] == pytest.approx(sum(per_frame) / 4, abs=1e-6)
    assert torch.equal(load_png(run_dir / good["image"]), stored[0])

    # Bad clips fail alone, with the reason in the record.
    assert "frame 3 is 80x64, frame 0 is 64x64" in records["mixed"]["error"]["message"]
    assert "at least 2 needed (dataset.min_frames)" in records["short"]["error"]["message"]
    assert result.n_failed == 4  # 2 bad clips x 2 methods

    # A re-run skips the finished clip; a lost frame makes it run again.
    again = run_job([*overrides, "runner.retry_failed=false"], tmp_path / "results")
    assert all(run.skipped == 3 for run in again.runs)
    (run_dir / good["frames"][2]).unlink()
    third = run_job([*overrides, "runner.retry_failed=false"], tmp_path / "results")
    reinhard = next(run for run in third.runs if run.label == "frames_reinhard")
    assert reinhard.ok == 1 and (run_dir / good["frames"][2]).is_file()


def test_temporal_metrics_score_the_whole_video(clips, tmp_path):
    overrides = [*manifest_overrides(clips), "method=frames_identity", "backbone=tiny_video", "metrics=demo_video",
                 "dataset.limit=1"]
    run_job(overrides, tmp_path / "results")
    records, _ = _records(tmp_path / "results", "frames_identity")
    metrics = records["good"]["metrics"]
    assert set(metrics) == {"ssim_grey", "colour_histogram", "clip_frame_consistency", "warping_error"}
    assert metrics["ssim_grey"] == pytest.approx(1.0)
    assert 0.0 <= metrics["warping_error"] and metrics["clip_frame_consistency"] <= 100.0 + 1e-4


def test_an_image_output_for_a_video_sample_is_a_clear_failure(clips, tmp_path):
    run_job([*manifest_overrides(clips), "method=identity", *FAST_METRICS, "dataset.limit=1"], tmp_path / "results")
    records, _ = _records(tmp_path / "results", "identity")
    assert "method returned an image for a video sample" in records["good"]["error"]["message"]
    assert "frames_" in records["good"]["error"]["message"]


def test_video_semantix_runs_in_the_harness(clips, tmp_path):
    overrides = [*manifest_overrides(clips), "method=semantix_video", "method.semantix_video.num_steps=2",
                 "method.semantix_video.adain_start_step=1", "method.semantix_video.window_size=3",
                 "method.semantix_video.window_overlap=1", "backbone=tiny_video", *FAST_METRICS, "dataset.limit=1"]
    run_job(overrides, tmp_path / "results")
    records, run_dir = _records(tmp_path / "results", "semantix_video")
    good = records["good"]
    assert good["status"] == "ok", good["error"]
    assert len(good["frames"]) == 4 and len(good["diagnostics"]["grad_norm"]) == 2
    assert all(len(values) == 2 for values in good["diagnostics"].values())


@pytest.mark.slow
def test_demo_video_experiment_runs_offline(tmp_path):
    """The README's video demo: `semantix-bench experiment=demo_video` (4 methods x 2 clips; minutes)."""
    result = run_job(["experiment=demo_video"], tmp_path / "results")
    assert result.n_failed == 0 and all(run.ok == 2 for run in result.runs)
