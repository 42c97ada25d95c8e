"""Classical, weight-free references (no diffusion): real outputs offline on any machine.

- Identity: returns the content unchanged: a structure ceiling and a style floor that makes every
  metric's range visible in the leaderboard (docs/baselines.md, "Classical references").
- Reinhard colour transfer: Reinhard, Ashikhmin, Gooch, Shirley, "Color Transfer between Images",
  IEEE CG&A 2001. Per-channel mean/std matching; we work in CIE Lab (scikit-image) as the spec asks,
  where the paper uses its l-alpha-beta space; the two are close decorrelated opponent spaces.
- Histogram matching: per-channel RGB histogram specification (scikit-image `match_histograms`).

With several references, their pixels are pooled into one set of statistics.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from skimage import color, exposure

from semantix.methods.base import Method
from semantix.types import MethodOutput, Sample


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).double().numpy()


def _to_chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(array, 0.0, 1.0)).permute(2, 0, 1).float().contiguous()


def _pooled_pixels(references: tuple[torch.Tensor, ...]) -> np.ndarray:
    """All reference pixels as one (N, 1, 3) image, so statistics pool over every reference."""
    return np.concatenate([_to_hwc(r).reshape(-1, 1, 3) for r in references], axis=0)


class Identity(Method):
    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        return MethodOutput(image=sample.content.clone())


class ReinhardColorTransfer(Method):
    def __init__(self, eps: float = 1e-6):
        self.eps = eps  # keeps a flat (zero-std) content channel from dividing by zero

    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        content_lab = color.rgb2lab(_to_hwc(sample.content))
        reference_lab = color.rgb2lab(_pooled_pixels(sample.references))
        c_mean, c_std = content_lab.mean(axis=(0, 1)), content_lab.std(axis=(0, 1))
        r_mean, r_std = reference_lab.mean(axis=(0, 1)), reference_lab.std(axis=(0, 1))
        out_lab = (content_lab - c_mean) * (r_std / (c_std + self.eps)) + r_mean
        with warnings.catch_warnings():
            # Matched statistics can leave the sRGB gamut; clipping them is the method's normal behaviour.
            warnings.filterwarnings("ignore", message=".*negative Z values.*")
            rgb = color.lab2rgb(out_lab)
        return MethodOutput(image=_to_chw(rgb))


class HistogramMatching(Method):
    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        matched = exposure.match_histograms(
            _to_hwc(sample.content), _pooled_pixels(sample.references), channel_axis=-1
        )
        return MethodOutput(image=_to_chw(matched))
