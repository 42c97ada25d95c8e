"""The SD1.5 checkpoint formats users have, each read from a random-weight file in the real layout.

A micro SD1.5 (diffusers' and transformers' real component classes at tiny widths) is saved as an fp16
`variant` diffusers folder and as one file in the original (LDM / CompVis) key layout of
`v1-5-pruned-emaonly.safetensors` / `.ckpt`; the loader must give back exactly the same networks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semantix.backbones.sd15 import load_sd15
from semantix.types import WeightsNotFoundError


def micro_sd_folder(path: Path, variant: str | None = None):
    """A diffusers folder of a micro SD1.5 with seeded random weights; returns it and its UNet, VAE, text encoder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from semantix.backbones.tiny import load_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, projection_dim=32))
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        module.save_pretrained(path / name, variant=variant)
    load_clip_tokenizer(path / "tokenizer")
    DDPMScheduler(beta_schedule="scaled_linear", clip_sample=False).save_pretrained(path / "scheduler")
    components = {"scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                  "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                  "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None],
                  "feature_extractor": [None, None]}
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", **components}))
    return path, unet, vae, text


# -- the original single-file layout, written from the diffusers modules (the inverse of the renaming
# diffusers' from_single_file applies; what it reads back is checked tensor for tensor below) --------
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _renamed(state: dict, pairs: list[tuple[str, str, dict | None]], prefix: str) -> dict:
    out = {}
    for source, target, inner in pairs:
        for key, value in state.items():
            if not key.startswith(source + "."):
                continue
            rest = key[len(source) + 1:]
            for old, new in (inner or {}).items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            out[f"{prefix}{target}.{rest}"] = value
    assert len(out) == len(state), "every tensor is renamed exactly once"
    return out


def unet_ldm_layout(unet) -> dict:
    state, levels, per_level = unet.state_dict(), len(unet.config.block_out_channels), unet.config.layers_per_block
    pairs = [("time_embedding.linear_1", "time_embed.0", None), ("time_embedding.linear_2", "time_embed.2", None),
             ("conv_in", "input_blocks.0.0", None), ("conv_norm_out", "out.0", None), ("conv_out", "out.2", None),
             ("mid_block.resnets.0", "middle_block.0", RESNET), ("mid_block.attentions.0", "middle_block.1", None),
             ("mid_block.resnets.1", "middle_block.2", RESNET)]
    for i in range(levels):
        for j in range(per_level):
            block = 1 + i * (per_level + 1) + j
            pairs += [(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{block}.0", RESNET),
                      (f"down_blocks.{i}.attentions.{j}", f"input_blocks.{block}.1", None)]
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (per_level + 1)}.0.op", None))
        for j in range(per_level + 1):
            block = i * (per_level + 1) + j
            attention = any(key.startswith(f"up_blocks.{i}.attentions.{j}.") for key in state)
            pairs += [(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{block}.0", RESNET),
                      (f"up_blocks.{i}.attentions.{j}", f"output_blocks.{block}.1", None)]
            if i < levels - 1 and j == per_level:
                pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{block}.{2 if attention else 1}.conv",
                              None))
    return _renamed(state, pairs, "model.diffusion_model.")


def vae_ldm_layout(vae) -> dict:
    state, levels, per_level = vae.state_dict(), len(vae.config.block_out_channels), vae.config.layers_per_block
    pairs = [("quant_conv", "quant_conv", None), ("post_quant_conv", "post_quant_conv", None)]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.conv_in", f"{part}.conv_in", None), (f"{part}.conv_out", f"{part}.conv_out", None),
                  (f"{part}.conv_norm_out", f"{part}.norm_out", None),
                  (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RESNET),
                  (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RESNET),
                  (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION)]
    for i in range(levels):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESNET)
                  for j in range(per_level)]
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", None))
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{levels - 1 - i}.block.{j}", VAE_RESNET)
                  for j in range(per_level + 1)]
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{levels - 1 - i}.upsample.conv", None))
    out = _renamed(state, pairs, "first_stage_model.")
    # The original VAE's attention projections are 1x1 convolutions.
    return {key: value[:, :, None, None] if ".mid.attn_1." in key and value.ndim == 2 else value
            for key, value in out.items()}


