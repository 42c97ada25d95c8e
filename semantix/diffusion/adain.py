"""Adaptive instance normalisation (Huang and Belongie, "Arbitrary Style Transfer in Real-time with
Adaptive Instance Normalization", ICCV 2017, Eq. (8)).

Semantix (He et al., ICLR 2025) applies it to the output latents with the reference latents after
``adain.start_step`` denoising steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["adain", "masked_adain", "mean_std"]


def mean_std(x: torch.Tensor, dims: Sequence[int], eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``sqrt(var + eps)`` over ``dims`` (population variance), with ``keepdim=True``."""
    dims = tuple(dims)
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    return mean, torch.sqrt(var + eps)


def adain(
    x: torch.Tensor, ref: torch.Tensor, dims: Sequence[int] = (-2, -1), eps: float = 1e-5
) -> torch.Tensor:
    """``AdaIN(x, ref) = std(ref) (x - mean(x)) / std(x) + mean(ref)`` (Huang and Belongie 2017, Eq. (8)).

    Statistics are per channel, over ``dims``: ``(-2, -1)`` (spatial) for image latents
    ``(B, C, h, w)``; ``(1, -2, -1)`` (frames and space) for video latents ``(B, F, C, h, w)``.
    ``ref`` may have batch size 1 (broadcast). ``std = sqrt(var + eps)`` for both tensors, so
    ``adain(x, x) == x`` up to rounding; the population variance (``correction=0``) is used.
    """
    mx, sx = mean_std(x, dims, eps)
    mr, sr = mean_std(ref, dims, eps)
    return (x - mx) / sx * sr + mr


def masked_adain(
    x: torch.Tensor, ref: torch.Tensor, x_mask: torch.Tensor, ref_mask: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """AdaIN restricted to masked regions (Cross-Image Attention's and Eye-for-an-eye's masked AdaIN).

    Per-channel mean and std of ``x`` over ``x_mask`` and of ``ref`` over ``ref_mask`` (population
    variance plus ``eps``, as :func:`adain`); the masked locations of ``x`` get
    ``std_ref (x - mean_x) / std_x + mean_ref``, the others stay as they are. ``x``, ``ref``:
    ``(B, C, h, w)``; masks ``(B or 1, 1, h, w)`` of 0s and 1s, each with at least one 1.
    """
    def stats(t: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = m.sum(dim=(-2, -1), keepdim=True)
        if bool((count == 0).any()):
            raise ValueError("masked_adain: a mask has no foreground location")
        mean = (t * m).sum(dim=(-2, -1), keepdim=True) / count
        var = ((t - mean) ** 2 * m).sum(dim=(-2, -1), keepdim=True) / count
        return mean, torch.sqrt(var + eps)

    mx, sx = stats(x, x_mask)
    mr, sr = stats(ref, ref_mask)
    return x * (1 - x_mask) + ((x - mx) / sx * sr + mr) * x_mask
