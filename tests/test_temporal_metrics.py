"""Temporal metrics (CLIP frame consistency, warping error) on small videos and seeded random weights:
warping and occlusion against known flows and a brute-force loop, the metrics end to end, the input
errors, the missing-weights error, and the video presets. Nothing is downloaded."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose

from semantix.metrics.clip import CLIPStyleSimilarity
from semantix.metrics.inputs import raft_size
from semantix.metrics.temporal import (
    RAFT_FILE,
    CLIPFrameConsistency,
    WarpingError,
    backward_warp,
    load_raft_large,
    occlusion_mask,
    resize_flow,
    target_in_frame,
    warping_error,
)
from semantix.types import Sample, WeightsNotFoundError

SMALL_CLIP = {"model": "ViT-B-32", "weights": "random"}
RANDOM_RAFT = {"weights": "random", "num_flow_updates": 2}


def smooth_image(seed: int, height: int = 64, width: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 6, generator=g)
    size = (height, width or height)
    return torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def panning_video(shift: tuple[int, int], frames: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Windows of a larger smooth image moving so that frame t+1 at p + shift is frame t at p: the
    forward flow of every pair is exactly `shift` (dx, dy)."""
    dx, dy = shift
    margin = (frames - 1) * max(abs(dx), abs(dy))
    big = smooth_image(seed, size + 2 * margin)
    windows = []
    for t in range(frames):
        top, left = margin - t * dy, margin - t * dx
        windows.append(big[:, top:top + size, left:left + size])
    return torch.stack(windows)


