"""Adaptive instance normalisation (Huang and Belongie, "Arbitrary Style Transfer in Real-time with
Adaptive Instance Normalization", ICCV 2017, Eq. (8)).

Semantix (He et al., ICLR 2025) applies it to the output latents with the reference latents after
``adain.start_step`` denoising steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["adain", "mean_std"]


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
