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
# A hub id ("org/name" or a bare name) that is not a file name: "v1-5-pruned-emaonly.safetensors" is a
# file that does not exist here, never a repository to look up.
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def expected_files(variant: str | None = None) -> tuple[tuple[str, ...], ...]:
    """EXPECTED_FILES, with the weight files of `variant` when set ("fp16": unet/diffusion_pytorch_model.fp16.safetensors,
    ..., as diffusers' `variant=` names them)."""
    if not variant:
        return EXPECTED_FILES

    def named(name: str) -> str:
        stem, _, extension = name.rpartition(".")
        return f"{stem}.{variant}.{extension}" if extension in ("safetensors", "bin") else name

    return tuple(tuple(named(name) for name in alternatives) for alternatives in EXPECTED_FILES)


def download_patterns(expected: tuple[tuple[str, ...], ...]) -> list[str]:
    """What to fetch from the hub for a diffusers folder with the `expected` files (the first alternatives)."""
    patterns = [alternatives[0] for alternatives in expected if "tokenizer/" not in alternatives[0]]
    return [*patterns, "tokenizer/*", "scheduler/scheduler_config.json"]


def is_single_file(pretrained: str) -> bool:
    """A single-file checkpoint (.safetensors, .ckpt, ...), by its name: such a value is never a hub id."""
    return Path(pretrained).suffix in SINGLE_FILE_SUFFIXES


def _missing_files(folder: Path, expected: tuple[tuple[str, ...], ...] = EXPECTED_FILES) -> list[str]:
    return [alts[0] for alts in expected if not any((folder / name).is_file() for name in alts)]


def _not_found(pretrained: str, tried: list[str]) -> WeightsNotFoundError:
    expected = "\n".join(f"    {' or '.join(alts)}" for alts in EXPECTED_FILES)
    attempts = "\n".join(f"  - {line}" for line in tried)
    include = " ".join(f'"{pattern}"' for pattern in download_patterns(EXPECTED_FILES))
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
    patterns: list[str] | None = None,
    not_found: Callable[[str, list[str]], WeightsNotFoundError] = _not_found,
) -> tuple[Path, dict[str, Any]]:
    """The local diffusers folder for `pretrained` (a folder, or a hub id via the HF cache / hub).

    `expected`: the files the folder must hold (alternatives per entry), `patterns`: what to fetch
    from the hub (default: `download_patterns(expected)`), `not_found(pretrained, tried)`: the error to
    raise (SD1.5's by default).
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
                    allow_patterns=patterns or download_patterns(expected),
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


def _scheduler_file(folder: Path) -> tuple[dict[str, Any], str]:
    """The folder's scheduler_config.json (its values for SD1.5's schedule keys override the defaults)."""
    file = folder / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        return {}, "SD1.5 defaults"
    return json.loads(file.read_text(encoding="utf-8")), "scheduler/scheduler_config.json"


def _load_folder(folder: Path, torch_dtype, variant: str | None) -> tuple:
    """UNet, VAE, text encoder and tokenizer of a diffusers folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # low_cpu_mem_usage needs accelerate; without it diffusers falls back with a warning
    fast_init = importlib.util.find_spec("accelerate") is not None
    # diffusers and transformers read .bin files with weights_only=True: a pickle that would run code
    # is refused (UnsafeCheckpointError), never executed.
    with refusing_pickled_code("backbone.pretrained", folder):
        unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", torch_dtype=torch_dtype, low_cpu_mem_usage=fast_init, variant=variant
        )
        vae = AutoencoderKL.from_pretrained(
            folder, subfolder="vae", torch_dtype=torch_dtype, low_cpu_mem_usage=fast_init, variant=variant
        )
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch_dtype,
                                                     variant=variant)
    return unet, vae, text_encoder, CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")


