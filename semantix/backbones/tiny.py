"""`tiny`: SD1.5's structure with tiny widths and seeded random weights, built offline.

It makes every code path runnable on a CPU without network; its outputs say nothing about quality.
The tokenizer is the real CLIP BPE tokenizer (same ids as openai/clip-vit-large-patch14), built from
the merges file that open_clip ships and cached under `$SEMANTIX_CACHE/tokenizer/`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from semantix.backbones.animatediff import video_backbone
from semantix.backbones.base import SD15_SCHEDULER_CONFIG, Backbone, apply_kernel_options, finalize_modules
from semantix.checkpoints import load_state_dict_file
from semantix.io import atomic_write_bytes, sha256_bytes
from semantix.runtime import dtype_name, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
_NUM_MERGES = 49152 - 256 - 2  # as in openai/CLIP's SimpleTokenizer
# The trained tiny VAE (data_prep/train_tiny_vae.py), shipped as package data with its training record.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TINY_VAE_WEIGHTS, TINY_VAE_RECORD = "tiny_vae.safetensors", "tiny_vae.json"
SD15_SCALING_FACTOR = 0.18215  # SD1.5's VAE config; a random VAE keeps it (its latents are far from unit std)


@dataclass(frozen=True)
class RandomArchitecture:
    """Widths and depths of an SD1.5-shaped backbone built with random weights."""

    unet_widths: tuple[int, ...]
    unet_heads: int  # diffusers' `attention_head_dim` of SD1.5 configs is the number of heads
    layers_per_block: int
    cross_attention_dim: int
    vae_widths: tuple[int, ...]  # len(vae_widths) - 1 halvings: the latent downsample factor
    vae_layers_per_block: int
    text_layers: int
    text_heads: int
    norm_groups: int


TINY = RandomArchitecture(unet_widths=(32, 32, 64, 64), unet_heads=2, layers_per_block=2, cross_attention_dim=32,
                          vae_widths=(32, 64), vae_layers_per_block=1, text_layers=2, text_heads=4, norm_groups=8)
# Stable Diffusion 1.5's own sizes (its unet/vae/text_encoder configs): for timing the real architecture.
SD15 = RandomArchitecture(unet_widths=(320, 640, 1280, 1280), unet_heads=8, layers_per_block=2,
                          cross_attention_dim=768, vae_widths=(128, 256, 512, 512), vae_layers_per_block=2,
                          text_layers=12, text_heads=12, norm_groups=32)


def cache_root() -> Path:
    """`$SEMANTIX_CACHE`, default `~/.cache/semantix`."""
    return Path(os.environ.get("SEMANTIX_CACHE") or Path.home() / ".cache" / "semantix").expanduser()


def _bytes_to_unicode() -> dict[int, str]:
    """openai/CLIP's reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _open_clip_bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locate, don't import (importing open_clip is slow)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip_torch is needed for the tiny backbone's CLIP tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _build_clip_vocab() -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges exactly as openai/CLIP's SimpleTokenizer builds them (49408 tokens)."""
    lines = gzip.open(_open_clip_bpe_file()).read().decode("utf-8").split("\n")
    merges = lines[1 : _NUM_MERGES + 1]  # line 0 is a version header
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"built a CLIP vocabulary of {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def clip_tokenizer_files(folder: Path | None = None) -> Path:
    """Write `vocab.json` and `merges.txt` (Hugging Face CLIP layout) once; return their folder."""
    folder = Path(folder) if folder is not None else cache_root() / "tokenizer"
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        vocab, merges = _build_clip_vocab()
        atomic_write_bytes(merges_file, ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"))
        atomic_write_bytes(vocab_file, json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
        log.info("wrote the CLIP tokenizer files to %s", folder)
    return folder


def _tokenizer_from_folder(folder: Path):
    from transformers import CLIPTokenizer

    # Note: in transformers 5, CLIPTokenizer(vocab_file=..., merges_file=...) silently builds an
    # empty tokenizer; from_pretrained on the folder reads the two files on transformers 4 and 5.
    return CLIPTokenizer.from_pretrained(
        str(folder), model_max_length=CLIP_CONTEXT_LENGTH, local_files_only=True
    )


def load_clip_tokenizer(folder: Path | None = None):
    """The CLIP BPE tokenizer, offline: "a photo of a cat" -> [49406, 320, 1125, 539, 320, 2368, 49407]."""
    folder = clip_tokenizer_files(folder)
    try:
        tokenizer = _tokenizer_from_folder(folder)
        if len(tokenizer) == CLIP_VOCAB_SIZE:
            return tokenizer
        log.warning("the CLIP tokenizer in %s has %d tokens; rebuilding it", folder, len(tokenizer))
    except Exception as err:  # damaged files (the tokenizers library raises a bare Exception)
        log.warning("unreadable CLIP tokenizer files in %s (%s); rebuilding them", folder, err)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    tokenizer = _tokenizer_from_folder(clip_tokenizer_files(folder))
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise RuntimeError(
            f"the CLIP tokenizer in {folder} has {len(tokenizer)} tokens, not {CLIP_VOCAB_SIZE}"
        )
    return tokenizer


def build_tiny(
    resolution: int = 64,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    layers_per_block: int = 2,
    block_out_channels: tuple[int, ...] = TINY.unet_widths,
    cross_attention_dim: int = TINY.cross_attention_dim,
    channels_last: bool = False,
    compile_unet: bool = False,
    vae_sha256: str | None = None,
) -> Backbone:
    """`tiny_random` with the trained tiny VAE: images survive encode/decode; UNet and text encoder stay random.

    The VAE is `weights/tiny_vae.safetensors` (data_prep/train_tiny_vae.py; its record, with the
    data, seed and reconstruction PSNR, is `weights/tiny_vae.json`), so a latent that comes back
    unchanged (zero-guidance inversion and sampling) decodes to the content image. Nothing the
    random UNet adds means anything: outputs say nothing about quality. `vae_sha256`, when given, is a
    prefix of the VAE file's sha256 that the shipped file must match (conf/backbone/tiny.yaml names
    it, so it is part of the run identity: runs of another VAE are never resumed into).
    """
    backbone = _tiny_random_weights("tiny", resolution, seed, device, dtype, layers_per_block,
                                    block_out_channels, cross_attention_dim)
    load_tiny_vae(backbone, expected_sha256=vae_sha256)
    return apply_kernel_options(backbone, channels_last, compile_unet)


def build_tiny_random(
    resolution: int = 64,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    layers_per_block: int = 2,
    block_out_channels: tuple[int, ...] = TINY.unet_widths,
    cross_attention_dim: int = TINY.cross_attention_dim,
    channels_last: bool = False,
    compile_unet: bool = False,
) -> Backbone:
    """SD1.5-shaped backbone with tiny widths and random weights seeded by `seed`, the VAE's too.

    UNet: SD1.5's block types (3 cross-attention down blocks + 1 plain, mirrored up), 2 heads, group
    norm over 8 groups. VAE: 2 blocks, so 64 px -> a 4x32x32 latent. Text encoder: 2-layer CLIP.
    Its random VAE turns every latent into coloured noise; for tests that need weights fixed by a seed alone.
    """
    backbone = _tiny_random_weights("tiny_random", resolution, seed, device, dtype, layers_per_block,
                                    block_out_channels, cross_attention_dim)
    return apply_kernel_options(backbone, channels_last, compile_unet)


def _tiny_random_weights(name: str, resolution: int, seed: int, device: str, dtype: str, layers_per_block: int,
                         block_out_channels: tuple[int, ...], cross_attention_dim: int) -> Backbone:
    arch = replace(TINY, layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
                   unet_widths=tuple(int(c) for c in block_out_channels),
                   norm_groups=math.gcd(8, *block_out_channels))
    return build_random(arch, name, resolution, seed, device, dtype)


class DamagedWeightsError(ValueError):
    """A shipped weights file does not match the sha256 its training record states."""


def tiny_vae_record(folder: Path = WEIGHTS_DIR) -> dict:
    """The trained tiny VAE's training record (data, seed, steps, PSNR, scaling factor, weights sha256)."""
    return json.loads((folder / TINY_VAE_RECORD).read_text(encoding="utf-8"))


