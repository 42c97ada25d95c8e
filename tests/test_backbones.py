"""The backbone package: the tiny backbones (trained VAE + random UNet, and all-random), their offline CLIP
tokenizer, the SD1.5 loader. The trained VAE itself: tests/test_tiny_vae.py."""

from __future__ import annotations

import json

import pytest
import torch

from semantix.backbones import Backbone, build_tiny, build_tiny_random, load_sd15, save_as_diffusers_folder
from semantix.backbones.tiny import load_clip_tokenizer, tiny_vae_record
from semantix.runtime import resolve_device, resolve_dtype
from semantix.types import WeightsNotFoundError

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # openai CLIP ids of "a photo of a cat"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Backbone:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMANTIX_CACHE", str(tmp_path_factory.mktemp("semantix-cache")))
        return build_tiny()


def _weights(backbone: Backbone) -> dict[str, torch.Tensor]:
    modules = {"unet": backbone.unet, "vae": backbone.vae, "text_encoder": backbone.text_encoder}
    return {
        f"{name}.{key}": value
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }


# --- tokenizer ------------------------------------------------------------------------------------


def test_tokenizer_matches_openai_clip(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTIX_CACHE", str(tmp_path))
    tokenizer = load_clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert (tmp_path / "tokenizer" / "vocab.json").is_file()
    assert (tmp_path / "tokenizer" / "merges.txt").is_file()

    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    for text in ["Van Gogh's Starry Night, oil on canvas!", "a 3D render of a café   at dusk"]:
        assert tokenizer(text).input_ids == [49406, *reference.encode(text), 49407]

    padded = tokenizer(["a cat"], padding="max_length", truncation=True, max_length=77).input_ids[0]
    assert len(padded) == 77 and padded[:4] == [49406, 320, 2368, 49407]


def test_tokenizer_cache_is_reused_and_repaired(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTIX_CACHE", str(tmp_path))
    load_clip_tokenizer()
    files = [tmp_path / "tokenizer" / name for name in ("vocab.json", "merges.txt")]
    stamps = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]
    assert load_clip_tokenizer()("a photo of a cat").input_ids == CAT_IDS
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == stamps  # not rewritten
    assert not [p for p in (tmp_path / "tokenizer").iterdir() if p.name.startswith(".")]  # no temp files left

    files[0].write_text('{"broken": 0', encoding="utf-8")  # a damaged cache is rebuilt
    assert load_clip_tokenizer()("a photo of a cat").input_ids == CAT_IDS


# --- tiny backbone --------------------------------------------------------------------------------


def test_tiny_random_is_deterministic_by_seed():
    rng_state = torch.get_rng_state()
    first, again, other = (
        _weights(build_tiny_random(seed=0)),
        _weights(build_tiny_random(seed=0)),
        _weights(build_tiny_random(seed=1)),
    )
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    for prefix in ("unet.conv_in.", "vae.encoder.conv_in.", "text_encoder."):
        key = next(k for k in first if k.startswith(prefix) and k.endswith("weight") and "norm" not in k)
        assert not torch.equal(first[key], other[key]), key


def test_tiny_structure_and_metadata(tiny):
    assert tiny.name == "tiny" and tiny.random_weights
    assert tiny.device == torch.device("cpu") and tiny.dtype == torch.float32
    assert tiny.resolution == 64 and tiny.latent_downsample == 2 and tiny.latent_size == 32
    assert tiny.latent_channels == 4 and tiny.vae.config.scaling_factor == tiny_vae_record()["scaling_factor"]
    # SD1.5's block layout: 3 attention layers per decoder block in up_blocks 1-3
    self_attn = [name for name in tiny.unet.attn_processors if name.endswith("attn1.processor")]
    assert sum(name.startswith("up_blocks.") for name in self_attn) == 9
    assert len(self_attn) == 16  # 6 down + 1 mid + 9 up, as in SD1.5
    assert not any(p.requires_grad for p in tiny.unet.parameters())
    prov = json.loads(json.dumps(tiny.provenance))
    assert prov["weights"] == "VAE trained (tiny_vae.safetensors); UNet and text encoder random (seed 0)"
    assert prov["backbone"] == "tiny" and prov["vae_weights"]["sha256"] == tiny_vae_record()["weights_sha256"]
    assert prov["dtype"] == "float32" and prov["device"] == "cpu"
    assert "unet=" not in repr(tiny)  # repr stays short


def test_tiny_unet_forward(tiny):
    latents = torch.randn(2, 4, tiny.latent_size, tiny.latent_size)
    context = tiny.encode_prompt(["a photo of a cat", "a dog"])
    with torch.no_grad():
        out = tiny.unet(latents, torch.tensor([999, 10]), encoder_hidden_states=context).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()


def test_tiny_dtype_and_device_options(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTIX_CACHE", str(tmp_path))
    backbone = build_tiny(dtype="bfloat16", device="auto")
    assert backbone.dtype == torch.bfloat16 and backbone.unet.dtype == torch.bfloat16
    assert backbone.device == resolve_device("auto")
    with pytest.raises(ValueError, match="multiple of 16"):
        build_tiny(resolution=40)
    with pytest.raises(TypeError, match="resolutoin"):  # a config typo is an error, not ignored
        build_tiny(resolutoin=64)


# --- Backbone methods -----------------------------------------------------------------------------


def test_encode_decode_shapes(tiny):
    images = torch.rand(2, 3, 64, 64)
    latents = tiny.encode_images(images)
    assert latents.shape == (2, 4, 32, 32) and latents.dtype == torch.float32
    assert torch.equal(latents, tiny.encode_images(images))  # posterior mean: deterministic
    decoded = tiny.decode_latents(latents)
    assert decoded.shape == (2, 3, 64, 64) and decoded.dtype == torch.float32
    assert decoded.device.type == "cpu" and 0 <= decoded.min() and decoded.max() <= 1
    tiny.encode_images(images.clamp(0, 1) * (1 + 1e-3))  # tiny overshoot (resampling) is tolerated


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(1, 3, 64, 64) * 2 - 1, r"\[-1, 1\]"),
        (torch.rand(1, 3, 64, 64) * 255, "255"),
        ((torch.rand(1, 3, 64, 64) * 255).to(torch.uint8), "255"),
        (torch.rand(3, 64, 64), r"\(B, 3, H, W\)"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
    ],
)
def test_encode_images_rejects_bad_input(tiny, images, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode_images(images)


def test_encode_prompt(tiny):
    embeddings = tiny.encode_prompt(["a photo of a cat", "an oil painting"])
    assert embeddings.shape == (2, 77, 32) and embeddings.dtype == torch.float32
    assert torch.equal(tiny.encode_prompt("a photo of a cat")[0], embeddings[0])


def test_make_scheduler(tiny):
    from diffusers import DDIMScheduler, DDPMScheduler

    ddpm, ddim = tiny.make_scheduler(), tiny.make_scheduler("ddim")
    assert type(ddpm) is DDPMScheduler and type(ddim) is DDIMScheduler
    assert tiny.make_scheduler() is not ddpm  # fresh each time
    for scheduler in (ddpm, ddim):
        assert scheduler.config.num_train_timesteps == 1000
        assert scheduler.config.beta_schedule == "scaled_linear"
        assert scheduler.config.beta_start == 0.00085 and scheduler.config.beta_end == 0.012
        assert scheduler.config.steps_offset == 1 and scheduler.config.timestep_spacing == "leading"
        assert scheduler.config.prediction_type == "epsilon" and not scheduler.config.clip_sample
    assert ddim.config.set_alpha_to_one is False
    ddim.set_timesteps(50)
    assert ddim.timesteps[0] == 981 and ddim.timesteps[-1] == 1  # SD1.5's leading spacing + offset
    with pytest.raises(ValueError, match="ddpm, ddim"):
        tiny.make_scheduler("euler")


def test_resolve_dtype():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("float16") == torch.float16
    with pytest.raises(ValueError, match="float32"):
        resolve_dtype("float64")


# --- SD1.5 loader ---------------------------------------------------------------------------------


def test_sd15_missing_local_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="backbone.pretrained") as info:
        load_sd15(pretrained=str(tmp_path / "nowhere"), device="cpu")
    message = str(info.value)
    assert "model_index.json" in message and "unet/diffusion_pytorch_model.safetensors" in message
    assert "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert isinstance(info.value, FileNotFoundError)


