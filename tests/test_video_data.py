"""Tests of video samples: video manifests, the demo clip, MP4/GIF files and stored output videos."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, write_png
from hydra.utils import instantiate
from PIL import Image

from semantix.data import DEMO_DIR, Manifest, demo_video_manifest_path, open_image, sha256_file, to_tensor
from semantix.data.dataset import demo_video_dataset
from semantix.data.manifest import write_manifest
from semantix.data.video import read_video_frames, write_gif, write_mp4
from semantix.io import clip_sha256, quantize
from semantix.store import RunStore, safe_filename
from semantix.types import SampleError

# ---------------------------------------------------------------------------------------------
# helpers


def _moving_frames(count: int, height: int = 64, width: int = 64) -> torch.Tensor:
    """A smooth colour ramp sliding sideways: distinct frames that lossy codecs keep well."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack(
        [torch.stack([(x + 0.05 * index) % 1.0, y, 0.3 + 0.4 * x * y]) for index in range(count)]
    )


@pytest.fixture
def clip(tmp_path) -> Path:
    """A dataset root with a 4-frame clip (96x80 frames) and a style; returns the root."""
    root = tmp_path / "root"
    for index in range(4):
        write_png(root / "clip" / f"{index:03d}.png", size=(96, 80), seed=index)
    write_png(root / "style.png", size=(72, 72), seed=100)
    return root


def _video_row(root: Path, count: int = 4, **overrides) -> dict:
    frames = [f"clip/{index:03d}.png" for index in range(count)]
    row = {
        "sample_id": "clip__style",
        "content": frames[0],
        "reference": "style.png",
        "frames": ";".join(frames),
        "frames_sha256": ";".join(sha256_file(root / frame) for frame in frames),
        "n_frames": str(count),
    }
    row.update(overrides)
    return row


def _load(root: Path, row: dict, resolution: int = 32, **kwargs):
    manifest = Manifest.load(write_manifest([row], root / "manifest.csv"))
    return manifest.load_sample(row["sample_id"], resolution, **kwargs)


