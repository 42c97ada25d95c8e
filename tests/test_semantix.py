"""The Semantix sampler on the tiny backbone: the properties docs/method.md requires, the
cache, guidance that really reaches the sampler, multi-reference, and the ablation configs."""

from __future__ import annotations

import pytest
import torch
from harness import run_job

import semantix.methods.semantix as semantix_module
from semantix.diffusion import capture_block_outputs, replay
from semantix.methods.semantix import Semantix
from semantix.store import RunStore

STEPS = 8


@pytest.fixture
def make(backbone, tmp_path):
    def build(**overrides) -> Semantix:
        method = Semantix(num_steps=overrides.pop("num_steps", STEPS), **overrides)
        method.prepare(backbone, tmp_path / "cache")
        return method

    return build


def branches(method, sample, seed=1):
    cond = method.backbone.encode_prompt([sample.prompt or ""])
    context = method.invert(sample.content, sample.input_sha256["content"], sample.prompt or "", seed, "context")
    reference = method.invert(sample.reference, sample.input_sha256["reference"], "", seed, "reference_0")
    return cond, context, reference


def first(demo):
    return next(s for s in demo.values() if len(s.references) == 1)


def test_inversion_replay_reproduces_the_latent(make, demo):
    method = make()
    cond, context, _ = branches(method, first(demo))
    assert len(context) == STEPS and context.features is not None
    x0 = replay(context, method.eps_fn(cond, method.guidance_scale, batch_cfg=False), method.scheduler)
    assert (x0 - context.x0).abs().max() < 1e-4


def test_zero_guidance_without_adain_reproduces_the_context(make, demo):
    method = make(gamma_ref=0.0, gamma_c=0.0, gamma_reg=0.0, adain_start_step=None)
    cond, context, reference = branches(method, first(demo))
    latent, (diagnostics,) = method.sample([context], [[reference]], cond)
    assert (latent - context.x0).abs().max() < 1e-4
    assert diagnostics["grad_norm"] == [0.0] * STEPS


def test_batched_cfg_inversion_runs_one_unet_pass_per_step_and_still_retraces_the_context(make, demo):
    method = make(gamma_ref=0.0, gamma_c=0.0, gamma_reg=0.0, adain_start_step=None, batch_cfg_inversion=True)
    batches = []
    hook = method.unet.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    try:
        cond, context, reference = branches(method, first(demo))
    finally:
        hook.remove()
    assert batches == [2] * (2 * STEPS)  # uncond + cond as one batch, context and reference
    assert context.features is not None and len(context.features) == STEPS
    latent, _ = method.sample([context], [[reference]], cond)
    # The sampler's separate passes round differently from the inversion's batch of 2: measured 3.4e-5
    # to 3.8e-5 on the demo pairs at 8 steps (5.7e-5 at 60), against ~1.5e-8 with separate passes.
    assert (latent - context.x0).abs().max() < 2e-4


def test_guidance_reaches_the_sampler(make, demo):
    sample = first(demo)
    unguided = make(gamma_ref=0.0, gamma_c=0.0, gamma_reg=0.0, adain_start_step=None)
    cond, context, reference = branches(unguided, sample)
    plain, _ = unguided.sample([context], [[reference]], cond)

    def distance_to_context(**gammas):
        latent, (diagnostics,) = make(adain_start_step=None, **gammas).sample([context], [[reference]], cond)
        assert all(g > 0 for g in diagnostics["grad_norm"][1:])
        return float((latent - plain).norm())

    # Style guidance moves the output away from the context's own trajectory ...
    style_only = distance_to_context(gamma_ref=3.0, gamma_c=0.0, gamma_reg=0.0)
    assert style_only > 0.1
    # ... and the spatial term and the regulariser each pull it back towards the context. (Alone they
    # do nothing: the context's trajectory is their minimum, where their gradient vanishes.)
    assert distance_to_context(gamma_ref=3.0, gamma_c=30.0, gamma_reg=0.0) < 0.98 * style_only
    assert distance_to_context(gamma_ref=3.0, gamma_c=0.0, gamma_reg=3.0) < 0.9 * style_only


def test_energies_vanish_where_output_equals_context(make, demo):
    # float32 storage: with the default float16 the context features carry ~1e-5 of rounding.
    method = make(adain_start_step=None, feature_dtype="float32")
    cond, context, reference = branches(method, first(demo))
    _, (diagnostics,) = method.sample([context], [[reference]], cond)
    # At the first step the output latent is the context's x_T: spatial and regulariser terms are 0.
    assert diagnostics["energy_spatial"][0] == pytest.approx(0.0, abs=1e-5)
    assert diagnostics["energy_reg"][0] == pytest.approx(0.0, abs=1e-5)
    assert diagnostics["energy_style"][0] > 0.01
    terms = ("style", "spatial", "reg")
    blocks = method.feature_blocks
    assert set(diagnostics) == {"grad_norm", "guidance_ratio",
                                *(f"{kind}_{term}" for kind in ("energy", "grad_max", "clamp_fraction") for term in terms),
                                *(f"match_{kind}_{block}" for kind in ("median", "p90", "local") for block in blocks)}
    assert all(len(v) == STEPS for v in diagnostics.values())


def test_one_guided_step_lowers_the_energy(make, demo):
    method = make()
    cond, context, reference = branches(method, first(demo))
    k = STEPS // 2
    t = method.stepper.timesteps[k]
    x = context.xts[k] + 0.3 * torch.randn(context.xts[k].shape, generator=torch.Generator().manual_seed(0))

    def total_energy(latent):
        with torch.no_grad(), capture_block_outputs(method.unet, method.feature_blocks) as feats:
            method.predict(latent, t, cond)
        terms, _ = method.energies({b: f.float() for b, f in feats.items()}, [context.features[k]],
                                [[reference.features[k]]])
        return sum(method.gammas[name] * value.sum() for name, value in terms.items())

    _, guidance, _ = method.guided_prediction(x, t, k, cond, [context.features[k]], [[reference.features[k]]])
    before, after = total_energy(x), total_energy(x - 0.2 * guidance)
    assert after < before