def load_tiny_vae(backbone: Backbone, folder: Path = WEIGHTS_DIR, expected_sha256: str | None = None) -> None:
    """Put the trained tiny VAE into `backbone` (weights, scaling factor), after checking its sha256
    against its record and, if given, against `expected_sha256` (a prefix).

    The provenance then names the file, its sha256 and the backbone's label (`weights_label`).
    """
    record = tiny_vae_record(folder)
    if expected_sha256 is not None and not record["weights_sha256"].startswith(expected_sha256):
        raise ValueError(
            f"backbone.vae_sha256={expected_sha256} names another tiny VAE than the one in {folder} "
            f"(sha256 {record['weights_sha256'][:12]}...): set backbone.vae_sha256 to that, or reinstall the "
            "semantix whose VAE the config names"
        )
    path = folder / record["weights_file"]
    digest = sha256_bytes(path.read_bytes())
    if digest != record["weights_sha256"]:
        raise DamagedWeightsError(
            f"{path} is damaged or was replaced: its sha256 is {digest}, its training record "
            f"({folder / TINY_VAE_RECORD}) says {record['weights_sha256']}. Reinstall semantix, or retrain "
            f"it with `python -m data_prep.train_tiny_vae --out {folder}`."
        )
    state = load_state_dict_file(path, f"{backbone.name} backbone's VAE")
    backbone.vae.load_state_dict(state, strict=True)
    backbone.vae.register_to_config(scaling_factor=record["scaling_factor"])
    seed = backbone.provenance["seed"]
    backbone.provenance.update(
        weights=f"VAE trained ({record['weights_file']}); UNet and text encoder random (seed {seed})",
        weights_label=f"{backbone.name}: trained 64 px VAE, random UNet: not a quality result",
        vae_weights={"file": record["weights_file"], "sha256": digest, "scaling_factor": record["scaling_factor"],
                     "demo_content_psnr_db_mean": record["demo_content_psnr_db_mean"]},
    )


