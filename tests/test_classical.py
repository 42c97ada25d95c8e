"""Classical reference methods: identity, Reinhard colour transfer, histogram matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color

from semantix.methods.classical import HistogramMatching, Identity, ReinhardColorTransfer
from semantix.types import Sample


def image(seed, tint):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, 24, 24, generator=g) * 0.5 + torch.tensor(tint).view(3, 1, 1)).clamp(0, 1)


def lab_stats(x):
    lab = color.rgb2lab(x.permute(1, 2, 0).double().numpy()).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def test_identity_returns_content():
    content = image(0, [0.2, 0.2, 0.2])
    out = Identity()(Sample("s", content, (image(1, [0.4, 0, 0]),)), 0)
    assert torch.equal(out.image, content)


def test_reinhard_matches_reference_lab_statistics():
    content, reference = image(0, [0.1, 0.3, 0.2]), image(1, [0.45, 0.1, 0.05])
    out = ReinhardColorTransfer()(Sample("s", content, (reference,)), 0).image
    assert out.shape == content.shape and out.min() >= 0 and out.max() <= 1
    (out_mean, out_std), (ref_mean, ref_std) = lab_stats(out), lab_stats(reference)
    np.testing.assert_allclose(out_mean, ref_mean, atol=1.5)  # gamut clipping moves it slightly
    np.testing.assert_allclose(out_std, ref_std, rtol=0.15, atol=0.5)
    # Structure is kept: the output's luminance correlates with the content's.
    corr = np.corrcoef(color.rgb2gray(out.permute(1, 2, 0).numpy()).ravel(),
                       color.rgb2gray(content.permute(1, 2, 0).numpy()).ravel())[0, 1]
    assert corr > 0.9


def test_reinhard_pools_multiple_references():
    content = image(0, [0.2, 0.2, 0.2])
    red, blue = image(1, [0.5, 0.0, 0.0]), image(2, [0.0, 0.0, 0.5])
    both = ReinhardColorTransfer()(Sample("s", content, (red, blue)), 0).image
    only_red = ReinhardColorTransfer()(Sample("s", content, (red,)), 0).image
    assert both[2].mean() > only_red[2].mean() + 0.05  # the blue reference contributes


@pytest.mark.parametrize("method", [ReinhardColorTransfer(), HistogramMatching()], ids=["reinhard", "hist"])
def test_transfer_moves_colours_towards_reference(method):
    content, reference = image(0, [0.1, 0.3, 0.2]), image(1, [0.45, 0.1, 0.05])
    out = method(Sample("s", content, (reference,)), 0).image
    distance = lambda a, b: float((a.mean((1, 2)) - b.mean((1, 2))).abs().sum())  # noqa: E731
    assert distance(out, reference) < 0.25 * distance(content, reference)
