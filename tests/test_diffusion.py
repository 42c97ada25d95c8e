"""Tests of semantix.diffusion: DDPM stepping / inversion / replay, hooks, matching, AdaIN, energies."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

import semantix.diffusion.energy as energy_module
from semantix.diffusion import (
    DDPMStepper,
    Inversion,
    UNetEpsFn,
    adain,
    augment_with_pe,
    capture_block_outputs,
    cfg,
    clamp_grad,
    clamped_energy_gradient,
    cosine_correspondence,
    ddpm_step,
    flatten_locations,
    gather_matched,
    invert,
    masked_adain,
    match_displacement,
    match_features,
    mean_std,
    nearest_neighbours,
    positional_encoding_2d,
    posterior_mean,
    posterior_sigma,
    replay,
    semantic_distance_energy,
    spatial_energy,
    style_energy,
)

T_STEPS = 60  # the paper's number of DDPM inversion steps


def sd15_scheduler(num_steps: int = T_STEPS) -> DDPMScheduler:
    s = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        prediction_type="epsilon",
        variance_type="fixed_small",
    )
    s.set_timesteps(num_steps)
    return s


def trivial_eps(x: torch.Tensor, t: int) -> torch.Tensor:
    """Deterministic, nonlinear, timestep-dependent, element-wise (so batch independent)."""
    return torch.tanh(x) * (0.3 + t / 2000.0) + 0.1 * torch.sin(3.0 * x)


@pytest.fixture(scope="module")
def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return unet.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def text_embs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 7, 32, generator=g), torch.randn(1, 7, 32, generator=g)


# ----------------------------------------------------------------------------------------------
# DDPM stepping


def test_step_agrees_with_scheduler_step():
    s = sd15_scheduler()
    stepper = DDPMStepper(s)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    ts = s.timesteps.tolist()
    for i in [0, 1, 17, 30, T_STEPS - 2]:  # every non-final step is identical to the scheduler's
        t, t_prev = ts[i], ts[i + 1]
        assert int(s.previous_timestep(t)) == t_prev == stepper.prev_timesteps[i]
        ref = s.step(eps, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        z = randn_tensor(x.shape, generator=torch.Generator().manual_seed(i), dtype=x.dtype)
        sigma = posterior_sigma(t, t_prev, s)
        assert sigma > 0
        assert sigma**2 == pytest.approx(float(s._get_variance(t)), rel=1e-5)
        assert stepper.sigma(i) == pytest.approx(sigma, rel=1e-9)
        # zero noise: the posterior mean equals the scheduler's step minus its noise
        torch.testing.assert_close(
            posterior_mean(x, eps, t, t_prev, s), ref - sigma * z, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(ddpm_step(x, eps, t, t_prev, z, s), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stepper.step(x, eps, i, z), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ddpm_step(x, eps, t, t_prev, None, s), stepper.posterior_mean(x, eps, i))


def test_final_step_alpha_choice():
    s = sd15_scheduler()
    stepper = DDPMStepper(s)
    # default: alphas_cumprod[0] after the last timestep (SD1.5 set_alpha_to_one: false), sigma > 0
    assert stepper.final_alpha_cumprod == pytest.approx(float(s.alphas_cumprod[0]))
    assert all(stepper.sigma(i) > 0 for i in range(len(stepper)))
    # final_alpha_cumprod=1 reproduces DDPMScheduler.step exactly at the last step (zero noise there)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    t = int(s.timesteps[-1])
    ref = s.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(
        posterior_mean(x, eps, t, -1, s, final_alpha_cumprod=1.0), ref, atol=1e-5, rtol=1e-5
    )
    assert posterior_sigma(t, -1, s, final_alpha_cumprod=1.0) == 0.0
    with pytest.raises(ValueError, match="sigma = 0"):
        invert(x, trivial_eps, s, final_alpha_cumprod=1.0, generator=torch.Generator().manual_seed(0))


def test_cfg():
    u, c = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(cfg(u, c, 1.0), c)
    torch.testing.assert_close(cfg(u, c, 0.0), u)
    torch.testing.assert_close(cfg(u, c, 3.5), u + 3.5 * (c - u))


# ----------------------------------------------------------------------------------------------
# Inversion and replay


def test_invert_replay_trivial_eps():
    s = sd15_scheduler()
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    inv = invert(x0, trivial_eps, s, generator=torch.Generator().manual_seed(4))
    assert len(inv) == T_STEPS and inv.xts.shape == (T_STEPS, 2, 4, 8, 8) and inv.zs.shape == inv.xts.shape
    assert inv.features is None
    assert torch.equal(inv.timesteps, s.timesteps.cpu().long())
    assert torch.isfinite(inv.zs).all()
    # stored x_t are the independent q-samples x_t = sqrt(abar) x0 + sqrt(1-abar) n_t (up to rounding)
    noises = randn_tensor((T_STEPS, *x0.shape), generator=torch.Generator().manual_seed(4))
    abar = s.alphas_cumprod[s.timesteps].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(inv.xts, abar.sqrt() * x0 + (1 - abar).sqrt() * noises, atol=1e-5, rtol=0)
    for start in (0, 25, T_STEPS - 1):
        err = (replay(inv, trivial_eps, s, start_step=start) - x0).abs().max().item()
        assert err < 1e-4, (start, err)
    # the property can fail: another noise predictor, or shuffled noise maps, do not reproduce x0
    assert (replay(inv, lambda x, t: trivial_eps(x, t) * 1.1, s) - x0).abs().max() > 1e-2
    shuffled = Inversion(inv.timesteps, inv.xts, inv.zs.flip(0), inv.x0, inv.final_alpha_cumprod)
    assert (replay(shuffled, trivial_eps, s) - x0).abs().max() > 1e-2


def test_invert_replay_tiny_unet_with_cfg_and_features(tiny_unet, text_embs):
    s = sd15_scheduler()
    cond, uncond = text_embs
    blocks = ("up_blocks.0", "up_blocks.1")
    eps_fn = UNetEpsFn(tiny_unet, cond, uncond, guidance_scale=3.5, capture=blocks)
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    eps, feats = eps_fn(x0, 500)
    assert eps.shape == x0.shape and eps.std() > 1e-2  # a non-trivial predictor
    assert set(feats) == set(blocks) and feats["up_blocks.0"].shape == (2, 64, 16, 16)

    inv = invert(x0, eps_fn, s, generator=torch.Generator().manual_seed(6))
    assert inv.features is not None and len(inv.features) == T_STEPS
    assert inv.features[0]["up_blocks.1"].shape == (2, 32, 16, 16)
    assert not inv.features[0]["up_blocks.1"].requires_grad
    x0_hat = replay(inv, eps_fn, s)
    err = (x0_hat - x0).abs().max().item()
    print(f"tiny-UNet CFG 3.5 replay max abs error over {T_STEPS} steps: {err:.3e}")
    assert err < 1e-4
    # beyond a bitwise retrace: a predictor that rounds differently (two CFG passes instead of one
    # batch of 2B: eps differs by ~5e-6 per step here) still lands near x0; the error grows about
    # linearly with the steps (measured 7e-5 over 60), it is not amplified along the chain
    two_pass = UNetEpsFn(tiny_unet, cond, uncond, guidance_scale=3.5, batch_cfg=False)
    err_two_pass = (replay(inv, two_pass, s) - x0).abs().max().item()
    print(f"same, with the CFG branches run as two passes: {err_two_pass:.3e}")
    assert err_two_pass < 5e-4
    # the cached features are those of the conditional branch at the stored x_t
    _, f10 = eps_fn(inv.xts[10], int(inv.timesteps[10]))
    torch.testing.assert_close(f10["up_blocks.0"], inv.features[10]["up_blocks.0"])
    # another prompt does not reproduce x0
    other = UNetEpsFn(tiny_unet, uncond, cond, guidance_scale=3.5)
    assert (replay(inv, other, s, start_step=40) - x0).abs().max() > 1e-3


def test_unet_eps_fn_batched_cfg_equals_two_passes(tiny_unet, text_embs):
    cond, uncond = text_embs
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    a = UNetEpsFn(tiny_unet, cond, uncond, 3.5, capture=("up_blocks.1",), batch_cfg=True)(x, 301)
    b = UNetEpsFn(tiny_unet, cond, uncond, 3.5, capture=("up_blocks.1",), batch_cfg=False)(x, 301)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a[1]["up_blocks.1"], b[1]["up_blocks.1"], atol=1e-5, rtol=1e-4)
    eps_nocfg, none = UNetEpsFn(tiny_unet, cond)(x, 301)
    assert none is None and eps_nocfg.shape == x.shape


def test_invert_video_latents_and_seeds():
    s = sd15_scheduler(20)
    x0 = torch.randn(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(8))  # (B, F, 4, h, w)
    inv = invert(x0, trivial_eps, s, generator=torch.Generator().manual_seed(1))
    assert inv.xts.shape == (20, *x0.shape)
    assert (replay(inv, trivial_eps, s) - x0).abs().max() < 1e-4
    same = invert(x0, trivial_eps, s, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(same.zs, inv.zs, atol=0, rtol=0)
    other = invert(x0, trivial_eps, s, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(other.zs, inv.zs)
    # one generator per batch item: an item's inversion does not depend on its batch
    gens = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    batched = invert(x0, trivial_eps, s, generator=gens)
    single = invert(x0[1:], trivial_eps, s, generator=[torch.Generator().manual_seed(11)])
    torch.testing.assert_close(batched.zs[:, 1:], single.zs, atol=1e-6, rtol=1e-6)


def test_inversion_serialisation_roundtrip():
    s = sd15_scheduler(10)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))

    def eps_fn(x, t):
        return trivial_eps(x, t), {"up_blocks.1": x.mean(1, keepdim=True) * t}

    inv = invert(x0, eps_fn, s, num_steps=12, generator=torch.Generator().manual_seed(0))
    assert len(inv) == 12
    buf = io.BytesIO()
    torch.save(inv.to_dict(), buf)
    buf.seek(0)
    loaded = Inversion.from_dict(torch.load(buf, weights_only=True))
    for name in ("timesteps", "xts", "zs", "x0"):
        assert torch.equal(getattr(loaded, name), getattr(inv, name))
    assert loaded.final_alpha_cumprod == inv.final_alpha_cumprod
    assert torch.equal(loaded.features[3]["up_blocks.1"], inv.features[3]["up_blocks.1"])
    assert (replay(loaded, trivial_eps, s) - x0).abs().max() < 1e-4
    assert loaded.to(dtype=torch.float64).xts.dtype == torch.float64
    bad = inv.to_dict()
    bad["zs"] = bad["zs"][:-1]
    with pytest.raises(ValueError):
        Inversion.from_dict(bad)
    with pytest.raises(ValueError):
        Inversion.from_dict({"format": "something else"})


# ----------------------------------------------------------------------------------------------
# Feature capture


def test_capture_gradients_flow_to_input(tiny_unet, text_embs):
    cond, _ = text_embs
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    with capture_block_outputs(tiny_unet, ["up_blocks.0", "up_blocks.1"]) as feats:
        tiny_unet(x, 400, encoder_hidden_states=cond)
        assert feats["up_blocks.0"].requires_grad and feats["up_blocks.0"].grad_fn is not None
        feats["up_blocks.1"].pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_capture_hooks_removed_on_exception_and_exit(tiny_unet, text_embs):
    cond, _ = text_embs
    paths = ["up_blocks.0", "up_blocks.1"]
    with pytest.raises(RuntimeError, match="boom"):
        with capture_block_outputs(tiny_unet, paths):
            assert all(len(tiny_unet.get_submodule(p)._forward_hooks) == 1 for p in paths)
            raise RuntimeError("boom")
    assert all(len(tiny_unet.get_submodule(p)._forward_hooks) == 0 for p in paths)
    with capture_block_outputs(tiny_unet, paths) as feats:
        with torch.no_grad():
            tiny_unet(torch.zeros(1, 4, 16, 16), 10, encoder_hidden_states=cond)
    assert set(feats) == set(paths)
    assert all(len(tiny_unet.get_submodule(p)._forward_hooks) == 0 for p in paths)
    with pytest.raises(AttributeError):  # a bad path fails early, leaving no hook behind
        with capture_block_outputs(tiny_unet, ["up_blocks.0", "no_such_block"]):
            pass
    assert len(tiny_unet.get_submodule("up_blocks.0")._forward_hooks) == 0


def test_capture_tuple_outputs():
    class TupleOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(x), "extra"

    net = torch.nn.Sequential(TupleOut())
    x = torch.randn(2, 3)
    with capture_block_outputs(net, ["0"]) as feats:
        out = net(x)
    assert torch.equal(feats["0"], out[0])


def test_energy_through_unet_features_descends(tiny_unet, text_embs):
    """Capture + energy + clamped gradient: a small step on x_t lowers the spatial energy."""
    cond, _ = text_embs
    g = torch.Generator().manual_seed(4)
    x_ctx, x_out = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    with capture_block_outputs(tiny_unet, ["up_blocks.1"]) as feats, torch.no_grad():
        tiny_unet(x_ctx, 300, encoder_hidden_states=cond)
        f_ctx = feats["up_blocks.1"]

    def energy(x):
        with capture_block_outputs(tiny_unet, ["up_blocks.1"]) as f:
            tiny_unet(x, 300, encoder_hidden_states=cond)
        return spatial_energy(f["up_blocks.1"], f_ctx)

    x = x_out.clone().requires_grad_(True)
    e0 = energy(x)
    gradients = clamped_energy_gradient({"spatial": e0}, x, limit=1.0)
    grad = gradients.total
    assert gradients.per_term["spatial"].abs().max() <= 1.0 and torch.isfinite(grad).all()
    with torch.no_grad():
        e1 = energy(x - 0.5 * grad / grad.abs().max())
    assert e1 < e0.detach()


# ----------------------------------------------------------------------------------------------
# Matching and positional encoding


def test_nearest_neighbours_chunked_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(53, 16, generator=g), dim=-1)
    idx, score = nearest_neighbours(q, k, chunk_size=8)
    brute_idx, brute_score = [], []
    for i in range(37):
        best, best_j = -math.inf, -1
        for j in range(53):
            v = float((q[i] * k[j]).sum())
            if v > best:
                best, best_j = v, j
        brute_idx.append(best_j)
        brute_score.append(best)
    assert idx.tolist() == brute_idx
    torch.testing.assert_close(score, torch.tensor(brute_score), atol=1e-5, rtol=0)
    for chunk in (1, 37, 1000):  # chunk size does not change the result
        assert torch.equal(nearest_neighbours(q, k, chunk_size=chunk)[0], idx)
    # leading batch dims
    qb, kb = torch.stack([q, q.flip(0)]), torch.stack([k, k])
    idx_b, _ = nearest_neighbours(qb, kb, chunk_size=5)
    assert idx_b.shape == (2, 37) and torch.equal(idx_b[0], idx) and torch.equal(idx_b[1], idx.flip(0))


def test_positional_encoding_2d():
    pe = positional_encoding_2d(8, 12, 64)
    assert pe.shape == (64, 8, 12) and pe.dtype == torch.float32
    torch.testing.assert_close(pe.norm(dim=0), torch.ones(8, 12))
    flat = flatten_locations(pe)  # (96, 64)
    kernel = flat @ flat.T
    # every location is most similar to itself, strictly
    off = kernel - 2 * torch.eye(96)
    assert (kernel.diagonal() - off.max(dim=1).values > 1e-4).all()
    # y in the first half of the channels, x in the second half
    assert torch.allclose(pe[:32, :, 0:1].expand(32, 8, 12), pe[:32])
    assert torch.allclose(pe[32:, 0:1, :].expand(32, 8, 12), pe[32:])
    # similarity decreases with distance along a row at the coarse scale
    row = kernel[0, :12]
    assert row[0] > row[1] > row[3] and row[0] > row[11]
    with pytest.raises(ValueError):
        positional_encoding_2d(4, 4, 30)


def test_augment_with_pe_concat_form_is_unit_norm():
    f = torch.randn(2, 32, 5, 7)
    a = augment_with_pe(f, 3.0, pe_dim=64, pe_form="concat")
    assert a.shape == (2, 35, 96)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2, 35))
    assert augment_with_pe(f[0], 3.0, pe_dim=None).shape == (35, 64)
    # lambda_pe = 0: plain normalised features, zero-padded (both forms)
    for form in ("prior", "concat"):
        a0 = augment_with_pe(f[0], 0.0, pe_form=form)
        torch.testing.assert_close(a0[:, :32], torch.nn.functional.normalize(flatten_locations(f[0]), dim=-1))
        assert a0[:, 32:].abs().max() == 0
    with pytest.raises(ValueError, match="pe_form"):
        augment_with_pe(f, 3.0, pe_form="sum")


def test_prior_form_score_is_cosine_plus_weighted_kernel():
    """Brute force: score(p, q) = cos(F_p, F_q) + lambda_pe * unit * <P_p, P_q>, and the concat form's
    (cos + lambda^2 <P_p, P_q>) / (1 + lambda^2)."""
    g = torch.Generator().manual_seed(5)
    fq, fr = torch.randn(16, 4, 5, generator=g), torch.randn(16, 3, 6, generator=g)
    pq, pr = positional_encoding_2d(4, 5, 64), positional_encoding_2d(3, 6, 64)
    for lam, unit in ((3.0, 0.01), (1.5, 0.2)):
        score = augment_with_pe(fq, lam, pe_prior_unit=unit) @ augment_with_pe(fr, lam, pe_prior_unit=unit).T
        concat = augment_with_pe(fq, lam, pe_form="concat") @ augment_with_pe(fr, lam, pe_form="concat").T
        for p in range(20):
            for q in range(18):
                f_p, f_q = fq.flatten(1)[:, p], fr.flatten(1)[:, q]
                cos = float(f_p @ f_q / (f_p.norm() * f_q.norm()))
                kernel = float(pq.flatten(1)[:, p] @ pr.flatten(1)[:, q])
                assert float(score[p, q]) == pytest.approx(cos + lam * unit * kernel, abs=1e-5)
                assert float(concat[p, q]) == pytest.approx((cos + lam**2 * kernel) / (1 + lam**2), abs=1e-5)


def test_match_displacement_in_query_cells():
    # Query 4x6; reference 0 is 4x6 (same grid), reference 1 is 7x11 (twice as fine, same [0, 1] span).
    indices = torch.tensor([0, 24 + 0, 5, 24 + 10, 24 + 76, 13])
    distance = match_displacement(torch.cat([indices, torch.zeros(18, dtype=torch.long)]), (4, 6), [(4, 6), (7, 11)])
    # query 0 (0,0) -> ref0 (0,0): 0; query 1 (0,1) -> ref1 (0,0): 1; query 2 (0,2) -> ref0 (0,5): 3;
    # query 3 (0,3) -> ref1 (0,10) = query grid (0,5): 2; query 4 (0,4) -> ref1 (6,10) = (3,5): 3;
    # query 5 (0,5) -> ref0 (2,1): max(2, 4) = 4
    assert distance[:6].tolist() == [0.0, 1.0, 3.0, 2.0, 3.0, 4.0]
    brute = [max(abs(p // 6), abs(p % 6)) for p in range(6, 24)]  # the rest matched ref0 (0, 0)
    assert distance[6:].tolist() == [float(b) for b in brute]


def test_pe_makes_matches_spatially_coherent():
    h, w, C = 9, 11, 32
    flat = torch.ones(C, h, w)  # identical features everywhere
    for form in ("prior", "concat"):
        idx, _ = match_features(flat, flat, lambda_pe=3.0, chunk_size=16, pe_form=form)
        assert torch.equal(idx, torch.arange(h * w))
        idx_small, _ = match_features(flat, flat, lambda_pe=0.1, pe_dim=None, pe_form=form)
        assert torch.equal(idx_small, torch.arange(h * w))
    idx_none, _ = match_features(flat, flat, lambda_pe=0.0)  # without PE: all ties, no coherence
    assert not torch.equal(idx_none, torch.arange(h * w))


def test_multi_reference_matching():
    g = torch.Generator().manual_seed(3)
    ctx = torch.randn(16, 6, 6, generator=g)
    other = torch.randn(16, 4, 5, generator=g)
    idx, score = match_features(ctx, [other, ctx], lambda_pe=3.0, pe_dim=32, chunk_size=7, pe_form="concat")
    assert torch.equal(idx, torch.arange(36) + 20)  # each location finds itself in the 2nd reference
    torch.testing.assert_close(score, torch.ones(36))
    idx, score = match_features(ctx, [other, ctx], lambda_pe=3.0, pe_dim=32, chunk_size=7)
    assert torch.equal(idx, torch.arange(36) + 20)
    torch.testing.assert_close(score, torch.full((36,), 1.03))  # cos 1 + the prior's 3 x 0.01 at zero shift
    keys = torch.cat([flatten_locations(other), flatten_locations(ctx)], dim=0)
    torch.testing.assert_close(gather_matched(keys, idx, (6, 6)), ctx)


# ----------------------------------------------------------------------------------------------
# AdaIN


def test_adain_matches_reference_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3 + 1
    ref = torch.randn(1, 4, 8, 8, generator=g) * 0.5 - 2
    out = adain(x, ref)
    m_out, s_out = mean_std(out, (-2, -1), eps=0)
    m_ref, s_ref = mean_std(ref, (-2, -1), eps=0)
    torch.testing.assert_close(m_out, m_ref.expand_as(m_out), atol=1e-5, rtol=0)
    torch.testing.assert_close(s_out, s_ref.expand_as(s_out), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(adain(x, x), x, atol=1e-5, rtol=1e-6)
    # video latents (B, F, C, h, w): statistics over frames and space, per channel
    v = torch.randn(1, 3, 4, 5, 5, generator=g)
    vr = torch.randn(1, 3, 4, 5, 5, generator=g) * 2 + 0.5
    vo = adain(v, vr, dims=(1, -2, -1))
    torch.testing.assert_close(
        mean_std(vo, (1, -2, -1), eps=0)[1], mean_std(vr, (1, -2, -1), eps=0)[1], atol=1e-4, rtol=1e-4
    )
    assert not torch.allclose(mean_std(vo, (-2, -1), eps=0)[0], mean_std(vr, (-2, -1), eps=0)[0])



def test_masked_adain_matches_masked_statistics_and_keeps_the_rest():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 6, 6, generator=g) * 2 + 1
    ref = torch.randn(1, 4, 6, 6, generator=g) * 0.5 - 2
    x_mask = torch.zeros(1, 1, 6, 6)
    x_mask[..., :3, :] = 1
    ref_mask = torch.zeros(1, 1, 6, 6)
    ref_mask[..., :, 4:] = 1
    out = masked_adain(x, ref, x_mask, ref_mask)
    inside = out[..., :3, :].flatten(-2)
    ref_inside = ref[..., :, 4:].flatten(-2)
    torch.testing.assert_close(inside.mean(-1), ref_inside.mean(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(inside.std(-1, correction=0), ref_inside.std(-1, correction=0), atol=1e-3, rtol=1e-3)
    assert torch.equal(out[..., 3:, :], x[..., 3:, :])
    ones = torch.ones(1, 1, 6, 6)
    torch.testing.assert_close(masked_adain(x, ref, ones, ones), adain(x, ref), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no foreground"):
        masked_adain(x, ref, torch.zeros(1, 1, 6, 6), ones)


def _correspondence_loop(query, keys, query_mask, key_mask):
    """The authors' per-pixel loop: cosine of one query vector with every key, argmax."""
    out = []
    for n in range(query.shape[0]):
        if query_mask is not None and not query_mask[n]:
            out.append(-1)
            continue
        best, best_score = -1, -math.inf
        q = query[n] / query[n].norm()
        for m in range(keys.shape[0]):
            if key_mask is not None and not key_mask[m]:
                continue
            score = float(q @ (keys[m] / keys[m].norm()))
            if score > best_score:
                best, best_score = m, score
        out.append(best)
    return torch.tensor(out)