def build_tiny_video(seed: int = 0, channels_last: bool = False, compile_unet: bool = False,
                     **tiny_options) -> Backbone:
    """`tiny` with AnimateDiff motion modules: a `UNetMotionModel` with tiny widths and random weights.

    The video counterpart of `build_tiny`, which builds its image part (trained VAE, random UNet) from
    the same keys (`tiny_options`: resolution, device, dtype, widths ...) and seed; for CPU tests of the
    video paths, its outputs say nothing about quality.
    """
    image_backbone = build_tiny(seed=seed, **tiny_options)
    return apply_kernel_options(with_random_motion_modules(image_backbone, "tiny_video", seed), channels_last,
                                compile_unet)


def build_sd15_random(resolution: int = 512, seed: int = 0, device: str = "auto", dtype: str = "auto",
                      channels_last: bool = False, compile_unet: bool = False) -> Backbone:
    """Stable Diffusion 1.5's full architecture with random weights: real cost, meaningless outputs.

    For timing and memory benchmarks on machines without the weights (see benchmarks/).
    """
    return apply_kernel_options(build_random(SD15, "sd15_random", resolution, seed, device, dtype), channels_last,
                                compile_unet)


def build_animatediff_random(seed: int = 0, channels_last: bool = False, compile_unet: bool = False,
                             **sd15_options) -> Backbone:
    """AnimateDiff's full architecture (SD1.5 + a v1-5-2-sized motion adapter) with random weights.

    For timing and memory benchmarks of the video path on machines without the weights;
    `sd15_options` as `build_sd15_random`'s (resolution, device, dtype).
    """
    image_backbone = build_sd15_random(seed=seed, **sd15_options)
    return apply_kernel_options(with_random_motion_modules(image_backbone, "animatediff_random", seed),
                                channels_last, compile_unet)


