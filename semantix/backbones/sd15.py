"""`sd15`: Stable Diffusion 1.5 from a Hugging Face id or a local diffusers folder.

Only the files the harness needs are fetched (no safety checker, no .ckpt). Offline, missing weights
raise `WeightsNotFoundError` naming the config key `backbone.pretrained` and the files expected.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semantix.backbones.base import SD15_SCHEDULER_CONFIG, Backbone, apply_kernel_options, finalize_modules
from semantix.checkpoints import refusing_pickled_code
from semantix.runtime import dtype_name, hub_downloads_allowed, resolve_device, resolve_dtype
from semantix.types import WeightsNotFoundError

log = logging.getLogger(__name__)

DEFAULT_PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# Each entry: the accepted alternatives for one required file (the first is the one we download).
EXPECTED_FILES: tuple[tuple[str, ...], ...] = (
    ("model_index.json",),
    ("unet/config.json",),
    ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    ("vae/config.json",),
    ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
    ("text_encoder/config.json",),
    ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
    ("tokenizer/vocab.json", "tokenizer/tokenizer.json"),
    ("tokenizer/merges.txt", "tokenizer/tokenizer.json"),
)
_DOWNLOAD_PATTERNS = [
    alternatives[0] for alternatives in EXPECTED_FILES if "tokenizer/" not in alternatives[0]
]
_DOWNLOAD_PATTERNS += ["tokenizer/*", "scheduler/scheduler_config.json"]
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def _missing_files(folder: Path, expected: tuple[tuple[str, ...], ...] = EXPECTED_FILES) -> list[str]:
    return [alts[0] for alts in expected if not any((folder / name).is_file() for name in alts)]


def _not_found(pretrained: str, tried: list[str]) -> WeightsNotFoundError:
    expected = "\n".join(f"    {' or '.join(alts)}" for alts in EXPECTED_FILES)
    attempts = "\n".join(f"  - {line}" for line in tried)
    include = " ".join(f'"{pattern}"' for pattern in _DOWNLOAD_PATTERNS)
    return WeightsNotFoundError(
        f"Stable Diffusion 1.5 weights not found for backbone.pretrained={pretrained!r}.\n"
        f"Tried:\n{attempts}\n"
        f"Expected a diffusers folder (or Hugging Face repository) containing:\n{expected}\n"
        "Fix: on a machine with network, download the weights\n"
        f"    huggingface-cli download {DEFAULT_PRETRAINED} --local-dir /path/to/sd15 --include {include}\n"
        "(`hf download ...` with recent huggingface_hub), copy the folder here if needed, and set "
        "backbone.pretrained=/path/to/sd15; or fill the Hugging Face cache and unset SEMANTIX_OFFLINE / HF_HUB_OFFLINE."
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def resolve_weights(
    pretrained: str,
    revision: str | None = None,
    local_files_only: bool | None = None,
    expected: tuple[tuple[str, ...], ...] = EXPECTED_FILES,
    patterns: list[str] = _DOWNLOAD_PATTERNS,
    not_found: Callable[[str, list[str]], WeightsNotFoundError] = _not_found,
) -> tuple[Path, dict[str, Any]]:
    """The local diffusers folder for `pretrained` (a folder, or a hub id via the HF cache / hub).

    `expected`: the files the folder must hold (alternatives per entry), `patterns`: what to fetch
    from the hub, `not_found(pretrained, tried)`: the error to raise (SD1.5's by default).
    Returns the folder and provenance facts (source, commit). Raises WeightsNotFoundError.
    """
    path = Path(pretrained).expanduser()
    if path.is_dir() or not HUB_ID.fullmatch(pretrained):
        if not path.is_dir():
            raise not_found(pretrained, [f"local folder {path}: does not exist"])
        missing = _missing_files(path, expected)
        if missing:
            raise not_found(pretrained, [f"local folder {path}: missing {', '.join(missing)}"])
        if revision:
            log.warning("backbone.revision=%r is ignored for the local folder %s", revision, path)
        commit = path.name if path.parent.name == "snapshots" else None  # inside an HF cache
        return path, {"source": "local", "path": str(path.resolve()), "commit": commit}

    from huggingface_hub import snapshot_download

    tried = [f"local folder ./{pretrained}: does not exist"]
    if local_files_only is None:  # the cache first, then the hub when downloads are allowed
        attempts = [True, False] if hub_downloads_allowed() else [True]
    else:
        attempts = [bool(local_files_only)]
    for local_only in attempts:
        where = "Hugging Face cache" if local_only else "Hugging Face Hub"
        if not local_only:
            log.info("downloading %s (revision %s) into the Hugging Face cache", pretrained, revision or "main")
        try:
            folder = Path(
                snapshot_download(
                    pretrained,
                    revision=revision,
                    allow_patterns=patterns,
                    local_files_only=local_only,
                )
            )
        except Exception as err:  # offline, unknown repo, gated, no network: all mean "not here"
            tried.append(f"{where} ({pretrained}, revision {revision or 'main'}): {_first_line(err)}")
            continue
        missing = _missing_files(folder, expected)
        if not missing:
            return folder, {"source": "hub", "path": str(folder), "commit": folder.name}
        tried.append(f"{where} snapshot {folder}: missing {', '.join(missing)}")
    if attempts == [True]:
        tried.append("the Hub was not contacted (local_files_only=true, SEMANTIX_OFFLINE / HF_HUB_OFFLINE set, "
                     "or the hub unreachable)")
    raise not_found(pretrained, tried)


def _scheduler_config(folder: Path) -> tuple[dict[str, Any], str]:
    """SD1.5's schedule, updated with the folder's scheduler_config.json values for the same keys."""
    config = dict(SD15_SCHEDULER_CONFIG)
    file = folder / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        return config, "SD1.5 defaults"
    on_disk = json.loads(file.read_text(encoding="utf-8"))
    config.update({key: on_disk[key] for key in config if key in on_disk})
    return config, "scheduler/scheduler_config.json"


def load_sd15(
    pretrained: str = DEFAULT_PRETRAINED,
    revision: str | None = None,
    resolution: int = 512,
    device: str = "auto",
    dtype: str = "auto",
    local_files_only: bool | None = None,
    channels_last: bool = False,
    compile_unet: bool = False,
) -> Backbone:
    """Load SD1.5's UNet, VAE, text encoder, tokenizer and noise schedule as a Backbone.

    `pretrained`: hub id or local diffusers folder. `dtype="auto"`: float16 on CUDA, float32 on CPU.
    `local_files_only=None`: the HF cache, then the hub when `semantix.runtime.hub_downloads_allowed()`.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextModel, CLIPTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    folder, found = resolve_weights(str(pretrained), revision, local_files_only)
    log.info("loading SD1.5 from %s (%s, %s)", folder, dtype_name(torch_dtype), torch_device)

    # low_cpu_mem_usage needs accelerate; without it diffusers falls back with a warning
    fast_init = importlib.util.find_spec("accelerate") is not None
    # diffusers and transformers read .bin files with weights_only=True: a pickle that would run code
    # is refused (UnsafeCheckpointError), never executed.
    with refusing_pickled_code("backbone.pretrained", folder):
        unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", torch_dtype=torch_dtype, low_cpu_mem_usage=fast_init
        )
        vae = AutoencoderKL.from_pretrained(
            folder, subfolder="vae", torch_dtype=torch_dtype, low_cpu_mem_usage=fast_init
        )
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch_dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    max_positions = text_encoder.config.max_position_embeddings
    if tokenizer.model_max_length > max_positions:  # a tokenizer folder without tokenizer_config.json
        tokenizer.model_max_length = max_positions
    unet.set_attn_processor(AttnProcessor2_0())  # SDPA (also diffusers' default with torch 2)
    finalize_modules(unet, vae, text_encoder, device=torch_device, dtype=torch_dtype)
    scheduler_config, scheduler_source = _scheduler_config(folder)

    backbone = Backbone(
        name="sd15",
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        resolution=resolution,
        device=torch_device,
        dtype=torch_dtype,
        random_weights=False,
        provenance={
            "backbone": "sd15",
            "pretrained": str(pretrained),
            "revision": revision,
            "commit": found["commit"],
            "source": found["source"],
            "path": found["path"],
            "weights": "pretrained",
            "dtype": dtype_name(torch_dtype),
            "device": str(torch_device),
            "resolution": resolution,
            "scheduler_config": scheduler_source,
        },
    )
    return apply_kernel_options(backbone, channels_last, compile_unet)


def save_as_diffusers_folder(backbone: Backbone, path: str | Path) -> Path:
    """Write `backbone` as a Stable Diffusion diffusers folder that `load_sd15(pretrained=path)` reads.

    Layout: model_index.json, unet/, vae/, text_encoder/, tokenizer/ (vocab.json, merges.txt and
    tokenizer.json), scheduler/ (a DDPMScheduler config). Safety checker and feature extractor: none.
    """
    import diffusers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone.unet.save_pretrained(path / "unet")
    backbone.vae.save_pretrained(path / "vae")
    backbone.text_encoder.save_pretrained(path / "text_encoder")
    backbone.tokenizer.save_pretrained(path / "tokenizer")
    backend = getattr(backbone.tokenizer, "backend_tokenizer", None)
    if backend is not None:  # vocab.json + merges.txt, as in the SD1.5 repository
        backend.model.save(str(path / "tokenizer"))
    backbone.make_scheduler("ddpm").save_pretrained(path / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n", encoding="utf-8")
    return path