@pytest.mark.parametrize("masked", [False, True])
def test_cosine_correspondence_equals_a_per_pixel_loop(masked):
    g = torch.Generator().manual_seed(4)
    query, keys = torch.randn(36, 8, generator=g), torch.randn(30, 8, generator=g) * 3
    query_mask = torch.rand(36, generator=g) > 0.3 if masked else None
    key_mask = torch.rand(30, generator=g) > 0.5 if masked else None
    fast = cosine_correspondence(query, keys, query_mask, key_mask, chunk_size=7)
    assert torch.equal(fast, _correspondence_loop(query, keys, query_mask, key_mask))
    if masked:
        assert bool(key_mask[fast[query_mask]].all()) and bool((fast[~query_mask] == -1).all())

# ----------------------------------------------------------------------------------------------
# Energies


def _energies(f_out, f_other):
    return {
        "style": style_energy(f_out, f_other),
        "spatial": spatial_energy(f_out, f_other),
        "semantic": semantic_distance_energy(f_out, f_other, max_side=4),
    }


@pytest.mark.parametrize("shape", [(16, 6, 6), (2, 16, 8, 8)])
def test_energies_zero_positive_and_descend(shape):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    for name, e in _energies(a, a.clone()).items():
        assert abs(e.item()) < 1e-6, name
    for name, e in _energies(a, b).items():
        assert e.item() > 1e-3, name
    for name in ("style", "spatial", "semantic"):
        f = a.clone().requires_grad_(True)
        e0 = _energies(f, b)[name]
        (grad,) = torch.autograd.grad(e0, f)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        with torch.no_grad():
            e1 = _energies(f - 0.05 * grad / grad.norm() * f.norm(), b)[name]
        assert e1 < e0.detach(), name


