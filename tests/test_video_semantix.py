"""Video Semantix on the tiny video backbone (AnimateDiff's architecture, random weights): frame
windows, the video UNet's noise predictor, inversion replay, zero guidance, the AnimateDiff loader,
and the frame-by-frame baseline."""

from __future__ import annotations

import pytest
import torch

from semantix.diffusion import UNetEpsFn, replay
from semantix.diffusion.windows import blend_windows, frame_windows, in_windows, window_weights
from semantix.methods.classical import Identity
from semantix.methods.frame_by_frame import FrameByFrame
from semantix.methods.semantix import Semantix
from semantix.types import Sample, WeightsNotFoundError

STEPS = 5
FRAMES = 6


@pytest.fixture(scope="module")
def video_backbone():
    from semantix.backbones import build_tiny_video

    return build_tiny_video()


@pytest.fixture(scope="module")
def clip():
    """A 6-frame 64 px video sample: a smooth image panned 2 px per frame, and one reference."""
    generator = torch.Generator().manual_seed(0)
    wide = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 24, generator=generator), size=(64, 96),
                                           mode="bilinear", align_corners=False)[0]
    frames = torch.stack([wide[:, :, 2 * f:2 * f + 64] for f in range(FRAMES)])
    reference = torch.rand(3, 64, 64, generator=generator)
    return Sample("pan", frames[0], (reference,), frames=frames,
                  input_sha256={"content": "c", "frames": "f", "reference": "r"})


@pytest.fixture
def make(video_backbone, tmp_path):
    def build(**overrides) -> Semantix:
        overrides = {"num_steps": STEPS, "window_size": 4, "window_overlap": 2, **overrides}
        method = Semantix(**overrides)
        method.prepare(video_backbone, tmp_path / "cache")
        return method

    return build


# -- frame windows -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("frames", "size", "overlap", "expected"), [
    (16, 16, 4, [range(0, 16)]),
    (10, 16, 4, [range(0, 10)]),
    (24, 16, 4, [range(0, 16), range(8, 24)]),
    (28, 16, 4, [range(0, 16), range(12, 28)]),
    (7, 4, 2, [range(0, 4), range(2, 6), range(3, 7)]),
])
def test_frame_windows_cover_the_clip_with_the_configured_overlap(frames, size, overlap, expected):
    assert frame_windows(frames, size, overlap) == expected


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (4, 4), (4, -1)])
def test_bad_window_settings_are_clear_errors(size, overlap):
    with pytest.raises(ValueError, match="window"):
        frame_windows(8, size, overlap)


def test_window_weights_sum_to_one_per_frame():
    windows = frame_windows(11, 4, 2)
    total = torch.zeros(11, dtype=torch.float64)
    for window, weights in zip(windows, window_weights(windows, 11), strict=True):
        total[window.start:window.stop] += weights
    assert torch.allclose(total, torch.ones(11, dtype=torch.float64), atol=1e-12)


def test_windows_reassemble_a_frame_local_function_exactly():
    """With the identity (or any per-frame function) as the method, blending windows gives the clip back."""
    x = torch.randn(2, 11, 4, 8, 8)
    windows = frame_windows(11, 4, 2)
    assert torch.allclose(in_windows(lambda part, _: part, x, windows), x, rtol=0, atol=1e-6)
    doubled = in_windows(lambda part, _: (part * 2, {"f": part + 1}), x, windows)
    assert torch.allclose(doubled[0], x * 2, rtol=0, atol=1e-6)
    assert torch.allclose(doubled[1]["f"], x + 1, rtol=0, atol=1e-6)


def test_blending_matches_a_per_frame_weighted_average():
    """Brute force: for each frame, the weighted mean of what the windows covering it computed."""
    num_frames, windows = 9, frame_windows(9, 4, 2)
    parts = [torch.randn(1, len(w), 3) for w in windows]
    weights = window_weights(windows, num_frames)
    blended = blend_windows(parts, windows, num_frames)
    for f in range(num_frames):
        covering = [(p[0, f - w.start], wt[f - w.start]) for p, w, wt in zip(parts, windows, weights, strict=True)
                    if f in w]
        expected = sum(float(wt) * value for value, wt in covering)
        assert torch.allclose(blended[0, f], expected, atol=1e-6)