def test_sd15_incomplete_local_folder(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="missing model_index.json"):
        load_sd15(pretrained=str(tmp_path), device="cpu")


def test_sd15_hub_id_offline_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="backbone.pretrained") as info:
        load_sd15(pretrained="semantix-tests/no-such-model", device="cpu")
    assert "Hugging Face cache" in str(info.value) and "not contacted" in str(info.value)


def test_sd15_round_trip_through_diffusers_folder(tiny, tmp_path):
    folder = save_as_diffusers_folder(tiny, tmp_path / "sd")
    for name in (
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "text_encoder/model.safetensors",
        "scheduler/scheduler_config.json",
    ):
        assert (folder / name).is_file(), name

    loaded = load_sd15(pretrained=str(folder), resolution=64, device="cpu", dtype="float32")
    assert loaded.name == "sd15" and not loaded.random_weights and loaded.latent_size == 32
    assert loaded.provenance["source"] == "local" and loaded.provenance["weights"] == "pretrained"
    json.dumps(loaded.provenance)
    assert loaded.scheduler_config == tiny.scheduler_config
    assert loaded.tokenizer("a photo of a cat").input_ids == CAT_IDS

    context = tiny.encode_prompt(["a photo of a cat", "a dog"])
    assert torch.equal(loaded.encode_prompt(["a photo of a cat", "a dog"]), context)
    latents, t = torch.randn(2, 4, 32, 32), torch.tensor([500, 20])
    with torch.no_grad():
        expected = tiny.unet(latents, t, encoder_hidden_states=context).sample
        actual = loaded.unet(latents, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.encode_images(images), tiny.encode_images(images), rtol=0, atol=1e-6)


def _unet_output(backbone):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g)
    with torch.no_grad():
        return backbone.unet(x, 500, encoder_hidden_states=backbone.encode_prompt(["a", "b"])).sample


def test_channels_last_computes_the_same(tiny):
    fast = build_tiny(channels_last=True)
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(_unet_output(fast), _unet_output(tiny), atol=1e-5)
    assert fast.provenance == tiny.provenance  # a speed option: same cache keys


@pytest.mark.slow
def test_compiled_unet_computes_the_same_and_keeps_processors_working(tiny):
    from semantix.diffusion.attention import (
        InjectableAttnProcessor,
        attention_processors,
        self_attention_layers,
    )

    fast = build_tiny(compile_unet=True)
    assert torch.allclose(_unet_output(fast), _unet_output(tiny), atol=1e-5)
    layers = self_attention_layers(fast.unet, [3])
    with attention_processors(fast.unet, {n: InjectableAttnProcessor(n) for n in layers}):
        assert torch.allclose(_unet_output(fast), _unet_output(tiny), atol=1e-5)