def test_semantic_distance_pools_and_is_scale_invariant():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(8, 64, 64, generator=g), torch.randn(8, 64, 64, generator=g)
    e = semantic_distance_energy(a, b)  # pooled to 32x32: a 1024 x 1024 similarity
    assert e > 0
    pooled = torch.nn.functional.avg_pool2d(a[None], 2)[0]
    pooled_b = torch.nn.functional.avg_pool2d(b[None], 2)[0]
    torch.testing.assert_close(e, semantic_distance_energy(pooled, pooled_b), atol=1e-6, rtol=1e-5)
    scale = torch.rand(1, 16, 16, generator=g) + 0.5
    small = a[:, :16, :16]
    assert semantic_distance_energy(small * scale, small) < 1e-6
    with pytest.raises(ValueError):
        semantic_distance_energy(a, b[:, :32])


def test_gather_matched_and_clamp():
    ref = torch.randn(10, 5)  # 10 locations, 5 channels
    idx = torch.tensor([3, 3, 0, 9, 1, 2])
    out = gather_matched(ref, idx, (2, 3))
    assert out.shape == (5, 2, 3)
    torch.testing.assert_close(flatten_locations(out), ref[idx])
    torch.testing.assert_close(gather_matched(ref, idx), ref[idx])
    refb = torch.randn(2, 10, 5)
    idxb = torch.stack([idx, idx.flip(0)])
    outb = gather_matched(refb, idxb, (2, 3))
    torch.testing.assert_close(flatten_locations(outb[1]), refb[1][idx.flip(0)])
    gr = torch.tensor([-3.0, -0.5, 0.2, 7.0])
    torch.testing.assert_close(clamp_grad(gr), torch.tensor([-1.0, -0.5, 0.2, 1.0]))
    assert torch.equal(clamp_grad(gr, None), gr)