def test_same_seed_same_output(make, demo, tmp_path):
    sample = first(demo)
    a = make()(sample, 7)
    b = make()(sample, 7)
    c = make()(sample, 8)
    assert torch.equal(a.image, b.image)
    assert a.diagnostics == b.diagnostics
    assert not torch.equal(a.image, c.image)  # a different seed draws different inversion noise


def test_multi_reference_uses_every_reference(make, demo):
    multi = next(s for s in demo.values() if len(s.references) == 2)
    single = type(multi)(multi.sample_id, multi.content, multi.references[:1], multi.prompt, multi.domain,
                         {"content": multi.input_sha256["content"], "reference": multi.input_sha256["reference_0"]})
    method = make()
    both = method(multi, 3)
    one = method(single, 3)
    assert both.image.shape == multi.content.shape
    assert not torch.equal(both.image, one.image)


def test_gamma_sweep_reuses_inversions_and_corrupt_entries_are_recomputed(make, demo, monkeypatch):
    calls = []
    real_invert = semantix_module.invert
    monkeypatch.setattr(semantix_module, "invert", lambda *a, **k: calls.append(1) or real_invert(*a, **k))
    sample = first(demo)
    reference_output = make()(sample, 5)
    assert len(calls) == 2  # context + reference
    for gamma_ref in (0.0, 1.0, 6.0):
        make(gamma_ref=gamma_ref)(sample, 5)
    assert len(calls) == 2, "a gamma sweep must not invert again"
    # Damage one cache payload: it is detected, recomputed, and the result is unchanged.
    method = make()
    payload = sorted(method.cache.root.rglob("*.pt"))[0]
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    again = method(sample, 5)
    assert method.cache.corrupt == 1 and method.cache.misses == 1 and len(calls) == 3
    assert torch.equal(again.image, reference_output.image)


def test_bad_configuration_is_a_clear_error(backbone, tmp_path):
    with pytest.raises(ValueError, match="guidance_apply"):
        Semantix(guidance_apply="score")
    with pytest.raises(ValueError, match="block_weights"):
        Semantix(block_weights=[1.0])
    with pytest.raises(ValueError, match="decoder blocks"):
        Semantix(feature_blocks=["up_blocks.9"]).prepare(backbone, tmp_path)


def test_latent_guidance_form_runs(make, demo):
    out = make(guidance_apply="latent", match_on="output")(first(demo), 0)
    assert out.image.shape == (3, 64, 64) and torch.isfinite(out.image).all()


ABLATIONS = ["semantix", "semantix_no_style", "semantix_no_spatial", "semantix_no_reg", "semantix_no_pe",
             "semantix_no_adain", "semantix_adain_once", "semantix_no_clamp"]


def test_ablation_experiment_runs_every_variant_sharing_inversions(tmp_path):
    few_steps = [f"method.{label}.num_steps=3" for label in ABLATIONS]
    adain = [f"method.{label}.adain_start_step=1" for label in ABLATIONS if label != "semantix_no_adain"]
    result = run_job(["experiment=semantix_ablation", "backbone=tiny", "dataset=demo", "dataset.limit=1", "metrics=demo",
                      *few_steps, *adain, f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "results")
    assert [run.label for run in result.runs] == ABLATIONS
    assert all((run.ok, run.failed) == (1, 0) for run in result.runs)
    records = {run.label: RunStore(run.run_dir).records()[0] for run in result.runs}
    assert records["semantix_no_style"]["image_sha256"] != records["semantix"]["image_sha256"]
    assert records["semantix_no_adain"]["image_sha256"] != records["semantix"]["image_sha256"]
    assert records["semantix_adain_once"]["image_sha256"] != records["semantix"]["image_sha256"]
    assert all(len(r["diagnostics"]["energy_style"]) == 3 for r in records.values() if r["method"] != "semantix_no_style")
    # One context and one reference inversion for all eight variants.
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2


def test_inversion_cache_key_covers_the_scheduler(make, demo, backbone, monkeypatch, tmp_path):
    import dataclasses

    sample = first(demo)
    calls = []
    original = semantix_module.invert
    monkeypatch.setattr(semantix_module, "invert", lambda *a, **k: calls.append(1) or original(*a, **k))
    make().invert(sample.content, sample.input_sha256["content"], "", 1, "context")
    make().invert(sample.content, sample.input_sha256["content"], "", 1, "context")
    assert len(calls) == 1  # the second came from the cache
    other = dataclasses.replace(backbone, scheduler_config={**backbone.scheduler_config, "beta_end": 0.02})
    method = Semantix(num_steps=STEPS)
    method.prepare(other, tmp_path / "cache")
    method.invert(sample.content, sample.input_sha256["content"], "", 1, "context")
    assert len(calls) == 2  # another schedule is another inversion


def test_sample_refuses_inversions_of_another_schedule(make, demo):
    cond, context, reference = branches(make(), first(demo))
    with pytest.raises(ValueError, match="timesteps"):
        make(num_steps=STEPS - 2).sample([context], [[reference]], cond)


def test_inversion_key_of_a_sample_without_hash_reads_the_pixels_off_the_device(make, demo):
    # A hand-built sample has no sha256: the key hashes its pixels, whatever tensor they come in
    # (on CUDA, or carrying a graph, `.numpy()` alone would raise).
    image = first(demo).content.clone().requires_grad_(True)
    inversion = make().invert(image, None, "", 1, "context")
    assert len(inversion) == STEPS