# -- the video backbone and its noise predictor -------------------------------------------------------
def test_tiny_video_backbone_is_animatediff_shaped(video_backbone):
    from diffusers import UNet2DConditionModel, UNetMotionModel

    assert video_backbone.is_video and isinstance(video_backbone.unet, UNetMotionModel)
    image = video_backbone.image_backbone
    assert not image.is_video and isinstance(image.unet, UNet2DConditionModel)
    assert image.vae is video_backbone.vae and image.name == "tiny"
    assert video_backbone.provenance["motion_adapter"]["motion_max_seq_length"] == 32


def test_motion_modules_mix_frames(video_backbone):
    """Changing one frame changes the prediction of the others (temporal attention is live)."""
    eps_fn = UNetEpsFn(video_backbone.unet, video_backbone.encode_prompt([""]))
    x = torch.randn(1, 4, 4, 8, 8)
    changed = x.clone()
    changed[:, 0] += 1
    eps, _ = eps_fn(x, 500)
    eps_changed, _ = eps_fn(changed, 500)
    assert (eps_changed[:, 1:] - eps[:, 1:]).abs().max() > 1e-4


def test_video_eps_fn_batches_cfg_consistently_and_returns_features_per_frame(video_backbone):
    cond = video_backbone.encode_prompt(["a cat"])
    uncond = video_backbone.encode_prompt([""])
    x = torch.randn(2, 3, 4, 8, 8)
    kwargs = {"guidance_scale": 3.5, "capture": ("up_blocks.1",)}
    eps_batched, feats_batched = UNetEpsFn(video_backbone.unet, cond, uncond, batch_cfg=True, **kwargs)(x, 700)
    eps_split, feats_split = UNetEpsFn(video_backbone.unet, cond, uncond, batch_cfg=False, **kwargs)(x, 700)
    assert eps_batched.shape == x.shape
    assert feats_batched["up_blocks.1"].shape[:2] == (2, 3)
    assert torch.allclose(eps_batched, eps_split, atol=1e-5)
    assert torch.allclose(feats_batched["up_blocks.1"], feats_split["up_blocks.1"], atol=1e-5)


def test_animatediff_loads_from_local_folders(video_backbone, tmp_path):
    """The real loader on folders written from the tiny models computes what the tiny video UNet does."""
    from diffusers import MotionAdapter

    from semantix.backbones import load_animatediff, save_as_diffusers_folder
    from semantix.backbones.tiny import motion_adapter_config

    sd_folder = save_as_diffusers_folder(video_backbone.image_backbone, tmp_path / "sd")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the adapter of build_tiny_video(seed=0)
        MotionAdapter(**motion_adapter_config(video_backbone.image_backbone.unet.config)).save_pretrained(tmp_path / "adapter")
    loaded = load_animatediff(str(sd_folder), str(tmp_path / "adapter"), resolution=64, device="cpu")
    assert loaded.is_video and loaded.image_backbone.name == "sd15"
    assert loaded.scheduler_config["beta_schedule"] == "linear"
    x, emb = torch.randn(1, 3, 4, 8, 8), video_backbone.encode_prompt([""])
    expected = UNetEpsFn(video_backbone.unet, emb)(x, 400)[0]
    assert torch.allclose(UNetEpsFn(loaded.unet, emb)(x, 400)[0], expected, atol=1e-5)


def test_missing_motion_adapter_names_the_config_key(tmp_path):
    from semantix.backbones import load_animatediff

    with pytest.raises(WeightsNotFoundError, match="backbone.motion_adapter") as error:
        load_animatediff(str(tmp_path / "sd"), str(tmp_path / "no_adapter"), device="cpu")
    assert "diffusion_pytorch_model.safetensors" in str(error.value)


# -- video Semantix ------------------------------------------------------------------------------------
def branches(method, sample, seed=1):
    cond = method.backbone.encode_prompt([""])
    context = method.invert(sample.frames, sample.input_sha256["frames"], "", seed, "context")
    reference = method.invert(sample.reference, sample.input_sha256["reference"], "", seed, "reference_0")
    return cond, context, reference