def _expect_error(root: Path, row: dict, *fragments: str, **kwargs) -> str:
    with pytest.raises(SampleError) as info:
        _load(root, row, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------
# video manifests


def test_video_row_loads_frames_in_order_with_one_clip_hash(clip):
    sample = _load(clip, _video_row(clip))
    assert sample.is_video and sample.frames.shape == (4, 3, 32, 32) and sample.frames.dtype == torch.float32
    for index in range(4):
        expected = to_tensor(open_image(clip / "clip" / f"{index:03d}.png"), 32)
        assert torch.equal(sample.frames[index], expected)
    assert torch.equal(sample.content, sample.frames[0])
    frame_hashes = [sha256_file(clip / "clip" / f"{index:03d}.png") for index in range(4)]
    assert sample.input_sha256["frames"] == hashlib.sha256(";".join(frame_hashes).encode()).hexdigest()
    assert sample.input_sha256["frames"] == clip_sha256(frame_hashes)
    assert sample.input_sha256["content"] == frame_hashes[0]
    # frames and frames_sha256 are Sample fields, not meta; other columns stay meta.
    assert sample.meta == {"n_frames": "4"}


def test_clip_hash_is_computed_without_frames_sha256_and_follows_order(clip):
    plain = _load(clip, _video_row(clip, frames_sha256=None))
    assert plain.input_sha256["frames"] == _load(clip, _video_row(clip)).input_sha256["frames"]
    reversed_row = _video_row(clip, frames=";".join(f"clip/{index:03d}.png" for index in reversed(range(4))),
                              frames_sha256=None)
    assert _load(clip, reversed_row).input_sha256["frames"] != plain.input_sha256["frames"]


def test_image_row_is_not_a_video(clip):
    sample = _load(clip, {"sample_id": "image", "content": "clip/000.png", "reference": "style.png"})
    assert not sample.is_video and sample.frames is None and "frames" not in sample.input_sha256


def test_wrong_frame_hash_fails_the_sample(clip):
    row = _video_row(clip)
    hashes = row["frames_sha256"].split(";")
    hashes[2] = "0" * 64
    _expect_error(clip, {**row, "frames_sha256": ";".join(hashes)}, "frame 2", "sha256 mismatch")


def test_frame_hash_count_mismatch_fails_the_sample(clip):
    row = _video_row(clip)
    _expect_error(clip, {**row, "frames_sha256": row["frames_sha256"].rsplit(";", 1)[0]},
                  "4 frame file(s) but 3 frames_sha256")


def test_frames_of_different_sizes_name_the_frame(clip):
    write_png(clip / "clip" / "003.png", size=(96, 72), seed=3)
    _expect_error(clip, _video_row(clip, frames_sha256=None), "frame 3 is 96x72, frame 0 is 96x80")


def test_reference_video_loads_with_its_own_clip_hash(clip):
    reference_frames = ";".join(f"clip/{index:03d}.png" for index in (3, 2))
    sample = _load(clip, _video_row(clip, reference_frames=reference_frames))
    assert sample.reference_frames.shape == (2, 3, 32, 32)
    assert torch.equal(sample.reference_frames[0], sample.frames[3])
    assert sample.input_sha256["reference_frames"] == clip_sha256(
        sha256_file(clip / "clip" / f"{index:03d}.png") for index in (3, 2))
    assert sample.frame_sample(0).reference_frames is None


def test_reference_video_needs_a_video_sample_with_one_reference(clip):
    image_row = {"sample_id": "still", "content": "clip/000.png", "reference": "style.png",
                 "reference_frames": "clip/001.png"}
    _expect_error(clip, image_row, "reference_frames (a reference video) needs a video sample")
    two = _video_row(clip, reference="style.png;style.png", reference_frames="clip/001.png")
    _expect_error(clip, two, "exactly one reference")


def test_reference_frames_of_different_sizes_name_the_reference_frame(clip):
    write_png(clip / "odd.png", size=(64, 64), seed=9)
    _expect_error(clip, _video_row(clip, reference_frames="clip/000.png;odd.png"),
                  "reference frame 1 is 64x64, reference frame 0 is 96x80")


def test_too_few_frames_names_min_frames(clip):
    _expect_error(clip, _video_row(clip, count=1),
                  "video has 1 frame(s); at least 2 needed (dataset.min_frames)")
    _expect_error(clip, _video_row(clip), "at least 5 needed", min_frames=5)
    assert _load(clip, _video_row(clip), min_frames=4).frames.shape[0] == 4


def test_frame_outside_the_root_is_refused(clip, tmp_path):
    write_png(tmp_path / "outside.png", size=(96, 80))
    row = _video_row(clip, frames="clip/000.png;../outside.png", frames_sha256=None, n_frames="2")
    _expect_error(clip, row, "frame 1", "outside the dataset root")


def test_bad_frame_file_fails_the_sample(clip):
    (clip / "clip" / "002.png").write_bytes(b"not a png")
    _expect_error(clip, _video_row(clip, frames_sha256=None), "frame 2", "not an image")


# ---------------------------------------------------------------------------------------------
# the embedded demo clip


def test_demo_video_dataset_loads_both_samples():
    dataset = demo_video_dataset(64)
    assert len(dataset) == 2 and dataset.manifest.path == demo_video_manifest_path()
    for sample_id in dataset.sample_ids:
        sample = dataset.load_sample(sample_id)
        assert sample.frames.shape == (16, 3, 64, 64) and sample.reference.shape == (3, 64, 64)
        assert torch.equal(sample.content, sample.frames[0])
        assert sample.meta["pan_px_per_frame"] == "4" and sample.meta["flow_x_px_per_frame"] == "-4"


def test_demo_clip_is_an_exact_pan():
    """Consecutive frames are the same picture shifted left by pan_px_per_frame: the flow is known."""
    row = Manifest.load(demo_video_manifest_path()).row("video_chelsea__sunset_strokes")
    shift, size = int(row["pan_px_per_frame"]), int(row["frame_size"])
    frames = [np.asarray(Image.open(DEMO_DIR / path)) for path in row["frames"].split(";")]
    assert len(frames) == 16 and all(frame.shape == (size, size, 3) for frame in frames)
    for earlier, later in zip(frames[:-1], frames[1:], strict=True):
        assert np.array_equal(later[:, :-shift], earlier[:, shift:])
        assert not np.array_equal(later, earlier)


def test_demo_video_config_instantiates():
    config = compose(["dataset=demo_video", "dataset.resolution=64", "dataset.min_frames=16"])
    dataset = instantiate(config.dataset)
    assert len(dataset) == 2 and dataset.min_frames == 16 and dataset.provenance()["min_frames"] == 16


# ---------------------------------------------------------------------------------------------
# video files


def test_mp4_round_trip(tmp_path):
    frames = _moving_frames(6, 48, 64)
    path = write_mp4(frames, tmp_path / "out" / "clip.mp4", fps=8)
    decoded = read_video_frames(path)
    assert decoded.shape == (6, 3, 48, 64)
    assert float((decoded - frames).abs().mean()) < 0.1  # lossy codec
    assert [entry.name for entry in path.parent.iterdir()] == ["clip.mp4"]  # no temporary file left


def test_mp4_pads_odd_sides(tmp_path):
    decoded = read_video_frames(write_mp4(_moving_frames(3, 33, 47), tmp_path / "odd.mp4"))
    assert decoded.shape == (3, 3, 34, 48)


def test_gif_has_every_frame_and_loops(tmp_path):
    path = write_gif(_moving_frames(5, 32, 40), tmp_path / "clip.gif", fps=8)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5 and gif.size == (40, 32)
        assert gif.info["loop"] == 0 and gif.info["duration"] == 120


def test_writers_refuse_a_single_image(tmp_path):
    with pytest.raises(ValueError, match="F, 3, H, W"):
        write_mp4(torch.rand(3, 16, 16), tmp_path / "image.mp4")


# ---------------------------------------------------------------------------------------------
# stored output videos


def test_save_video_round_trip_and_missing_frame_is_redone(tmp_path):
    store = RunStore(tmp_path / "run")
    frames = _moving_frames(4, 32, 32) + 0.001  # off the 8-bit grid: stored quantized
    saved = store.save_video("cat/clip", frames, fps=8)
    name = "cat_clip~" + hashlib.sha256(b"cat/clip").hexdigest()[:24]  # the id holds a '/'
    assert safe_filename("cat/clip") == name
    assert saved["frames"] == [f"videos/{name}/{index:03d}.png" for index in range(4)]
    assert saved["video"] == f"videos/{name}.mp4" and saved["preview"] == f"videos/{name}.gif"
    frame_hashes = [sha256_file(store.run_dir / path) for path in saved["frames"]]
    assert saved["frames_sha256"] == clip_sha256(frame_hashes)
    assert torch.equal(store.load_frames(saved), quantize(frames))
    assert read_video_frames(store.run_dir / saved["video"]).shape == (4, 3, 32, 32)

    store.write_record({"sample_id": "cat/clip", "status": "ok", **saved})
    assert store.read_record("cat/clip")["frames"] == saved["frames"]
    (store.run_dir / saved["frames"][2]).unlink()
    assert store.read_record("cat/clip") is None
