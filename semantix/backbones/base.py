"""The Backbone: an SD1.5-shaped bundle of UNet, VAE, CLIP text encoder and tokenizer.

Images follow the harness convention (float32, values in [0, 1]); the VAE's [-1, 1] range and its
latent scaling stay inside `encode_images` / `decode_latents`. diffusers and transformers are
imported lazily so that `import semantix.backbones` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from semantix.runtime import dtype_name

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

# The DDPM noise schedule Stable Diffusion 1.5 was trained with.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler"}

# Images per VAE call in encode_images / decode_latents (bounds memory for video frames).
VAE_CHUNK = 8

# How far outside [0, 1] an image may stray (resampling overshoot) before it is taken for a bug
# such as passing [-1, 1] or 0..255 images.
IMAGE_RANGE_TOLERANCE = 1e-2


def check_images(images: torch.Tensor, tolerance: float = IMAGE_RANGE_TOLERANCE) -> None:
    """Raise ValueError unless `images` is a float (B, 3, H, W) batch with values in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected a (B, 3, H, W) image batch, got shape {tuple(images.shape)} "
            "(for one (3, H, W) image use image[None])"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"expected float images in [0, 1], got dtype {dtype_name(images.dtype)} "
            "(0..255 integers: use images.float() / 255)"
        )
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    low, high = images.min().item(), images.max().item()
    if low < -tolerance or high > 1 + tolerance:
        if high > 2:
            hint = "this looks like 0..255 data: divide by 255"
        elif low < -tolerance:
            hint = "this looks like [-1, 1] data: use (images + 1) / 2"
        else:
            hint = "clamp or rescale to [0, 1]"
        raise ValueError(
            f"images must be in [0, 1] (the harness convention), got values in [{low:.4g}, {high:.4g}]; {hint}"
        )


@dataclass(eq=False)
class Backbone:
    """SD1.5-shaped components plus what is needed to use and to cite them."""

    name: str
    unet: UNet2DConditionModel = field(repr=False)
    vae: AutoencoderKL = field(repr=False)
    text_encoder: CLIPTextModel = field(repr=False)
    tokenizer: CLIPTokenizer = field(repr=False)
    scheduler_config: dict[str, Any] = field(repr=False)
    resolution: int  # image side in pixels
    device: torch.device
    dtype: torch.dtype  # dtype of the unet / vae / text encoder weights
    random_weights: bool
    # True when the UNet is a video UNet (AnimateDiff's `UNetMotionModel`): its input is (B, C, F, h, w).
    is_video: bool = False
    # A video backbone's image backbone: the SD1.5-shaped model its UNet was built from (same VAE and
    # text encoder), for image methods run frame by frame. None for image backbones.
    image_backbone: Backbone | None = field(default=None, repr=False)
    # JSON-serialisable: backbone, pretrained (id or path), revision, weights, dtype, device, ...
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def latent_downsample(self) -> int:
        """Spatial factor between image and latent (8 for SD1.5)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.latent_downsample

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def make_scheduler(self, kind: str = "ddpm") -> SchedulerMixin:
        """A fresh DDPMScheduler ("ddpm") or DDIMScheduler ("ddim") with the backbone's schedule."""
        if kind not in SCHEDULERS:
            raise ValueError(f"unknown scheduler kind {kind!r}; known kinds: {', '.join(SCHEDULERS)}")
        import diffusers

        return getattr(diffusers, SCHEDULERS[kind]).from_config(dict(self.scheduler_config))

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder last hidden state, (B, 77, D), on `device` in `dtype`."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("encode_prompt needs at least one prompt")
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return hidden.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> scaled latents (posterior mean), float32 on `device`.

        Encoded VAE_CHUNK images at a time (the VAE works per image), so a 16-frame video at 512 px
        does not hold all frames' activations at once.
        """
        check_images(images)
        latents = []
        for chunk in images.split(VAE_CHUNK):
            pixels = chunk.to(device=self.device, dtype=self.dtype).clamp(0, 1) * 2 - 1
            mean = self.vae.encode(pixels).latent_dist.mean
            latents.append(((mean - self._latent_shift) * self.vae.config.scaling_factor).float())
        return torch.cat(latents)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> (B, 3, H, W) float32 images in [0, 1], on the CPU (VAE_CHUNK at a time)."""
        images = []
        for chunk in latents.split(VAE_CHUNK):
            z = chunk.to(device=self.device, dtype=self.dtype) / self.vae.config.scaling_factor
            pixels = self.vae.decode(z + self._latent_shift).sample
            images.append(((pixels.float() + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(images)

    @property
    def _latent_shift(self) -> float:
        # None for SD1.5; set for VAEs that also shift their latents (SD3, Flux).
        return getattr(self.vae.config, "shift_factor", None) or 0.0


def finalize_modules(*modules: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to device/dtype, eval mode, frozen parameters (gradients w.r.t. inputs still work)."""
    for module in modules:
        # torch's own `to`: diffusers' override warns about "modules to keep in float32" even when
        # there are none (diffusers 0.42).
        torch.nn.Module.to(module, device=device, dtype=dtype).eval().requires_grad_(False)


def apply_kernel_options(backbone: Backbone, channels_last: bool = False, compile_unet: bool = False) -> Backbone:
    """Speed options that do not change what is computed (to float rounding); off by default.

    - ``channels_last``: NHWC memory format for the UNet and the VAE (faster convolutions on
      tensor-core GPUs);
    - ``compile_unet``: ``torch.compile`` the UNet in place (``nn.Module.compile``), so attention
      processors, hooks and the module identity keep working; the first call of each new input shape
      or processor set recompiles, which only pays on long runs.
    Both are measured by ``benchmarks/sampler.py`` (``bench_kernels``). They are recorded in the run's
    config but are not part of the run identity nor of cache keys (`provenance`): they change how, not
    what, the backbone computes.
    """
    if channels_last:
        for module in (backbone.unet, backbone.vae):
            module.to(memory_format=torch.channels_last)
    if compile_unet:
        backbone.unet.compile()
    return backbone