def test_video_inversion_replay_reproduces_the_latent_video(make, clip):
    method = make()
    cond, context, reference = branches(method, clip)
    assert context.x0.shape[:2] == (1, FRAMES) and reference.x0.shape[:2] == (1, 1)
    assert context.features[0]["up_blocks.1"].shape[:2] == (1, FRAMES)
    x0 = replay(context, method.inversion_eps_fn(cond), method.scheduler)
    assert (x0 - context.x0).abs().max() < 1e-4


def test_zero_guidance_without_adain_reproduces_the_context_video(make, clip):
    method = make(gamma_ref=0.0, gamma_c=0.0, gamma_reg=0.0, adain_start_step=None)
    cond, context, reference = branches(method, clip)
    latent, (diagnostics,) = method.sample([context], [[reference]], cond)
    assert (latent - context.x0).abs().max() < 1e-4
    assert diagnostics["grad_norm"] == [0.0] * STEPS
    output = method(clip, 1)
    decoded_context = method.backbone.decode_latents(context.x0[0])
    assert output.frames.shape == clip.frames.shape
    assert (output.frames - decoded_context).abs().max() < 1e-4


def test_guided_video_moves_every_frame_and_reports_per_step_energies(make, clip):
    method = make(adain_start_step=2)
    cond, context, reference = branches(method, clip)
    latent, (diagnostics,) = method.sample([context], [[reference]], cond)
    per_frame_change = (latent - context.x0).flatten(2).abs().amax(dim=2)[0]
    assert (per_frame_change > 1e-3).all()
    for name in ("energy_style", "energy_spatial", "energy_reg", "grad_norm"):
        assert len(diagnostics[name]) == STEPS and all(torch.isfinite(torch.tensor(diagnostics[name])))


def test_video_energies_sum_the_per_frame_energies(make, clip):
    """A video's energy is the sum of its frames' energies (each frame guided as an image), each frame
    matched on its own."""
    method = make()
    _, context, reference = branches(method, clip)
    output = {k: v[0].float() + 0.1 for k, v in context.features[2].items()}  # (F, C, h, w) per block
    video, video_matches = method.sample_energies(output, context.features[2], [reference.features[2]])
    ref_frame = {k: v[0, 0] for k, v in reference.features[2].items()}
    frames = [method.frame_energies({k: v[f] for k, v in output.items()},
                                    {k: v[0, f] for k, v in context.features[2].items()}, [ref_frame])
              for f in range(FRAMES)]
    for name, value in video.items():
        assert torch.allclose(value, torch.stack([e[name] for e, _ in frames]).sum(), atol=1e-5)
    # Match statistics: the mean over frames.
    assert set(video_matches) == set(frames[0][1])
    for name, value in video_matches.items():
        assert torch.allclose(value, torch.stack([m[name] for _, m in frames]).mean(), atol=1e-6)


def test_diagnostics_report_the_per_frame_mean_energy(make, clip):
    method = make(window_size=8)  # one window: the features below come from the same UNet call
    cond, context, reference = branches(method, clip)
    x = context.xts[0]
    _, _, stats = method.guided_prediction(x, int(method.stepper.timesteps[0]), 0, cond, [context.features[0]],
                                           [[reference.features[0]]])
    output = {k: v.float() for k, v in method.inversion_eps_fn(cond)(x, int(method.stepper.timesteps[0]))[1].items()}
    summed, _ = method.energies(output, [context.features[0]], [[reference.features[0]]])
    assert set(summed) == {"style", "spatial", "reg"}
    for name, value in summed.items():
        assert torch.allclose(stats[f"energy_{name}"], value / FRAMES, atol=1e-3)  # float16 features in the sum


def test_window_longer_than_the_motion_modules_is_a_clear_error(video_backbone, tmp_path):
    with pytest.raises(ValueError, match="motion_max_seq_length"):
        Semantix(window_size=40, window_overlap=4).prepare(video_backbone, tmp_path)


def test_video_adain_uses_frame_and_space_statistics(make, clip):
    """After AdaIN from step 0, the output's per-channel statistics over frames and space are the reference's."""
    method = make(gamma_ref=0.0, gamma_c=0.0, gamma_reg=0.0, adain_start_step=0)
    cond, context, reference = branches(method, clip)
    latent, _ = method.sample([context], [[reference]], cond)
    assert torch.allclose(latent.mean(dim=(1, 3, 4)), reference.x0.mean(dim=(1, 3, 4)), atol=1e-4)
    assert torch.allclose(latent.std(dim=(1, 3, 4), correction=0), reference.x0.std(dim=(1, 3, 4), correction=0),
                          atol=1e-3)


