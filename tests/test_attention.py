"""The attention-processor mechanism: installed for one call, always restored, identical to
diffusers' AttnProcessor2_0 when nothing is injected, and key/value injection reaches the output."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from semantix.backbones import build_tiny
from semantix.diffusion.attention import (
    InjectableAttnProcessor,
    Injection,
    attention_processors,
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


def test_record_then_inject(unet, inputs):
    layers = self_attention_layers(unet, [3])
    procs = {n: InjectableAttnProcessor(n) for n in layers}
    with attention_processors(unet, procs):
        for p in procs.values():
            p.record = {}
        plain = run(unet, inputs)
        recorded = {n: dict(p.record) for n, p in procs.items()}
        for p in procs.values():
            p.record = None
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
