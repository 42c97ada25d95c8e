"""A noise predictor ``eps_fn(x_t, t) -> (eps, features)`` from a diffusers UNet with CFG.

This is the callable that :func:`semantix.diffusion.ddpm.invert` and
:func:`~semantix.diffusion.ddpm.replay` take: UNet + prompt embeddings + classifier-free guidance
(Ho and Salimans 2022), optionally capturing decoder-block outputs of the conditional pass (the
features Semantix caches for the reference and context branches).

Video: latents ``(B, F, C, h, w)`` go to a video UNet (AnimateDiff's ``UNetMotionModel``) as the
``(B, C, F, h, w)`` it takes, with each prompt embedding repeated per frame (as diffusers'
AnimateDiffPipeline does); block outputs, which that UNet computes per frame as ``(B*F, C, h, w)``,
come back as ``(B, F, C, h, w)`` (`frames_first`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .ddpm import cfg
from .features import capture_block_outputs

__all__ = ["UNetEpsFn", "frames_first"]


def frames_first(feature: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A block output of the UNet call on `x`, per sample: ``(B*F, C, h, w)`` -> ``(B, F, C, h, w)``
    for video latents ``x`` ``(B, F, C, h, w)``; image features pass through."""
    if x.ndim != 5:
        return feature
    return feature.reshape(x.shape[0], x.shape[1], *feature.shape[1:])


def _expand(emb: torch.Tensor, batch: int) -> torch.Tensor:
    if emb.shape[0] == batch:
        return emb
    if emb.shape[0] == 1:
        return emb.expand(batch, *emb.shape[1:])
    raise ValueError(f"embedding batch {emb.shape[0]} does not match latent batch {batch}")


class UNetEpsFn:
    """``eps_fn(x_t, t) -> (eps, features_or_None)`` for a ``UNet2DConditionModel``-like module.

    - ``cond_emb`` / ``uncond_emb``: text embeddings ``(1 or B, L, D)``; with ``uncond_emb`` and
      ``guidance_scale != 1`` the prediction is ``cfg(eps_u, eps_c, guidance_scale)``, the two
      branches run as one batch of 2B (``batch_cfg=True``) or as two passes.
    - ``capture``: block paths (``("up_blocks.1", "up_blocks.2")``); features are those of the
      conditional pass, a dict path -> ``(B, C, h, w)`` (video: ``(B, F, C, h, w)``); ``None`` when
      nothing is captured.
    - The UNet runs in its own dtype; ``eps`` comes back in ``x_t``'s dtype.
    """

    def __init__(
        self,
        unet: nn.Module,
        cond_emb: torch.Tensor,
        uncond_emb: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        capture: Sequence[str] = (),
        batch_cfg: bool = True,
        unet_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.unet = unet
        self.cond_emb = cond_emb
        self.uncond_emb = uncond_emb
        self.guidance_scale = float(guidance_scale)
        self.capture = tuple(capture)
        self.batch_cfg = batch_cfg
        self.unet_kwargs = dict(unet_kwargs or {})

    @property
    def uses_cfg(self) -> bool:
        return self.uncond_emb is not None and self.guidance_scale != 1.0

    def predict(self, x: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        """One UNet noise prediction for the embedding `emb` (no CFG, no capture)."""
        dtype = next(self.unet.parameters()).dtype
        sample = x.to(dtype)
        if x.ndim == 5:  # (B, F, C, h, w) -> the video UNet's (B, C, F, h, w), one embedding per frame
            sample = sample.transpose(1, 2)
            emb = emb.repeat_interleave(x.shape[1], dim=0)
        out = self.unet(sample, t, encoder_hidden_states=emb.to(dtype), **self.unet_kwargs)
        eps = out.sample if hasattr(out, "sample") else out[0]
        return (eps.transpose(1, 2) if x.ndim == 5 else eps).to(x.dtype)

    def __call__(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        B = x_t.shape[0]
        cond = _expand(self.cond_emb, B)
        with capture_block_outputs(self.unet, self.capture) as captured:
            if not self.uses_cfg:
                eps = self.predict(x_t, t, cond)
                feats = {k: frames_first(v, x_t) for k, v in captured.items()}
            elif self.batch_cfg:
                both_x = torch.cat([x_t, x_t])
                both = self.predict(both_x, t, torch.cat([_expand(self.uncond_emb, B), cond]))
                eps = cfg(both[:B], both[B:], self.guidance_scale)
                # clone: a view would keep (and torch.save would write) the unconditional half too
                feats = {k: frames_first(v, both_x)[B:].clone() for k, v in captured.items()}
            else:
                eps_u = self.predict(x_t, t, _expand(self.uncond_emb, B))
                eps_c = self.predict(x_t, t, cond)
                feats = {k: frames_first(v, x_t) for k, v in captured.items()}
                eps = cfg(eps_u, eps_c, self.guidance_scale)
        return eps, (feats if self.capture else None)