@pytest.mark.parametrize("batched", [True, False])
def test_clamped_energy_gradient_per_term(batched, monkeypatch):
    monkeypatch.setattr(energy_module, "_batched_unavailable", None)  # whatever an earlier test met
    x = torch.randn(3, 4, requires_grad=True)
    terms = {"a": 10.0 * (x**2).sum(), "b": (x * 0.1).sum(), "c": torch.tensor(2.0)}
    gradients = clamped_energy_gradient(terms, x, limit=1.0, batched=batched)
    per = gradients.per_term
    torch.testing.assert_close(per["a"], (20.0 * x.detach()).clamp(-1, 1))
    torch.testing.assert_close(per["b"], torch.full((3, 4), 0.1))
    assert torch.equal(per["c"], torch.zeros(3, 4))
    torch.testing.assert_close(gradients.total, per["a"] + per["b"])
    # Per-sample (per row) diagnostics of the raw gradients: the largest |g| and the share at the clamp.
    raw_a = 20.0 * x.detach()
    torch.testing.assert_close(gradients.max_abs["a"], raw_a.abs().amax(dim=1))
    torch.testing.assert_close(gradients.clamped_fraction["a"], (raw_a.abs() >= 1).float().mean(dim=1))
    torch.testing.assert_close(gradients.max_abs["b"], torch.full((3,), 0.1))
    assert gradients.clamped_fraction["b"].tolist() == [0.0] * 3
    assert gradients.max_abs["c"].tolist() == [0.0] * 3
    assert energy_module._batched_unavailable is None  # elementwise ops have vmap batching rules