def ldm_checkpoint(unet, vae, text) -> dict:
    return {**unet_ldm_layout(unet), **vae_ldm_layout(vae),
            **{f"cond_stage_model.transformer.text_model.{k}": v for k, v in text.state_dict().items()}}


def assert_same_networks(backbone, unet, vae, text):
    latents, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    images, ids = torch.rand(1, 3, 64, 64) * 2 - 1, torch.tensor([[49406, 320, 1125, 49407]])
    # The same tensors; the loader sets SDPA attention processors, so outputs agree to float rounding.
    close = {"rtol": 0, "atol": 1e-6}
    with torch.no_grad():
        torch.testing.assert_close(backbone.unet(latents, 10, encoder_hidden_states=context).sample,
                                   unet(latents, 10, encoder_hidden_states=context).sample, **close)
        torch.testing.assert_close(backbone.vae.encode(images).latent_dist.mean,
                                   vae.encode(images).latent_dist.mean, **close)
        torch.testing.assert_close(backbone.text_encoder(ids)[0], text(ids)[0], **close)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_in_the_original_layout(tmp_path, suffix):
    folder, unet, vae, text = micro_sd_folder(tmp_path / "configs")
    state = {key: value.contiguous() for key, value in ldm_checkpoint(unet, vae, text).items()}
    checkpoint = tmp_path / f"v1-5-pruned-emaonly{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, checkpoint)
    else:  # a training checkpoint: the weights under "state_dict", beside plain training counters
        torch.save({"state_dict": state, "global_step": 840000}, checkpoint)
    backbone = load_sd15(str(checkpoint), device="cpu", dtype="float32", resolution=64,
                         single_file_config=str(folder))
    assert backbone.provenance["source"] == "single_file" and backbone.provenance["path"] == str(checkpoint)
    assert backbone.scheduler_config["beta_schedule"] == "scaled_linear"
    assert_same_networks(backbone, unet, vae, text)


def test_a_checkpoint_file_name_is_never_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="backbone.pretrained") as info:
        load_sd15("v1-5-pruned-emaonly.safetensors", device="cpu")
    assert "does not exist" in str(info.value) and "never looked up on the hub" in str(info.value)


def test_single_file_without_its_component_configs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTIX_OFFLINE", "1")
    _, unet, vae, text = micro_sd_folder(tmp_path / "configs")
    from safetensors.torch import save_file

    checkpoint = tmp_path / "model.safetensors"
    save_file({key: value.contiguous() for key, value in ldm_checkpoint(unet, vae, text).items()}, checkpoint)
    with pytest.raises(WeightsNotFoundError, match="backbone.single_file_config='semantix-tests/no-such-repo'"):
        load_sd15(str(checkpoint), device="cpu", single_file_config="semantix-tests/no-such-repo")