def constant_flow(shift: tuple[float, float], pairs: int, size: int, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(shift, dtype=dtype).view(1, 2, 1, 1).expand(pairs, 2, size, size).clone()


def flicker(frames: torch.Tensor) -> torch.Tensor:
    """Every other frame darkened: frame-wise brightness changes, no motion."""
    gains = torch.tensor([1.0 if t % 2 == 0 else 0.5 for t in range(frames.shape[0])]).view(-1, 1, 1, 1)
    return frames * gains


def video_sample(frames: torch.Tensor, sample_id: str = "clip") -> Sample:
    return Sample(sample_id=sample_id, content=frames[0], references=(smooth_image(99, frames.shape[-1]),),
                  frames=frames)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's cache pointed at an empty folder; monkeypatch restores the previous setting."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    return tmp_path / "torch-hub"


@pytest.fixture(scope="module")
def warping():
    return WarpingError(**RANDOM_RAFT)


# -- warping, occlusion, warping error (pure functions) ---------------------------------------------------
def test_backward_warp_with_zero_flow_is_the_identity():
    image = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    warped = backward_warp(image, torch.zeros(2, 2, 12, 20))
    torch.testing.assert_close(warped, image, atol=1e-6, rtol=0)


def test_backward_warp_undoes_an_integer_translation():
    video = panning_video((3, -2), frames=2)
    flow = constant_flow((3, -2), pairs=1, size=32)
    warped = backward_warp(video[1:], flow)
    valid = target_in_frame(flow)
    assert int(valid.sum()) == (32 - 3) * (32 - 2)
    torch.testing.assert_close(warped[0][:, valid[0]], video[0][:, valid[0]], atol=1e-5, rtol=0)
    # Outside the valid region the warp reads the border, not frame t.
    assert not torch.allclose(warped[0][:, ~valid[0]], video[0][:, ~valid[0]], atol=1e-3)


def test_warping_error_is_zero_for_a_static_video():
    frames = smooth_image(1).expand(4, 3, 64, 64).clone()
    zero = torch.zeros(3, 2, 64, 64)
    valid = occlusion_mask(zero, zero)
    assert bool(valid.all())
    assert float(warping_error(frames, zero, valid)) < 1e-10


def test_warping_error_with_the_true_flow_is_zero_and_sees_flicker():
    shift = (2, 1)
    frames = panning_video(shift, frames=4)
    forward, backward = constant_flow(shift, 3, 32), constant_flow((-2, -1), 3, 32)
    valid = occlusion_mask(forward, backward)
    torch.testing.assert_close(valid, target_in_frame(forward))
    assert float(warping_error(frames, forward, valid)) < 1e-10
    # The out-of-frame mask matters: the border pixels come from outside frame t.
    assert float(warping_error(frames, forward, torch.ones_like(valid))) > 1e-4
    # Zero flow on a moving video, and a flickering output under the true flow, are both penalised.
    assert float(warping_error(frames, torch.zeros_like(forward), valid)) > 1e-4
    flickering = float(warping_error(flicker(frames), forward, valid))
    expected = (0.5 * frames[:-1]).pow(2).mean(dim=1)[valid].mean()  # |O_t - O_t/2|^2 or |O_t/2 - O_t|^2
    assert flickering == pytest.approx(float(expected), rel=1e-3)


def test_warping_error_counts_a_pair_without_valid_pixels_as_zero():
    frames = flicker(smooth_image(2).expand(3, 3, 64, 64).clone())
    zero = torch.zeros(2, 2, 64, 64)
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    both = float(warping_error(frames, zero, valid))
    valid[1] = False
    assert float(warping_error(frames, zero, valid)) == pytest.approx(both / 2, rel=1e-5)


def test_occlusion_mask_consistent_and_inconsistent_flows():
    forward = constant_flow((1.5, -1.0), 1, 8)
    consistent = occlusion_mask(forward, -forward)
    torch.testing.assert_close(consistent, target_in_frame(forward))
    assert bool(consistent.any()) and not bool(consistent.all())
    # The backward flow goes the same way as the forward one: nothing maps back, all occluded.
    assert not bool(occlusion_mask(forward, forward).any())


def brute_force_valid(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Ruder et al.'s test, one pixel at a time: (2, H, W) flows -> (H, W) bool valid."""
    _, h, w = forward.shape
    valid = torch.zeros(h, w, dtype=torch.bool)
    for y in range(h):
        for x in range(w):
            u, v = float(forward[0, y, x]), float(forward[1, y, x])
            tx, ty = x + u, y + v
            if not (0 <= tx <= w - 1 and 0 <= ty <= h - 1):
                continue
            x0, y0 = min(math.floor(tx), w - 2), min(math.floor(ty), h - 2)
            ax, ay = tx - x0, ty - y0
            bu, bv = (float((1 - ax) * (1 - ay) * backward[c, y0, x0] + ax * (1 - ay) * backward[c, y0, x0 + 1]
                            + (1 - ax) * ay * backward[c, y0 + 1, x0] + ax * ay * backward[c, y0 + 1, x0 + 1])
                      for c in (0, 1))
            occluded = (u + bu) ** 2 + (v + bv) ** 2 > 0.01 * (u * u + v * v + bu * bu + bv * bv) + 0.5
            gradient = sum((float(forward[c, y, x + 1] - forward[c, y, x]) ** 2 if x + 1 < w else 0.0)
                           + (float(forward[c, y + 1, x] - forward[c, y, x]) ** 2 if y + 1 < h else 0.0)
                           for c in (0, 1))
            boundary = gradient > 0.01 * (u * u + v * v) + 0.002
            valid[y, x] = not occluded and not boundary
    return valid


def test_occlusion_mask_matches_a_per_pixel_loop():
    g = torch.Generator().manual_seed(3)
    motion = torch.tensor([0.8, -0.6], dtype=torch.float64).view(2, 1, 1)
    forward = motion + 0.02 * torch.randn(2, 8, 8, generator=g, dtype=torch.float64)
    backward = -motion + 0.02 * torch.randn(2, 8, 8, generator=g, dtype=torch.float64)
    backward[:, 2:5, 3:6] += 2.0  # a region that does not map back: occluded
    forward[:, 6:, :] += 1.0  # a flow step: motion boundary on row 5
    mask = occlusion_mask(forward[None], backward[None])[0]
    expected = brute_force_valid(forward, backward)
    assert 0 < int(expected.sum()) < 64
    assert torch.equal(mask, expected)


def test_resize_flow_scales_the_vectors():
    flow = constant_flow((4.0, 2.0), 1, 16)
    torch.testing.assert_close(resize_flow(flow, (8, 8)), constant_flow((2.0, 1.0), 1, 8))
    wide = resize_flow(flow, (16, 32))
    torch.testing.assert_close(wide[0, :, 0, 0], torch.tensor([8.0, 2.0]))


def test_raft_size_policy():
    assert raft_size(64, 64) == (128, 128)  # small frames go up to RAFT's least size
    assert raft_size(100, 150) == (128, 192)  # aspect ratio kept
    assert raft_size(300, 500) == (304, 504)  # own size, rounded up to multiples of 8
    assert raft_size(480, 640, short_side=256) == (256, 344)


# -- WarpingError end to end (seeded random RAFT) ----------------------------------------------------------
def test_warping_error_end_to_end_with_random_raft(warping):
    source = panning_video((2, 1), frames=3, size=64)
    sample = video_sample(source)
    stylised = (0.8 * source + 0.1).clamp(0, 1)
    value = float(warping(stylised, sample))
    assert math.isfinite(value) and value >= 0.0
    flows, valid = warping.source_flows(source)
    assert flows.shape == (2, 2, 64, 64) and valid.shape == (2, 64, 64)
    assert value == pytest.approx(float(warping_error(stylised, flows, valid)), abs=1e-7)
    # A uniform output is the same after any warp (border padding), so its error is 0 for any flow.
    uniform = torch.full((3, 3, 64, 64), 0.5)
    assert float(warping(uniform, sample)) < 1e-10
    # The flows come from the source: the same source gives the same flows, whatever the output.
    assert warping.source_flows(source.clone()) is warping.source_flows(source)
    # Uniform frames alternating 0.5 / 0.25: (0.25)^2 on every valid pixel of every pair that has one.
    pairs_with_valid_pixels = valid.flatten(1).any(dim=1).float().mean()
    assert float(warping(flicker(uniform), sample)) == pytest.approx(0.0625 * float(pairs_with_valid_pixels))


def test_warping_error_loads_a_local_checkpoint(tmp_path):
    random_raft = load_raft_large("random")
    path = tmp_path / RAFT_FILE
    torch.save(random_raft.state_dict(), path)
    metric = WarpingError(weights=str(path), num_flow_updates=2)
    loaded = metric.raft().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in random_raft.state_dict().items())


def test_warping_error_without_the_torchvision_checkpoint_names_the_setting(hub_dir, fresh_models):
    with pytest.raises(WeightsNotFoundError) as info:
        WarpingError(weights="torchvision")
    message = str(info.value)
    assert message.startswith("weights: ") and RAFT_FILE in message
    assert not (hub_dir / "checkpoints").exists()  # nothing was downloaded


# -- CLIP frame consistency -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_consistency():
    return CLIPFrameConsistency(**SMALL_CLIP, batch_size=2)


def test_clip_frame_consistency_of_a_repeated_frame_is_the_maximum(clip_consistency):
    still = smooth_image(4).expand(3, 3, 64, 64).clone()
    assert float(clip_consistency(still, video_sample(still))) == pytest.approx(100.0, abs=1e-3)


def test_clip_frame_consistency_of_changing_frames(clip_consistency):
    frames = torch.stack([smooth_image(seed) for seed in (5, 6, 7)])
    value = float(clip_consistency(frames, video_sample(frames)))
    assert value < 100.0 - 1e-2
    # Batched embedding agrees with the one-image path the other CLIP metrics use.
    single = [clip_consistency.embedder.image(frame) for frame in frames]
    expected = sum(100.0 * float(a @ b) for a, b in zip(single[:-1], single[1:], strict=True)) / 2
    assert value == pytest.approx(expected, abs=1e-3)


def test_clip_frame_consistency_shares_the_clip_model():
    assert CLIPFrameConsistency(**SMALL_CLIP).embedder is CLIPStyleSimilarity(**SMALL_CLIP).embedder
    described = CLIPFrameConsistency.describe()
    assert (described["video"], described["compares"], described["higher_is_better"]) == (True, "output-frames", True)
    assert WarpingError.describe()["higher_is_better"] is False
    assert CLIPStyleSimilarity.describe()["video"] is False


# -- input errors -----------------------------------------------------------------------------------------
def test_a_single_frame_is_refused(warping, clip_consistency):
    one = smooth_image(8)[None]
    for metric in (warping, clip_consistency):
        with pytest.raises(ValueError, match="needs at least 2 frames, got 1"):
            metric(one, video_sample(one))


def test_output_and_source_must_match(warping):
    source = panning_video((1, 1), frames=4, size=64)
    with pytest.raises(ValueError, match=r"output has 3 frames but the source video of 'clip' has 4"):
        warping(source[:3], video_sample(source))
    with pytest.raises(ValueError, match=r"frame sizes differ, output \(4, 3, 48, 48\) vs source \(4, 3, 64, 64\)"):
        warping(source[..., :48, :48], video_sample(source))
    image_sample = Sample(sample_id="still", content=source[0], references=(source[1],))
    with pytest.raises(ValueError, match="'still' is not a video"):
        warping(source, image_sample)
    with pytest.raises(ValueError, match="frame 0"):
        warping(source * 255, video_sample(source))


# -- presets ---------------------------------------------------------------------------------------------
def test_video_presets():
    video = compose(["metrics=video"]).metrics
    assert set(video) == {"clip_frame_consistency", "warping_error", "lpips", "cfsd", "clip_style",
                          "clip_content", "gram"}
    assert video.clip_frame_consistency.weights == "openai" and video.warping_error.weights == "torchvision"
    tiny = compose(["metrics=video_tiny"]).metrics
    assert set(tiny) == set(video)
    for name, node in tiny.items():
        assert node.weights == "random", name
    assert video.clip_frame_consistency.model == video.clip_style.model == tiny.clip_style.model
