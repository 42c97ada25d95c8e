"""Semantix's matching is semantic and its guidance acts: properties the tiny backbone's random
weights can show (docs/method.md, "Correspondence" and "Guidance scale").

Random convolutional features are translation-equivariant, so a latent and its translate, noised
with the same noise translated alike, must match each other at the translated positions: a
positional prior that breaks ties keeps those matches, a dominant one pins every location to its
own coordinates."""

from __future__ import annotations

import statistics

import pytest
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf

from semantix.diffusion import capture_block_outputs, match_displacement, match_features
from semantix.methods.semantix import Semantix

SHIFT = 8  # latent cells: a quarter of the tiny backbone's 32x32 latent


@pytest.fixture(scope="module")
def backbone():
    """`tiny_random`: the energies and clamp fractions below were measured with its random VAE's latents
    (std 0.04 after the scaling factor; the trained VAE's are ~1, and the clamp then binds less)."""
    from semantix.backbones import build_tiny_random

    return build_tiny_random()


@pytest.fixture(scope="module")
def default_matching():
    """The matching keys of the shipped config (not the constructor's defaults)."""
    cfg = OmegaConf.load(CONF_DIR / "method" / "semantix.yaml")
    return {k: cfg[k] for k in ("lambda_pe", "pe_dim", "pe_form", "pe_prior_unit")}


def guidance_features(backbone, latent, t):
    blocks = ("up_blocks.1", "up_blocks.2")
    with torch.no_grad(), capture_block_outputs(backbone.unet, blocks) as captured:
        backbone.unet(latent, t, encoder_hidden_states=backbone.encode_prompt([""]))
    return {k: v[0].float() for k, v in captured.items()}


def translated_match_rate(query, reference, shift, **matching):
    """Fraction of interior query locations matched at the translated position, and within one cell of
    their own position."""
    _, h, w = query.shape
    indices, _ = match_features(query, reference, **matching)
    ys, xs = indices // w, indices % w
    gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    gy, gx = gy.flatten(), gx.flatten()
    interior = (gy >= shift + 2) & (gy < h - 2) & (gx >= shift + 2) & (gx < w - 2)
    translated = (ys == gy - shift) & (xs == gx - shift)
    own = match_displacement(indices, (h, w), [(h, w)]) <= 1
    return float(translated[interior].float().mean()), float(own[interior].float().mean())


@pytest.mark.parametrize("t", [901, 301])
def test_default_matching_recovers_a_translation(backbone, default_matching, t):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)
    abar = backbone.make_scheduler("ddpm").alphas_cumprod[t]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    original = guidance_features(backbone, x_t, t)
    shifted = guidance_features(backbone, torch.roll(x_t, (SHIFT, SHIFT), dims=(-2, -1)), t)
    for block in original:
        shift = SHIFT * original[block].shape[-1] // 32
        rate, own = translated_match_rate(shifted[block], original[block], shift, **default_matching)
        assert rate >= 0.7, f"{block} at t={t}: {rate:.0%} matched at the translated position"
        # The earlier reading (position 9:1 over the features) pins matches to their own coordinates.
        concat = dict(default_matching, pe_form="concat")
        rate_concat, own_concat = translated_match_rate(shifted[block], original[block], shift, **concat)
        assert rate_concat < 0.1 and own_concat > 0.9 and own < 0.2


def test_default_matching_prefers_the_same_position_among_equal_candidates(default_matching):
    # A reference made of one repeated 3x3 tile: each query location has 16 equally good candidates.
    g = torch.Generator().manual_seed(1)
    tile = torch.randn(16, 3, 3, generator=g)
    reference = tile.repeat(1, 4, 4)
    query = reference + 1e-3 * torch.randn(reference.shape, generator=g)  # the same picture, a little noise
    indices, _ = match_features(query, reference, **default_matching)
    assert torch.equal(indices, torch.arange(144))
    plain, _ = match_features(query, reference, **dict(default_matching, lambda_pe=0.0))
    assert (match_displacement(plain, (12, 12), [(12, 12)]) > 1).float().mean() > 0.5


STEPS = 20


@pytest.fixture(scope="module")
def pair(backbone, demo, tmp_path_factory):
    sample = next(s for s in demo.values() if len(s.references) == 1)
    cache = tmp_path_factory.mktemp("cache")

    def run(**overrides):
        method = Semantix(num_steps=STEPS, adain_start_step=7, **overrides)  # 7/20: the paper's 20/60
        method.prepare(backbone, cache)
        cond = backbone.encode_prompt([""])
        context = method.invert(sample.content, sample.input_sha256["content"], "", 1, "context")
        reference = method.invert(sample.reference, sample.input_sha256["reference"], "", 1, "reference_0")
        latent, (diagnostics,) = method.sample([context], [[reference]], cond)
        return latent, diagnostics

    return run


def test_guided_style_energy_falls_below_the_unguided(pair):
    # Unguided: the same energies computed, their gradient scaled to nothing.
    _, unguided = pair(energy_scale=1e-9)
    _, guided = pair()
    late = slice(STEPS - 5, STEPS)
    gap = statistics.mean(guided["energy_style"][late]) / statistics.mean(unguided["energy_style"][late]) - 1
    assert gap < -0.005, f"style energy of the last 5 steps: {gap:+.2%} vs unguided"  # measured -1.0%


def test_the_clamp_binds_at_a_strong_scale_and_matters(pair):
    latent, diagnostics = pair(energy_scale=1000.0)
    assert max(diagnostics["clamp_fraction_style"]) > 0.05
    assert max(diagnostics["grad_max_style"]) > 1.0
    unclamped, _ = pair(energy_scale=1000.0, grad_clamp=None)
    assert (latent - unclamped).abs().max() > 1e-3


def test_no_pe_differs_from_the_default(pair):
    latent, diagnostics = pair()
    no_pe, no_pe_diagnostics = pair(lambda_pe=0.0)
    assert (latent - no_pe).abs().max() > 1e-4
    assert diagnostics["match_local_up_blocks.2"] != no_pe_diagnostics["match_local_up_blocks.2"]


def test_match_timestep_uses_one_correspondence_for_every_step(pair, backbone):
    _, per_step = pair()
    _, fixed = pair(match_timestep=261)
    scheduler = backbone.make_scheduler("ddpm")
    scheduler.set_timesteps(STEPS)
    nearest = min(range(STEPS), key=lambda i: abs(int(scheduler.timesteps[i]) - 261))
    for block in ("up_blocks.1", "up_blocks.2"):
        for kind in ("median", "p90", "local"):
            # Every step uses the correspondence of the per-step run's step nearest t = 261 (same features).
            name = f"match_{kind}_{block}"
            assert fixed[name] == [per_step[name][nearest]] * STEPS, name
        assert len(set(per_step[f"match_local_{block}"])) > 1
    with pytest.raises(ValueError, match="match_on"):
        Semantix(match_timestep=261, match_on="output")