def motion_adapter_config(unet_config) -> dict:
    """A `MotionAdapter` config matching an image UNet's config (AnimateDiff v1-5-2's layout, its widths)."""
    return {
        "block_out_channels": tuple(unet_config.block_out_channels),
        "motion_layers_per_block": unet_config.layers_per_block,
        "motion_mid_block_layers_per_block": 1,
        "motion_num_attention_heads": unet_config.attention_head_dim,
        "motion_norm_num_groups": unet_config.norm_num_groups,
        "motion_max_seq_length": 32,
        "use_motion_mid_block": True,
    }


def with_random_motion_modules(image_backbone: Backbone, name: str, seed: int) -> Backbone:
    """`image_backbone` plus a random `MotionAdapter` seeded by `seed`: a video backbone (`UNetMotionModel`)."""
    from diffusers import MotionAdapter

    adapter_config = motion_adapter_config(image_backbone.unet.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = MotionAdapter(**adapter_config)
    return video_backbone(image_backbone, adapter, name, {"motion_adapter": _json_ready(adapter_config)},
                          beta_schedule="linear")


def make_vae(arch: RandomArchitecture, resolution: int, scaling_factor: float = SD15_SCALING_FACTOR):
    """`arch`'s `AutoencoderKL`, its weights drawn from the global RNG (SD1.5's block types, 4 latent channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(arch.vae_widths),
        up_block_types=("UpDecoderBlock2D",) * len(arch.vae_widths),
        block_out_channels=arch.vae_widths,
        layers_per_block=arch.vae_layers_per_block,
        latent_channels=4,
        norm_num_groups=min(arch.norm_groups, min(arch.vae_widths)),
        sample_size=resolution,
        scaling_factor=scaling_factor,
    )


def build_random(arch: RandomArchitecture, name: str, resolution: int, seed: int, device: str, dtype: str) -> Backbone:
    """Build UNet, VAE and CLIP text encoder of `arch` with weights seeded by `seed` (global RNG untouched)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextConfig, CLIPTextModel

    vae_factor = 2 ** (len(arch.vae_widths) - 1)
    multiple = vae_factor * 2 ** (len(arch.unet_widths) - 1)
    if resolution % multiple:
        raise ValueError(f"{name} backbone: resolution must be a multiple of {multiple}, got {resolution}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // vae_factor,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * (len(arch.unet_widths) - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(arch.unet_widths) - 1),
            block_out_channels=arch.unet_widths,
            layers_per_block=arch.layers_per_block,
            attention_head_dim=arch.unet_heads,
            norm_num_groups=arch.norm_groups,
            cross_attention_dim=arch.cross_attention_dim,
        )
        vae = make_vae(arch, resolution)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=CLIP_VOCAB_SIZE,
                hidden_size=arch.cross_attention_dim,
                intermediate_size=4 * arch.cross_attention_dim,
                projection_dim=arch.cross_attention_dim,
                num_hidden_layers=arch.text_layers,
                num_attention_heads=math.gcd(arch.text_heads, arch.cross_attention_dim),
                max_position_embeddings=CLIP_CONTEXT_LENGTH,
                hidden_act="quick_gelu",
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
    unet.set_attn_processor(AttnProcessor2_0())
    finalize_modules(unet, vae, text_encoder, device=torch_device, dtype=torch_dtype)
    return Backbone(
        name=name,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(),
        scheduler_config=dict(SD15_SCHEDULER_CONFIG),
        resolution=resolution,
        device=torch_device,
        dtype=torch_dtype,
        random_weights=True,
        provenance={
            "backbone": name,
            "pretrained": None,
            "revision": None,
            "weights": f"random (seed {seed})",
            "random_weights": True,
            "seed": seed,
            "dtype": dtype_name(torch_dtype),
            "device": str(torch_device),
            "resolution": resolution,
            "architecture": _json_ready(asdict(arch)),
            "tokenizer": "openai CLIP BPE, built from open_clip's bpe_simple_vocab_16e6.txt.gz",
        },
    )


def _json_ready(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
