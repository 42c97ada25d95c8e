"""What the diffusion methods (Semantix, StyleID, StyleGallery, Eye-for-an-eye, Cross-Image Attention)
share: set-up, the inversion cache key, the UNet call and the latent <-> image steps.

Each method's algorithm stays in its own file, readable top to bottom: its `__call__`, its `invert`
(what an inversion records differs from method to method: decoder features, attention tensors, noise
maps) and its `sample` (the reverse process). This base holds only what they all do the same way.

Public steps, in the order of a diffusers pipeline: `encode` (image -> latent), `invert` (the
method's own), `predict` / `eps_fn` (the UNet's noise prediction, plain or with CFG and captured
features, both through `semantix.diffusion.eps.UNetEpsFn`), `sample` (the method's own), `decode`
(latent -> image). Tests and benchmarks call these, not the methods' private helpers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from semantix.diffusion.cache import TensorCache
from semantix.diffusion.ddim import DDIMStepper
from semantix.diffusion.ddpm import DDPMStepper
from semantix.diffusion.eps import UNetEpsFn
from semantix.io import stable_hash
from semantix.methods.base import Method, seeded_generator

if TYPE_CHECKING:
    from semantix.backbones import Backbone

STEPPERS = {"ddpm": DDPMStepper, "ddim": DDIMStepper}


class DiffusionMethod(Method):
    """A method that runs the backbone's UNet; see the module docstring.

    A subclass sets `scheduler_kind` and calls ``super().__init__(num_steps, cache_inversions)``;
    its own `prepare` (when it needs more set-up) calls ``super().prepare`` first.
    """

    uses_backbone = True
    #: The scheduler family of `scheduler` and `stepper`: ``"ddpm"`` or ``"ddim"``.
    scheduler_kind: ClassVar[str]

    def __init__(self, num_steps: int, cache_inversions: bool):
        self.num_steps = num_steps
        self.cache_inversions = cache_inversions

    def prepare(self, backbone: Backbone, cache_dir: Path) -> None:
        """The backbone and its UNet, a `scheduler_kind` scheduler on `num_steps` steps with its stepper,
        the empty prompt's embedding (the unconditional branch of CFG) and the inversion cache."""
        self.backbone = backbone
        self.unet = backbone.unet
        self.scheduler = backbone.make_scheduler(self.scheduler_kind)
        self.scheduler.set_timesteps(self.num_steps)
        self.stepper = STEPPERS[self.scheduler_kind](self.scheduler)
        self.uncond_embedding = backbone.encode_prompt([""])
        self.cache = TensorCache(Path(cache_dir), enabled=self.cache_inversions)

    # -- public steps --------------------------------------------------------------------------------
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The latent of an image ``(3, H, W)`` -> ``(1, C, h, w)``, or of a clip ``(F, 3, H, W)`` ->
        ``(1, F, C, h, w)``; on a video backbone an image is a one-frame clip."""
        if image.ndim == 3 and not self.backbone.is_video:
            return self.backbone.encode_images(image[None].to(self.backbone.device))
        frames = image if image.ndim == 4 else image[None]
        return self.backbone.encode_images(frames.to(self.backbone.device))[None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] of latents ``(B, C, h, w)``; videos ``(B, F, 3, H, W)`` of
        latent videos ``(B, F, C, h, w)``."""
        if latents.ndim == 4:
            return self.backbone.decode_latents(latents)
        return self.backbone.decode_latents(latents.flatten(0, 1)).unflatten(0, latents.shape[:2])

    def predict(self, x: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        """One UNet noise prediction of ``x`` at timestep ``t`` for the prompt embedding ``emb`` (one per
        row of ``x``, or one for all), in ``x``'s dtype: no CFG, no capture."""
        return UNetEpsFn(self.unet, emb).predict(x, t, emb)

    def eps_fn(self, cond: torch.Tensor, guidance_scale: float = 1.0, capture: Sequence[str] = (),
               batch_cfg: bool = True) -> UNetEpsFn:
        """``eps_fn(x_t, t) -> (eps, features)`` for prompt embedding ``cond``: classifier-free guidance
        against the empty prompt at ``guidance_scale`` (1: the conditional prediction alone), the
        conditional pass's outputs of the ``capture`` blocks as features (`UNetEpsFn`)."""
        return UNetEpsFn(self.unet, cond, self.uncond_embedding, guidance_scale, capture=capture,
                         batch_cfg=batch_cfg)

    # -- the inversion cache -------------------------------------------------------------------------
    def inversion_key(self, kind: str, image: torch.Tensor, image_sha256: str | None, **settings: Any) -> dict:
        """The cache key of an inversion of ``image``: its kind, the backbone, the image (its input hash,
        or the hash of its pixels when it has none), its resolution and every setting the result
        depends on."""
        image_sha256 = image_sha256 or hashlib.sha256(image.detach().cpu().numpy().tobytes()).hexdigest()
        return {"kind": kind, "backbone": self.backbone.provenance, "image_sha256": image_sha256,
                "resolution": tuple(image.shape[-2:]), **settings}

    @staticmethod
    def noise_seed(seed: int, role: str) -> str:
        """The seed of the noise maps of an edit-friendly DDPM inversion of the image playing `role`
        ("context", "reference_0", ...) in the sample with `seed`: a hash, so it can go in the key."""
        return stable_hash(f"{seed}:{role}")

    @staticmethod
    def noise_generator(noise_seed: str) -> torch.Generator:
        """The generator of those noise maps."""
        return seeded_generator(int(noise_seed, 16) & 0x7FFFFFFF)
