"""`animatediff`: Stable Diffusion 1.5 with an AnimateDiff motion adapter (a video UNet).

Guo, Yang, Rao, Liang, Wang, Qiao, Agrawala, Lin, Dai, "AnimateDiff: Animate Your Personalized
Text-to-Image Diffusion Models without Specific Tuning", ICLR 2024. The Semantix paper runs its video
experiments on AnimateDiff; which motion module it used is not stated, so the default is the
v1-5-2 adapter that diffusers documents (`guoyww/animatediff-motion-adapter-v1-5-2`), set in
conf/backbone/animatediff.yaml.

The UNet is diffusers' `UNetMotionModel.from_unet2d(sd15_unet, motion_adapter)`: SD1.5's image
layers with temporal attention modules after each block. Its input is ``(B, C, F, h, w)`` and each
frame's prompt embedding is repeated per frame (as diffusers' AnimateDiffPipeline does);
`semantix.diffusion.eps` converts from the harness's ``(B, F, C, h, w)`` latents. The noise
schedule is AnimateDiff's inference schedule (linear betas 0.00085..0.012, its
configs/inference/inference-v*.yaml), not SD1.5's scaled-linear one; `beta_schedule` in the config.

Offline, a missing SD1.5 folder or motion adapter raises `WeightsNotFoundError` naming the config
key (`backbone.pretrained` or `backbone.motion_adapter`) and the files expected.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import torch

from semantix.backbones.base import Backbone, apply_kernel_options, finalize_modules
from semantix.backbones.sd15 import DEFAULT_PRETRAINED, HUB_ID, is_single_file, load_sd15, resolve_weights
from semantix.checkpoints import refusing_pickled_code
from semantix.runtime import hub_downloads_allowed
from semantix.types import WeightsNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
ADAPTER_FILES: tuple[tuple[str, ...], ...] = (
    ("config.json",),
    ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
)


def _adapter_not_found(motion_adapter: str, tried: list[str]) -> WeightsNotFoundError:
    attempts = "\n".join(f"  - {line}" for line in tried)
    expected = "\n".join(f"    {' or '.join(alts)}" for alts in ADAPTER_FILES)
    hub_id = motion_adapter if HUB_ID.fullmatch(motion_adapter) else DEFAULT_MOTION_ADAPTER
    return WeightsNotFoundError(
        f"AnimateDiff motion adapter not found for backbone.motion_adapter={motion_adapter!r}.\n"
        f"Tried:\n{attempts}\n"
        f"Expected a diffusers MotionAdapter folder (or Hugging Face repository) containing:\n{expected}\n"
        "Fix: on a machine with network, download it\n"
        f"    huggingface-cli download {hub_id} --local-dir /path/to/motion_adapter\n"
        "copy the folder here if needed, and set backbone.motion_adapter=/path/to/motion_adapter; or fill "
        "the Hugging Face cache and unset SEMANTIX_OFFLINE / HF_HUB_OFFLINE. (backbone=tiny_video runs offline with random weights.)"
    )


def add_motion_modules(unet: torch.nn.Module, adapter: torch.nn.Module) -> torch.nn.Module:
    """`UNetMotionModel.from_unet2d(unet, adapter)`: the image UNet's weights plus the adapter's."""
    from diffusers import UNetMotionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.utils import logging as diffusers_logging

    # from_unet2d casts with `.to(dtype)`, which makes diffusers warn about float32-only modules even
    # when there are none.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    motion_unet.set_attn_processor(AttnProcessor2_0())
    return motion_unet


def load_animatediff(
    pretrained: str = DEFAULT_PRETRAINED,
    motion_adapter: str = DEFAULT_MOTION_ADAPTER,
    revision: str | None = None,
    motion_adapter_revision: str | None = None,
    resolution: int = 512,
    device: str = "auto",
    dtype: str = "auto",
    local_files_only: bool | None = None,
    beta_schedule: str = "linear",
    channels_last: bool = False,
    compile_unet: bool = False,
    variant: str | None = None,
    single_file_config: str = DEFAULT_PRETRAINED,
    motion_adapter_config: str = DEFAULT_MOTION_ADAPTER,
) -> Backbone:
    """SD1.5 (`pretrained`, as `load_sd15` takes it) with the motion adapter `motion_adapter`: a hub id,
    a local diffusers folder, or AnimateDiff's own motion module file (`mm_sd_v15_v2.ckpt`, read with the
    adapter config of `motion_adapter_config`)."""
    # The adapter is small: find it before loading SD1.5, so a missing one fails fast.
    source, adapter_found = motion_adapter_source(str(motion_adapter), motion_adapter_revision, local_files_only)
    image_backbone = load_sd15(pretrained, revision, resolution, device, dtype, local_files_only,
                               variant=variant, single_file_config=single_file_config)
    adapter = load_motion_adapter(source, image_backbone.dtype, motion_adapter_config, local_files_only)
    log.info("AnimateDiff: motion adapter %s from %s", motion_adapter, source)
    backbone = video_backbone(image_backbone, adapter, "animatediff", {
        "motion_adapter": str(motion_adapter),
        "motion_adapter_revision": motion_adapter_revision,
        "motion_adapter_commit": adapter_found["commit"],
        "motion_adapter_path": adapter_found["path"],
    }, beta_schedule)
    return apply_kernel_options(backbone, channels_last, compile_unet)


def motion_adapter_source(motion_adapter: str, revision: str | None,
                          local_files_only: bool | None) -> tuple[Path, dict]:
    """The adapter's folder (local, or its Hugging Face snapshot) or single file, and provenance facts."""
    if is_single_file(motion_adapter):
        path = Path(motion_adapter).expanduser()
        if not path.is_file():
            raise _adapter_not_found(motion_adapter, [f"single-file motion module {path}: does not exist (a file "
                                                      "name is never looked up on the hub; give its full path)"])
        return path, {"source": "single_file", "path": str(path.resolve()), "commit": None}
    return resolve_weights(motion_adapter, revision, local_files_only, expected=ADAPTER_FILES,
                           patterns=[alts[0] for alts in ADAPTER_FILES], not_found=_adapter_not_found)