def test_a_reference_video_is_inverted_as_a_clip_and_every_frame_is_matched(make, clip):
    import dataclasses

    reference_video = torch.stack([clip.reference, clip.reference.flip(-1), clip.reference.flip(-2)])
    sample = dataclasses.replace(clip, reference_frames=reference_video,
                                 input_sha256={**clip.input_sha256, "reference_frames": "rv"})
    method = make(adain_start_step=2)
    inverted = []
    original = method.invert
    method.invert = lambda image, *args: inverted.append(image.shape) or original(image, *args)
    with_video = method(sample, 1)
    assert (3, 3, 64, 64) in inverted and (3, 64, 64) not in inverted
    with_image = method(clip, 1)
    assert with_video.frames.shape == clip.frames.shape
    assert (with_video.frames - with_image.frames).abs().max() > 1e-3  # the other reference frames count


def test_wrong_kind_of_sample_or_backbone_is_a_clear_error(make, clip, backbone, tmp_path):
    method = make()
    with pytest.raises(ValueError, match="is an image but backbone tiny_video is a video backbone"):
        method(clip.frame_sample(0), 0)
    image_method = Semantix(num_steps=2)
    image_method.prepare(backbone, tmp_path / "cache")
    with pytest.raises(ValueError, match="frame by frame"):
        image_method(clip, 0)


# -- the frame-by-frame baseline ---------------------------------------------------------------------
def test_frame_by_frame_runs_the_image_method_on_each_frame_with_the_same_seed(video_backbone, clip, tmp_path):
    inner = Semantix(num_steps=3, adain_start_step=1)
    baseline = FrameByFrame(inner)
    baseline.prepare(video_backbone, tmp_path / "cache")
    assert inner.backbone is video_backbone.image_backbone
    output = baseline(clip, 7)
    assert output.frames.shape == clip.frames.shape and torch.equal(output.image, output.frames[0])
    alone = inner(clip.frame_sample(3), 7)
    assert torch.equal(output.frames[3], alone.image)
    assert len(output.diagnostics["grad_norm"]) == FRAMES


def test_frame_by_frame_batches_frames_with_the_same_results(video_backbone, clip, tmp_path):
    outputs = {}
    for per_call in (1, 4):
        baseline = FrameByFrame(Semantix(num_steps=3, adain_start_step=1), frames_per_call=per_call)
        baseline.prepare(video_backbone, tmp_path / f"cache{per_call}")
        outputs[per_call] = baseline(clip, 7).frames
    assert (outputs[1] - outputs[4]).abs().max() < 2e-3


def test_frame_by_frame_configs_build_their_wrapped_methods():
    from conftest import compose
    from hydra.utils import instantiate

    names = ["frames_identity", "frames_reinhard", "frames_semantix", "frames_semantix_20steps", "frames_styleid",
             "frames_stylegallery"]
    cfg = compose([f"method=[{','.join(names)}]", "backbone=tiny_video", "dataset=demo_video"])
    for name in names:
        built = instantiate(cfg.method[name])
        assert isinstance(built, FrameByFrame) and built.supports_video and built.frames_per_call == 1
    assert cfg.method.frames_semantix.method.gamma_ref == 3.0  # the image settings, not the video ones
    assert cfg.method.frames_semantix.method.cache_inversions is False


def test_frame_by_frame_identity_returns_the_source_video(clip, tmp_path):
    baseline = FrameByFrame(Identity())
    baseline.prepare(None, tmp_path)
    assert torch.equal(baseline(clip, 0).frames, clip.frames)
    with pytest.raises(ValueError, match="needs a video sample"):
        baseline(clip.frame_sample(0), 0)


def test_frame_samples_carry_their_own_content_hash(clip):
    hashes = {clip.frame_sample(f).input_sha256["content"] for f in range(FRAMES)}
    assert len(hashes) == FRAMES
    assert clip.frame_sample(2).input_sha256["reference"] == "r" and "frames" not in clip.frame_sample(2).input_sha256