def _conv_energies(conv, x):
    y = torch.nn.functional.silu(conv(x))
    return {"a": 10.0 * (y**2).mean(), "b": y.mean(), "c": y[:, :1].abs().mean()}


def test_batched_energy_gradient_falls_back_to_separate_passes_with_one_warning(monkeypatch, caplog):
    # A convolution's backward has no batching rule in the legacy vmap behind is_grads_batched: it
    # loops over the batch. The first such pass warns once; later calls use separate passes.
    monkeypatch.setattr(energy_module, "_batched_unavailable", None)
    batched_calls = []
    original = energy_module._batched_vjp
    monkeypatch.setattr(energy_module, "_batched_vjp", lambda *a, **k: batched_calls.append(1) or original(*a, **k))
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    separate = clamped_energy_gradient(_conv_energies(conv, x), x, batched=False)
    with caplog.at_level(logging.WARNING, logger="semantix.diffusion.energy"):
        first = clamped_energy_gradient(_conv_energies(conv, x), x, batched=True)
        second = clamped_energy_gradient(_conv_energies(conv, x), x, batched=True)
    warned = [r.getMessage() for r in caplog.records if "is_grads_batched" in r.getMessage()]
    assert len(warned) == 1 and "aten::convolution_backward" in warned[0]
    assert len(batched_calls) == 1  # the second call ran separate passes
    for gradients in (first, second):
        torch.testing.assert_close(gradients.total, separate.total)
        for k in separate.per_term:
            torch.testing.assert_close(gradients.per_term[k], separate.per_term[k])
    # fallback=False always runs the batched pass (what the benchmark times), without a new warning.
    forced = clamped_energy_gradient(_conv_energies(conv, x), x, batched=True, fallback=False)
    torch.testing.assert_close(forced.total, separate.total)
    assert len(batched_calls) == 2 and len([r for r in caplog.records if "is_grads_batched" in r.getMessage()]) == 1


def test_failing_batched_energy_gradient_falls_back_on_the_kept_graph(monkeypatch, caplog):
    monkeypatch.setattr(energy_module, "_batched_unavailable", None)
    grad = torch.autograd.grad

    def no_batched_grad(*args, is_grads_batched=False, **kwargs):
        if is_grads_batched:
            raise RuntimeError("vmap: no rule for this op\nmore detail")
        return grad(*args, **kwargs)

    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    separate = clamped_energy_gradient(_conv_energies(conv, x), x, batched=False)
    monkeypatch.setattr(torch.autograd, "grad", no_batched_grad)
    with caplog.at_level(logging.WARNING, logger="semantix.diffusion.energy"):
        gradients = clamped_energy_gradient(_conv_energies(conv, x), x, batched=True)
    torch.testing.assert_close(gradients.total, separate.total)
    assert energy_module._batched_unavailable == "failed (vmap: no rule for this op)"
    assert "failed (vmap: no rule for this op)" in caplog.text
    with pytest.raises(RuntimeError, match="no rule"):  # without fallback the error is the caller's
        clamped_energy_gradient(_conv_energies(conv, x), x, batched=True, fallback=False)
