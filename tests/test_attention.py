"""The attention-processor mechanism: installed for one call, always restored, identical to
diffusers' AttnProcessor2_0 when nothing is injected, and key/value injection reaches the output."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from semantix.backbones import build_tiny
from semantix.diffusion.attention import (
    InjectableAttnProcessor,
    Injection,
    attention_processors,
    contrasted_attention,
    self_attention_layers,
)


@pytest.fixture(scope="module")
def unet():
    return build_tiny().unet


@pytest.fixture(scope="module")
def inputs(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    emb = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    return x, emb


def run(unet, inputs, t=500):
    x, emb = inputs
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=emb).sample


def test_layer_selection_follows_the_decoder_layout(unet):
    layers = self_attention_layers(unet, [2, 3])
    assert len(layers) == 6 and all(n.endswith(".attn1") for n in layers)
    assert layers == self_attention_layers(unet, ["up_blocks.2", "up_blocks.3"])
    assert layers[0] == "up_blocks.2.attentions.0.transformer_blocks.0.attn1"
    with pytest.raises(ValueError, match="selects no self-attention layer"):
        self_attention_layers(unet, ["up_blocks.0"])


def test_processors_are_restored_after_a_call_and_after_an_exception(unet, inputs):
    before = dict(unet.attn_processors)
    layers = self_attention_layers(unet, [2, 3])
    with attention_processors(unet, {n: InjectableAttnProcessor(n) for n in layers}) as installed:
        assert all(unet.attn_processors[n + ".processor"] is installed[n] for n in layers)
        run(unet, inputs)
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(RuntimeError, match="boom"), \
            attention_processors(unet, {n: InjectableAttnProcessor(n) for n in layers}):
        raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(KeyError):
        with attention_processors(unet, {"up_blocks.9.nope": InjectableAttnProcessor()}):
            pass
    assert all(unet.attn_processors[k] is v for k, v in before.items())


def test_without_injection_it_equals_attn_processor_2_0(unet, inputs):
    # Every layer, self- and cross-attention, through the replacement vs the diffusers processor.
    names = [k.removesuffix(".processor") for k in unet.attn_processors]
    with attention_processors(unet, {n: AttnProcessor2_0() for n in names}):
        reference = run(unet, inputs)
    with attention_processors(unet, {n: InjectableAttnProcessor(n) for n in names}):
        ours = run(unet, inputs)
    assert torch.equal(ours, reference)


def run_recording(unet, procs, inputs):
    """One plain run with every processor recording its q/k/v; returns (output, recorded per layer)."""
    for p in procs.values():
        p.record = {}
    output = run(unet, inputs)
    recorded = {n: dict(p.record) for n, p in procs.items()}
    for p in procs.values():
        p.record = None
    return output, recorded


def test_record_then_inject(unet, inputs):
    layers = self_attention_layers(unet, [3])
    procs = {n: InjectableAttnProcessor(n) for n in layers}
    with attention_processors(unet, procs):
        plain, recorded = run_recording(unet, procs, inputs)
        # Re-injecting the layer's own k/v (gamma 0, T 1) changes nothing ...
        for n, p in procs.items():
            p.inject = Injection(key=recorded[n]["k"], value=recorded[n]["v"])
        same = run(unet, inputs)
        # ... other k/v (here: permuted tokens, then random) do; so does the temperature.
        for n, p in procs.items():
            k, v = recorded[n]["k"], recorded[n]["v"]
            p.inject = Injection(key=k.flip(1)[:, ::2], value=torch.randn_like(v)[:, ::2])
        swapped = run(unet, inputs)
        for p in procs.values():
            p.inject = Injection(temperature=1.5)
        sharpened = run(unet, inputs)
    assert q_shape_ok(recorded)
    assert torch.allclose(same, plain, atol=1e-5)
    assert (swapped - plain).abs().max() > 1e-3
    assert (sharpened - plain).abs().max() > 1e-4


def q_shape_ok(recorded):
    return all(r["q"].shape == r["k"].shape and r["q"].ndim == 3 for r in recorded.values())


def test_contrasted_attention_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g) for n in (5, 7, 7))
    out = contrasted_attention(q, k, v, contrast=1.67, scale=0.5, chunk_size=2)
    expected = torch.empty(2, 3, 5, 4)
    for b, h, i in itertools.product(range(2), range(3), range(5)):
        logits = [0.5 * float(q[b, h, i] @ k[b, h, j]) for j in range(7)]
        probs = torch.softmax(torch.tensor(logits), dim=0)
        mean = 1.0 / 7  # rows of a softmax sum to one
        contrasted = [min(max((float(p) - mean) * 1.67 + mean, 0.0), 1.0) for p in probs]
        expected[b, h, i] = sum(c * v[b, h, j] for j, c in enumerate(contrasted))
    assert torch.allclose(out, expected, atol=1e-5)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5)
    assert torch.allclose(contrasted_attention(q, k, v, contrast=1.0, scale=0.5), plain, atol=1e-6)


def test_kv_rows_equal_injecting_the_other_rows_keys_and_values(unet, inputs):
    # A joint batch [out, app, struct]: row 0 attending to row 1's k/v (Cross-Image Attention)
    # must equal giving row 0 those k/v explicitly.
    x, emb = inputs
    g = torch.Generator().manual_seed(2)
    batch = (torch.cat([x, torch.randn(2, *x.shape[1:], generator=g)]), emb.expand(3, -1, -1))
    layers = self_attention_layers(unet, [2, 3])
    procs = {n: InjectableAttnProcessor(n) for n in layers}
    with attention_processors(unet, procs):
        plain, recorded = run_recording(unet, procs, batch)
        for p in procs.values():
            p.inject = Injection(kv_rows=[1, 1, 2])
        by_rows = run(unet, batch)
        # Inject in the last layer only: its inputs, hence its recorded k/v, are those of the plain run.
        for p in procs.values():
            p.inject = None
        last = layers[-1]
        procs[last].inject = Injection(kv_rows=[1, 1, 2])
        one_layer_rows = run(unet, batch)
        k, v = recorded[last]["k"], recorded[last]["v"]
        procs[last].inject = Injection(key=torch.stack([k[1], k[1], k[2]]), value=torch.stack([v[1], v[1], v[2]]))
        one_layer_explicit = run(unet, batch)
    assert torch.allclose(one_layer_rows, one_layer_explicit, atol=1e-5)
    assert (by_rows[0] - plain[0]).abs().max() > 1e-3
    # a row whose source is itself keeps its own attention
    assert torch.allclose(one_layer_rows[2], plain[2], atol=1e-5)


def test_rewrite_hidden_and_contrast(unet, inputs):
    layers = self_attention_layers(unet, [2, 3])
    procs = {n: InjectableAttnProcessor(n) for n in layers}
    with attention_processors(unet, procs):
        plain = run(unet, inputs)
        for p in procs.values():
            p.inject = Injection(rewrite_hidden=lambda h: h.clone())
        identity = run(unet, inputs)
        for p in procs.values():
            p.inject = Injection(rewrite_hidden=lambda h: h.flip(1))
        flipped = run(unet, inputs)
        for p in procs.values():
            p.inject = Injection(contrast=1.67)
        contrasted = run(unet, inputs)
        for p in procs.values():
            p.inject = Injection(contrast=1.67, contrast_rows=[])
        no_rows = run(unet, inputs)
    assert torch.equal(identity, plain)
    assert (flipped - plain).abs().max() > 1e-3
    assert (contrasted - plain).abs().max() > 1e-4
    assert torch.equal(no_rows, plain)
