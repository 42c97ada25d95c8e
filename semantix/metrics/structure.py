"""Structure preservation: SSIM of grey images, output vs content.

SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error Visibility to
Structural Similarity", IEEE TIP 2004; torchmetrics' implementation with its defaults (Gaussian
window 11, sigma 1.5, K1 0.01, K2 0.03). The data range is fixed at 1.0 (grey in [0, 1]): left unset,
torchmetrics infers it per batch from the data, which makes scores incomparable (docs/metrics.md).
Grey is ITU-R BT.601 luma (torchvision `rgb_to_grayscale`), so colour changes alone barely move it.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.transforms.functional import rgb_to_grayscale

from semantix.metrics.base import SampleMetric


class GreySSIM(SampleMetric):
    higher_is_better = True
    compares = "output-content"

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        grey_out = rgb_to_grayscale(output).unsqueeze(0)
        grey_content = rgb_to_grayscale(target).unsqueeze(0)
        return structural_similarity_index_measure(grey_out, grey_content, data_range=1.0)