def _load_single_file(path: Path, config: str, torch_dtype, local_files_only: bool | None) -> tuple:
    """UNet, VAE, text encoder, tokenizer, scheduler config and provenance facts of a single-file
    checkpoint, through diffusers' `from_single_file` (its weights read as tensors only)."""
    from diffusers import StableDiffusionPipeline

    if not path.is_file():
        raise _not_found(str(path), [f"single-file checkpoint {path}: does not exist (a file name is never "
                                     "looked up on the hub; give its full path)"])
    offline_only = not hub_downloads_allowed() if local_files_only is None else bool(local_files_only)
    log.info("loading SD1.5 from the single file %s (component configs: %s)", path, config)
    with refusing_pickled_code("backbone.pretrained", path):
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=config, torch_dtype=torch_dtype, local_files_only=offline_only,
                safety_checker=None, requires_safety_checker=False,
            )
        except OSError as e:  # the component configs are not here (offline) or not on the hub
            raise WeightsNotFoundError(
                f"backbone.pretrained={str(path)!r} is a single-file checkpoint; reading it needs the SD1.5 "
                f"component configs and tokenizer of backbone.single_file_config={config!r} (a hub id in the "
                f"Hugging Face cache, or a diffusers folder), which were not found ({_first_line(e)}). Fix: "
                f"`huggingface-cli download {DEFAULT_PRETRAINED} --exclude '*.safetensors' '*.bin' '*.ckpt'` on "
                "a machine with network, or set backbone.single_file_config=/path/to/diffusers/folder."
            ) from e
    found = {"source": "single_file", "path": str(path.resolve()), "commit": None}
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config), found


def load_sd15(
    pretrained: str = DEFAULT_PRETRAINED,
    revision: str | None = None,
    resolution: int = 512,
    device: str = "auto",
    dtype: str = "auto",
    local_files_only: bool | None = None,
    channels_last: bool = False,
    compile_unet: bool = False,
    variant: str | None = None,
    single_file_config: str = DEFAULT_PRETRAINED,
) -> Backbone:
    """Load SD1.5's UNet, VAE, text encoder, tokenizer and noise schedule as a Backbone.

    `pretrained`: hub id, local diffusers folder, or a single-file checkpoint (`.safetensors`, `.ckpt`:
    the original LDM layout, read by diffusers' `from_single_file`, with the component configs and
    tokenizer of `single_file_config`, a hub id or diffusers folder). `variant`: the weight files'
    variant ("fp16": `*.fp16.safetensors`, as diffusers saves them). `dtype="auto"`: float16 on CUDA,
    float32 on CPU. `local_files_only=None`: the HF cache, then the hub when
    `semantix.runtime.hub_downloads_allowed()`.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if is_single_file(str(pretrained)):
        unet, vae, text_encoder, tokenizer, scheduler_on_disk, found = _load_single_file(
            Path(str(pretrained)).expanduser(), single_file_config, torch_dtype, local_files_only)
        scheduler_source = f"{single_file_config} scheduler"
    else:
        folder, found = resolve_weights(str(pretrained), revision, local_files_only, expected=expected_files(variant))
        log.info("loading SD1.5 from %s (%s, %s)", folder, dtype_name(torch_dtype), torch_device)
        unet, vae, text_encoder, tokenizer = _load_folder(folder, torch_dtype, variant)
        scheduler_on_disk, scheduler_source = _scheduler_file(folder)
    max_positions = text_encoder.config.max_position_embeddings
    if tokenizer.model_max_length > max_positions:  # a tokenizer folder without tokenizer_config.json
        tokenizer.model_max_length = max_positions
    unet.set_attn_processor(AttnProcessor2_0())  # SDPA (also diffusers' default with torch 2)
    finalize_modules(unet, vae, text_encoder, device=torch_device, dtype=torch_dtype)
    scheduler_config = {**SD15_SCHEDULER_CONFIG,
                        **{key: scheduler_on_disk[key] for key in SD15_SCHEDULER_CONFIG if key in scheduler_on_disk}}

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
            "variant": variant,
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
