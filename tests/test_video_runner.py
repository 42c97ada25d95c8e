"""Video samples through the runner: stored frames, MP4 and GIF, per-frame image metrics averaged over
frames, temporal metrics, resume, and clear per-sample failures for bad clips and wrong outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_png
from harness import manifest_overrides, run_job

from semantix.data.manifest import write_manifest
from semantix.io import load_png
from semantix.metrics.structure import GreySSIM
from semantix.store import RunStore

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
    records, run_dir = _records(tmp_path / "results", "frames_identity")
    metrics = records["good"]["metrics"]
    assert set(metrics) == {"ssim_grey", "colour_histogram", "clip_frame_consistency", "warping_error"}
    assert metrics["ssim_grey"] == pytest.approx(1.0)
    # The runner hands temporal metrics the whole stored clip and the source clip.
    from semantix.data.manifest import Manifest
    from semantix.metrics.temporal import WarpingError

    sample = Manifest.load(clips).load_sample("good", 64)
    stored = RunStore(run_dir).load_frames(records["good"])
    direct = WarpingError(weights="random", num_flow_updates=4)(stored, sample)
    assert metrics["warping_error"] == pytest.approx(float(direct), abs=1e-6)


def test_an_image_method_on_a_video_sample_is_a_clear_failure(clips, tmp_path):
    run_job([*manifest_overrides(clips), "method=identity", *FAST_METRICS, "dataset.limit=1"], tmp_path / "results")
    records, _ = _records(tmp_path / "results", "identity")
    assert "identity is an image method and good is a video" in records["good"]["error"]["message"]
    assert "method=frames_identity" in records["good"]["error"]["message"]


def test_an_image_method_on_a_video_backbone_stops_the_job(clips, tmp_path):
    with pytest.raises(ValueError, match="styleid is an image method and backbone tiny_video is a video backbone"):
        run_job([*manifest_overrides(clips), "method=styleid", "backbone=tiny_video", *FAST_METRICS],
                tmp_path / "results")


def test_rescoring_a_video_gives_the_fresh_values(clips, tmp_path):
    """A metric added later scores the stored frames exactly as a fresh run would."""
    base = [*manifest_overrides(clips), "method=frames_reinhard", "backbone=tiny_video", "dataset.limit=1"]
    run_job([*base, "metrics=demo"], tmp_path / "first")
    run_job([*base, "metrics=demo_video"], tmp_path / "first")  # re-scores: adds the temporal metrics
    run_job([*base, "metrics=demo_video"], tmp_path / "fresh")
    rescored, _ = _records(tmp_path / "first", "frames_reinhard")
    fresh, _ = _records(tmp_path / "fresh", "frames_reinhard")
    assert rescored["good"]["metrics"] == pytest.approx(fresh["good"]["metrics"], abs=1e-6)
    assert set(rescored["good"]["metrics"]) >= {"warping_error", "clip_frame_consistency"}


def test_set_level_metrics_refuse_video_runs(clips, tmp_path):
    overrides = [*manifest_overrides(clips), "method=frames_identity", "backbone=tiny_video", "metrics=demo",
                 "+metrics.fid={_target_: semantix.registry.build_metric, name: fid, weights: random}",
                 "dataset.limit=1"]
    result = run_job(overrides, tmp_path / "results")
    _, run_dir = _records(tmp_path / "results", "frames_identity")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "this run holds videos" in summary["set_metrics"]["fid"]["error"]
    assert any("set-level metrics" in e for e in result.runs[0].errors)


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


def test_report_shows_a_video_as_its_gif_preview(clips, tmp_path):
    from semantix.report import build_report

    run_job([*manifest_overrides(clips), "method=frames_reinhard", "backbone=tiny_video", *FAST_METRICS,
             "dataset.limit=1"], tmp_path / "results")
    index = build_report(tmp_path / "results" / "runs", tmp_path / "report")
    gifs = list((tmp_path / "report" / "images" / "outputs").rglob("good.gif"))
    assert len(gifs) == 1 and gifs[0].read_bytes()[:6] == b"GIF89a"
    assert str(gifs[0].relative_to(tmp_path / "report")) in index.read_text()


@pytest.mark.slow
def test_demo_video_experiment_runs_offline(tmp_path):
    """The README's video demo: `semantix-bench experiment=demo_video` (4 methods x 2 clips; minutes)."""
    result = run_job(["experiment=demo_video"], tmp_path / "results")
    assert result.n_failed == 0 and all(run.ok == 2 for run in result.runs)
