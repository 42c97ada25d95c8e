"""Structure preservation: SSIM of grey images, output vs content.

SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error Visibility to
Structural Similarity", IEEE TIP 2004; torchmetrics' SSIM map with its defaults (Gaussian window 11,
sigma 1.5, K1 0.01, K2 0.03, population (co)variances). The data range is fixed at 1.0 (grey in
[0, 1]): left unset, torchmetrics infers it per batch from the data, which makes scores incomparable
(docs/metrics.md). Grey is ITU-R BT.601 luma (torchvision `rgb_to_grayscale`), so colour changes
alone barely move it.

`border`: "valid" (default) averages the SSIM map over the pixels whose whole 11 x 11 window lies in
the image, as Wang et al.'s reference code and scikit-image's `structural_similarity` (which crops
(win_size - 1) // 2 = 5 px a side before the mean); "padded" is torchmetrics' own mean, which also
averages the border computed on reflect-padded images (about -0.003 at 96 x 128 on a typical pair).
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.transforms.functional import rgb_to_grayscale

from semantix.metrics.base import Compares, SampleMetric

BORDERS = ("valid", "padded")
SSIM_WINDOW = 11


class GreySSIM(SampleMetric):
    higher_is_better = True
    compares = Compares.CONTENT

    def __init__(self, border: str = "valid", **kwargs):
        super().__init__(**kwargs)
        if border not in BORDERS:
            raise ValueError(f"metrics.ssim_grey.border must be one of {BORDERS}, got {border!r}")
        self.border = border

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        grey_out = rgb_to_grayscale(output).unsqueeze(0)
        grey_content = rgb_to_grayscale(target).unsqueeze(0)
        if self.border == "padded":
            return structural_similarity_index_measure(grey_out, grey_content, data_range=1.0)
        pad = (SSIM_WINDOW - 1) // 2
        if min(grey_out.shape[-2:]) <= 2 * pad:
            raise ValueError(f"SSIM with border 'valid' needs images larger than {2 * pad} px a side, got "
                             f"{tuple(grey_out.shape[-2:])}")
        _, ssim_map = structural_similarity_index_measure(grey_out, grey_content, data_range=1.0,
                                                          return_full_image=True)
        return ssim_map[..., pad:-pad, pad:-pad].mean()