def test_fp16_variant_folder(tmp_path):
    folder, unet, vae, text = micro_sd_folder(tmp_path / "sd", variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    backbone = load_sd15(str(folder), variant="fp16", device="cpu", dtype="float32", resolution=64)
    assert backbone.provenance["variant"] == "fp16"
    assert_same_networks(backbone, unet, vae, text)
    with pytest.raises(WeightsNotFoundError, match="missing unet/diffusion_pytorch_model.safetensors"):
        load_sd15(str(folder), device="cpu")  # the full-precision files are not there


def test_dino_original_checkpoint(tmp_path, monkeypatch):
    """DINO's own file layout (facebookresearch/dino's VisionTransformer: fused qkv, blocks.N, pos_embed), at a
    small width: the names and the qkv split are what is tested, not the size."""
    from transformers import ViTConfig, ViTModel

    from semantix.metrics import dino

    monkeypatch.setattr(dino, "DINO_VITB8", {"patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                                             "num_attention_heads": 4, "intermediate_size": 37, "image_size": 32})
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(**dino.DINO_VITB8), add_pooling_layer=False).eval()
    names = {v: k for k, v in dino.DINO_NAMES.items()}
    block_names = {v: k for k, v in dino.DINO_BLOCK_NAMES.items()}
    original, state = {}, vit.state_dict()
    for key, value in state.items():
        name, _, kind = key.rpartition(".")
        if key in names:
            original[names[key]] = value
        elif name in names:
            original[f"{names[name]}.{kind}"] = value
        elif ".attention.q_proj" in key:
            index = key.split(".")[1]
            original[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(
                [state[key.replace("q_proj", part)] for part in ("q_proj", "k_proj", "v_proj")])
        elif ".attention.k_proj" not in key and ".attention.v_proj" not in key:
            index, inner = key.split(".")[1], name.split(".", 2)[2]
            original[f"blocks.{index}.{block_names[inner]}.{kind}"] = value
    path = tmp_path / "dino_vitbase8_pretrain.pth"
    torch.save(original, path)

    loaded = dino.load_dino(str(path))
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).last_hidden_state, vit(pixels).last_hidden_state, rtol=0, atol=1e-6)
    torch.save({**original, "head.weight": torch.zeros(2, 32)}, path)
    with pytest.raises(ValueError, match="not DINO's ViT checkpoint layout"):
        dino.load_dino(str(path))


def test_openai_torchscript_clip_file(tmp_path):
    """OpenAI's own CLIP release files are TorchScript archives (ViT-L-14.pt); one in that format (a small
    width, OpenAI's key names) given by path loads with exactly its tensors."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, convert_weights_to_lp

    from semantix.metrics.clip import build_embedder, is_torchscript

    torch.manual_seed(0)
    clip = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=8, image_size=32),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                quick_gelu=True).eval()
    clip._buffers.pop("attn_mask")  # OpenAI's archives keep the causal mask out of the state dict
    convert_weights_to_lp(clip)  # and hold the projection and attention weights in float16
    path = tmp_path / "ViT-tiny.pt"
    image = torch.rand(1, 3, 32, 32, dtype=torch.float16)
    torch.jit.save(torch.jit.trace_module(clip, {"encode_image": image}, check_trace=False), path)
    assert is_torchscript(path)

    embedder = build_embedder("ViT-B-32", str(path), "cpu")
    assert embedder.image_size == 32
    loaded = embedder.model.state_dict()
    for key, value in clip.state_dict().items():
        assert torch.equal(loaded[key], value.float()), key
    assert embedder.image(torch.rand(3, 40, 40)).shape == (32,)


def test_animatediff_motion_module_file(tmp_path):
    """AnimateDiff's own motion module file (mm_sd_v15_v2.ckpt layout: temporal_transformer, attention_blocks,
    norms, ff_norm, positional-encoding buffers), at a small width, loads with exactly its tensors."""
    import re

    from diffusers import MotionAdapter

    from semantix.backbones.animatediff import load_motion_adapter, motion_adapter_source

    torch.manual_seed(0)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=8, motion_max_seq_length=16)
    adapter.save_pretrained(tmp_path / "config")  # the config folder (its weights are not read)
    original = {}
    for key, value in adapter.state_dict().items():
        key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        for new, old in ((".attn1", ".attention_blocks.0"), (".attn2", ".attention_blocks.1"),
                         (".norm1", ".norms.0"), (".norm2", ".norms.1"), (".norm3", ".ff_norm")):
            key = key.replace(new, old)
        original[key] = value
        if key.endswith("attention_blocks.0.to_q.weight"):  # AnimateDiff stores its sinusoidal table too
            original[key.replace("to_q.weight", "pos_encoder.pe")] = torch.zeros(1, 16, value.shape[1])
    path = tmp_path / "mm_sd_v15_v2.ckpt"
    torch.save(original, path)

    source, found = motion_adapter_source(str(path), None, None)
    assert found["source"] == "single_file"
    loaded = load_motion_adapter(source, torch.float32, config=str(tmp_path / "config"))
    for key, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(WeightsNotFoundError, match="backbone.motion_adapter"):
        motion_adapter_source("mm_sd_v15_v2.ckpt", None, None)
