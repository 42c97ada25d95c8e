"""Colour distribution distance, output vs reference(s).

Hellinger distance between 3D CIE Lab colour histograms (docs/metrics.md lists Lab histograms as an
alternative to HistoGAN's RGB-uv histograms; Afifi, Brubaker, Brown, "HistoGAN", CVPR 2021, compare
histograms with the Hellinger distance too). H(p, q) = sqrt(1 - sum_i sqrt(p_i q_i)), in [0, 1]:
0 for identical colour distributions, 1 for disjoint ones. Fixed bin edges (L in [0, 100], a and b
in [-128, 128]) keep values comparable across images. Several references pool their pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage import color

from semantix.metrics.base import Compares, SampleMetric
from semantix.metrics.inputs import to_hwc_numpy

LAB_RANGES = ((0.0, 100.0), (-128.0, 128.0), (-128.0, 128.0))


def lab_histogram(images: tuple[torch.Tensor, ...], bins: int) -> np.ndarray:
    """Normalised (bins, bins, bins) Lab histogram of all pixels of `images`."""
    lab = np.concatenate([color.rgb2lab(to_hwc_numpy(im)).reshape(-1, 3) for im in images])
    counts, _ = np.histogramdd(lab, bins=bins, range=LAB_RANGES)
    return counts / counts.sum()


def hellinger(p: np.ndarray, q: np.ndarray) -> float:
    # max(0, .) guards against 1 - sum being a hair negative from round-off.
    return float(np.sqrt(max(0.0, 1.0 - np.sqrt(p * q).sum())))


class ColourHistogramDistance(SampleMetric):
    higher_is_better = False
    compares = Compares.REFERENCES

    def __init__(self, bins: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.bins = bins

    def score(self, output: torch.Tensor, target: tuple[torch.Tensor, ...]) -> torch.Tensor:
        distance = hellinger(lab_histogram((output,), self.bins), lab_histogram(target, self.bins))
        return torch.tensor(distance)