def load_motion_adapter(source: Path, torch_dtype: torch.dtype, config: str = DEFAULT_MOTION_ADAPTER,
                        local_files_only: bool | None = None) -> torch.nn.Module:
    """diffusers' MotionAdapter from a folder, or from AnimateDiff's motion module file through
    `from_single_file` with the adapter config of `config` (hub id or folder)."""
    from diffusers import MotionAdapter

    with refusing_pickled_code("backbone.motion_adapter", source):  # diffusers: weights_only=True
        if not source.is_file():
            fast_init = importlib.util.find_spec("accelerate") is not None
            return MotionAdapter.from_pretrained(source, torch_dtype=torch_dtype, low_cpu_mem_usage=fast_init)
        offline_only = not hub_downloads_allowed() if local_files_only is None else bool(local_files_only)
        try:
            return MotionAdapter.from_single_file(str(source), config=config, torch_dtype=torch_dtype,
                                                  local_files_only=offline_only)
        except OSError as e:  # the adapter config is not here (offline) or not on the hub
            raise WeightsNotFoundError(
                f"backbone.motion_adapter={str(source)!r} is a single-file motion module; reading it needs the "
                f"adapter config of backbone.motion_adapter_config={config!r} (a hub id in the Hugging Face "
                f"cache, or a folder with config.json), which was not found ({type(e).__name__}). Fix: "
                f"`huggingface-cli download {DEFAULT_MOTION_ADAPTER} config.json` on a machine with network, or "
                "set backbone.motion_adapter_config=/path/to/folder."
            ) from e


def video_backbone(image_backbone: Backbone, adapter: torch.nn.Module, name: str, provenance: dict,
                   beta_schedule: str) -> Backbone:
    """The video backbone made of `image_backbone` (SD1.5-shaped) and a motion adapter.

    VAE and text encoder are shared; the UNet is a new `UNetMotionModel` (the image UNet's weights are
    copied into it), and `image_backbone` stays reachable as `.image_backbone` for image methods run
    frame by frame on the same image weights.
    """
    unet = add_motion_modules(image_backbone.unet, adapter)
    finalize_modules(unet, device=image_backbone.device, dtype=image_backbone.dtype)
    return dataclasses.replace(
        image_backbone,
        name=name,
        unet=unet,
        is_video=True,
        image_backbone=image_backbone,
        scheduler_config={**image_backbone.scheduler_config, "beta_schedule": beta_schedule},
        provenance={**image_backbone.provenance, **provenance, "backbone": name, "beta_schedule": beta_schedule},
    )
