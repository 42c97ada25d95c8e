"""The one place where images are checked and converted at the metric boundary.

Harness images are float32 (3, H, W) in [0, 1] (see `semantix.types`). A metric declares the range
it expects; `check_unit_range` refuses anything else instead of silently scoring a wrongly scaled
image (a [-1, 1] or 0..255 image passed as [0, 1] is the classic silent bug of public metric code).
"""

from __future__ import annotations

import torch

# Values a hair outside [0, 1] come from float round-off in colour conversions, not from a range bug.
RANGE_TOLERANCE = 1e-3


def check_unit_range(image: torch.Tensor, what: str) -> torch.Tensor:
    """Return `image` as float32 if it is a (3, H, W) image in [0, 1]; raise ValueError otherwise."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{what}: expected a (3, H, W) image, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"{what}: expected a float image in [0, 1], got dtype {image.dtype}")
    low, high = float(image.min()), float(image.max())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"{what}: values in [{low:.3g}, {high:.3g}] but the metric expects [0, 1] "
            "(a [-1, 1] or 0..255 image must be converted first)"
        )
    return image.float().clamp(0.0, 1.0)


def check_same_size(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"{what}: image sizes differ, {tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}")


def to_hwc_numpy(image: torch.Tensor):
    """(3, H, W) in [0, 1] -> (H, W, 3) float64 numpy, for scikit-image."""
    return image.permute(1, 2, 0).double().numpy()
