"""Eye-for-an-eye and Cross-Image Attention on the tiny backbone (CPU, short schedules)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from semantix.diffusion import UNetEpsFn, replay
from semantix.methods.cross_image_attention import CrossImageAttention
from semantix.methods.eye_for_an_eye import EyeForAnEye
from semantix.types import SampleError

# A 6-step schedule, 2 skipped: run steps 0..3, injection on all of them, structure step 0.
SHORT = {"num_steps": 6, "skip_steps": 2, "step_ranges": [[0, 4], [0, 4]], "structure_every": 2,
         "structure_until": 1}
METHODS = {
    "eye_for_an_eye": (EyeForAnEye, {"stats_start_step": 2}),
    "cross_image_attention": (CrossImageAttention, {"adain_start_step": 2}),
}
# What switches every change to the content off: injection, the AdaIN / statistics matching.
OFF = {"eye_for_an_eye": {"inject": False, "stats_start_step": None},
       "cross_image_attention": {"inject": False, "adain_start_step": None}}


@pytest.fixture
def make(backbone, tmp_path):
    def build(name: str, **overrides):
        cls, defaults = METHODS[name]
        method = cls(**{**SHORT, **defaults, **overrides})
        method.prepare(backbone, tmp_path / "cache")
        return method

    return build


def single(demo):
    return next(s for s in demo.values() if len(s.references) == 1)


def with_masks(sample, content_rows=slice(8, 56), reference_cols=slice(16, 64)):
    content = torch.zeros(1, 64, 64)
    content[:, content_rows] = 1
    reference = torch.zeros(1, 64, 64)
    reference[..., reference_cols] = 1
    return dataclasses.replace(sample, masks={"content": content, "reference": reference})


@pytest.mark.parametrize("name", METHODS)
def test_runs_and_changes_the_content(make, demo, name):
    sample = single(demo)
    out = make(name)(sample, 0)
    assert out.image.shape == sample.content.shape
    assert torch.isfinite(out.image).all() and 0 <= out.image.min() and out.image.max() <= 1
    assert (out.image - sample.content).abs().mean() > 1e-3
    plain = make(name, **OFF[name])(sample, 0)
    assert (out.image - plain.image).abs().max() > 1e-3
    assert out.diagnostics["masked"] is False and out.diagnostics["prompt"] == f"A photo of a {sample.domain or 'object'}"


@pytest.mark.parametrize("name", METHODS)
def test_injection_off_reproduces_the_plain_reconstruction_of_the_content(make, demo, name):
    # Off, the output row is the structure row: the DDPM replay of the content's inversion with
    # the sampling noise predictor. With the inversion's own CFG that replay is exact, so the
    # output is the decoded content latent.
    sample = single(demo)
    method = make(name, **OFF[name], guidance_scale=3.5)
    out = method(sample, 0)
    latent = method.backbone.encode_images(sample.content[None])
    assert torch.allclose(out.image, method.backbone.decode_latents(latent)[0], atol=1e-4)

    method = make(name, **OFF[name])
    out = method(sample, 0)
    prompt = method.prompt_for(sample)
    structure, _, _ = method.invert_inputs(sample, prompt, 0)
    eps_fn = UNetEpsFn(method.unet, method.backbone.encode_prompt([prompt]), method.uncond_embedding,
                       method.guidance_scale, batch_cfg=False)
    reconstruction = replay(structure, eps_fn, method.scheduler, start_step=method.skip_steps)
    assert torch.allclose(out.image, method.backbone.decode_latents(reconstruction)[0], atol=1e-4)


@pytest.mark.parametrize("name", METHODS)
def test_masks_are_used_and_an_empty_mask_fails_the_sample(make, demo, name):
    sample = single(demo)
    method = make(name, masks="manifest")
    masked = method(with_masks(sample), 0)
    unmasked = method(sample, 0)
    assert masked.diagnostics["masked"] is True and masked.diagnostics["masks"] == "manifest"
    assert unmasked.diagnostics["masks"] == "none"  # masks: manifest on a sample without masks
    assert (masked.image - unmasked.image).abs().max() > 1e-4
    ignored = make(name, masks="none")(with_masks(sample), 0)
    assert torch.equal(ignored.image, unmasked.image)
    with pytest.raises(SampleError, match="no foreground"):
        method(with_masks(sample, content_rows=slice(0, 0)), 0)


def test_eye_for_an_eye_rewrites_only_the_conditional_pass(make, demo):
    # The rewrite sees the conditional pass's rows only: counting calls per pass.
    method = make("eye_for_an_eye")
    calls = []
    original = method.rewrite

    def counting(*args):
        rewrite = original(*args)
        return lambda hidden: calls.append(hidden.shape[0]) or rewrite(hidden)

    method.rewrite = counting
    method(single(demo), 0)
    layers, run_steps = len(method.layer_ranges), len(method.run_steps)
    assert len(calls) == layers * run_steps and set(calls) == {3}


def test_cross_image_attention_swap_guidance_schedule(make):
    method = make("cross_image_attention", num_steps=100, skip_steps=32, structure_every=5, structure_until=40)
    scales = method.swap_guidance_schedule()
    assert len(scales) == 68 and scales[0] == pytest.approx(3.5) and scales[-1] == pytest.approx(1.75)
    assert all(a > b for a, b in zip(scales, scales[1:], strict=False))
    assert method.is_structure_step(10) and method.is_structure_step(35) and not method.is_structure_step(40)
    up2, up3 = (n for n in method.layer_ranges if ".2." in n), (n for n in method.layer_ranges if ".3." in n)
    assert make("cross_image_attention", step_ranges=[[10, 70], [10, 90]]).layer_ranges[next(up2)] == (10, 70)
    assert make("cross_image_attention", step_ranges=[[10, 70], [10, 90]]).layer_ranges[next(up3)] == (10, 90)


def test_the_two_methods_share_inversions(make, demo):
    sample = single(demo)
    eye = make("eye_for_an_eye")
    eye(sample, 0)
    cross = make("cross_image_attention")
    cross(sample, 0)
    assert eye.cache.misses == 2 and cross.cache.misses == 0 and cross.cache.hits == 2


@pytest.mark.parametrize("name", METHODS)
def test_processors_are_restored_after_a_call_and_after_an_exception(make, demo, name):
    method = make(name)
    before = dict(method.unet.attn_processors)
    method(single(demo), 0)
    assert all(method.unet.attn_processors[k] is v for k, v in before.items())

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    method.stepper.step = fail
    with pytest.raises(RuntimeError, match="boom"):
        method(single(demo), 0)
    assert all(method.unet.attn_processors[k] is v for k, v in before.items())


def test_eye_for_an_eye_without_masks_runs_unmasked_adain_in_the_late_steps(make, demo, monkeypatch):
    # The authors' mask-free path (use_masked_adain off): adain(latents[0], latents[1]) after the late
    # steps. Rewritten here with their statistics (per channel over space, unbiased variance + 1e-5).
    import semantix.methods.eye_for_an_eye as module

    def upstream_adain(content, style):
        c, s = content[0].flatten(1), style[0].flatten(1)
        c_mean, c_std = c.mean(1), (c.var(1) + 1e-5).sqrt()
        s_mean, s_std = s.mean(1), (s.var(1) + 1e-5).sqrt()
        return (((c - c_mean[:, None]) / c_std[:, None]) * s_std[:, None] + s_mean[:, None]).view_as(content)

    calls = []
    original = module.adain

    def recording(out, app):
        result = original(out, app)
        calls.append((out.clone(), app.clone(), result))
        return result

    monkeypatch.setattr(module, "adain", recording)
    sample = single(demo)
    method = make("eye_for_an_eye")  # stats_start_step 2: run steps 2 and 3 of 0..3
    out = method(sample, 0)
    assert out.diagnostics["statistics_matching"] == "adain" and out.diagnostics["masked"] is False
    assert len(calls) == len([r for r in method.run_steps if r >= 2]) == 2
    for before, app, result in calls:
        # Population vs unbiased variance: a relative difference of 1/(2N) in the std (N = 32x32 here).
        assert torch.allclose(result, upstream_adain(before, app), atol=2e-3)
    calls.clear()
    none = make("eye_for_an_eye", stats_without_masks="none")(sample, 0)
    assert not calls and none.diagnostics["statistics_matching"] == "none"
    assert (none.image - out.image).abs().max() > 1e-4
    masked = make("eye_for_an_eye", masks="manifest")(with_masks(sample), 0)  # masked AdaIN, not the unmasked one
    assert not calls and masked.diagnostics["statistics_matching"] == "masked_adain"
    with pytest.raises(ValueError, match="stats_without_masks"):
        EyeForAnEye(stats_without_masks="sometimes")


def test_self_segmentation_finds_the_segment_the_domain_word_attends_to():
    from semantix.methods.appearance import self_segmentation_mask

    side, segments = 8, 4
    labels = np.repeat(np.arange(side) // 2, side)  # four segments: bands of two rows
    g = torch.Generator().manual_seed(0)
    # Self-attention rows: each location attends mostly within its segment (plus noise).
    self_maps = torch.tensor(labels[:, None] == labels[None], dtype=torch.float32) + 0.05 * torch.rand(64, 64, generator=g)
    self_maps = self_maps / self_maps.sum(1, keepdim=True)
    # Cross-attention at half the side (4x4), 6 text tokens; token 4 (the domain word) on segment 2.
    seg_small = labels.reshape(side, side)[::2, ::2].reshape(-1)
    cross = 0.1 * torch.rand(16, 6, generator=g)
    cross[seg_small == 2, 4] += 1.0
    mask = self_segmentation_mask(self_maps, cross, [4], segments, 1.4, seed=0)
    assert mask.shape == (side, side) and np.array_equal(mask.reshape(-1), labels == 2)
    # Upstream's rule rewritten: score per segment = mean normalised word map; foreground where it
    # exceeds 1.4 x the mean of the other scores (the maximum left out).
    word = cross[:, 4].reshape(4, 4).numpy().repeat(2, 0).repeat(2, 1)
    word = (word - abs(word.min())) / word.max()
    scores = [word.reshape(-1)[labels == c].mean() for c in range(segments)]
    rest = sorted(scores)[:-1]
    assert [c for c in range(segments) if scores[c] > 1.4 * sum(rest) / len(rest)] == [2]


@pytest.mark.parametrize("name", METHODS)
def test_self_segmentation_masks_are_used_and_recorded(make, demo, name):
    sample = single(demo)
    method = make(name, masks="self")
    out = method(with_masks(sample), 0)  # the manifest's masks are not used with masks: self
    diag = out.diagnostics
    assert diag["masks"] == "self" and diag["masked"] is False
    assert len(diag["self_mask_foreground"]) == 2 and all(0 <= f <= 1 for f in diag["self_mask_foreground"])
    assert torch.isfinite(out.image).all()
    none = make(name, masks="none")(sample, 0)
    assert none.diagnostics["masks"] == "none"
    if not diag.get("self_mask_empty"):
        assert (none.image - out.image).abs().max() > 1e-6
    with pytest.raises(ValueError, match="masks"):
        METHODS[name][0](masks="sometimes")
