"""The weight-free metrics and the range guard at the metric boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color

from semantix.metrics.base import Compares, FrameAveraged, SampleMetric, VideoMetric
from semantix.metrics.colour import ColourHistogramDistance, hellinger, lab_histogram
from semantix.metrics.structure import GreySSIM
from semantix.types import Sample


def sample(content, *references):
    return Sample("s", content, tuple(references) or (content,))


def smooth_image(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bilinear")[0]


def test_ssim_identical_is_one_and_blur_lowers_it():
    content = smooth_image() * 0.5 + torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.5
    metric = GreySSIM()
    assert float(metric(content, sample(content))) == pytest.approx(1.0, abs=1e-5)
    blurred = torch.nn.functional.avg_pool2d(content[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    assert float(metric(blurred, sample(content))) < 0.9
    assert float(metric.compute()) == pytest.approx((1.0 + float(GreySSIM()(blurred, sample(content)))) / 2)


def test_ssim_data_range_is_fixed_not_inferred():
    # A low-contrast pair: with the range inferred from the data, SSIM would change with contrast.
    content = smooth_image(2) * 0.1
    output = content + 0.02
    a = float(GreySSIM()(output, sample(content)))
    b = float(GreySSIM()(output * 0.5, sample(content * 0.5)))
    assert a != pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("bad", [lambda x: x * 2 - 1, lambda x: x * 255], ids=["minus1_1", "0_255"])
def test_wrong_range_raises_instead_of_scoring(bad):
    content = smooth_image()
    with pytest.raises(ValueError, match=r"expects \[0, 1\]"):
        GreySSIM()(bad(content), sample(content))
    with pytest.raises(ValueError, match=r"expects \[0, 1\]"):
        ColourHistogramDistance()(bad(content), sample(content))


def test_size_mismatch_raises():
    with pytest.raises(ValueError, match="sizes differ"):
        GreySSIM()(smooth_image(size=16), sample(smooth_image(size=32)))


def brute_force_histogram(images, bins):
    counts = np.zeros((bins,) * 3)
    edges = [np.linspace(0, 100, bins + 1), np.linspace(-128, 128, bins + 1), np.linspace(-128, 128, bins + 1)]
    for image in images:
        lab = color.rgb2lab(image.permute(1, 2, 0).double().numpy()).reshape(-1, 3)
        for pixel in lab:
            index = []
            for axis in range(3):
                i = np.searchsorted(edges[axis], pixel[axis], side="right") - 1
                index.append(min(max(i, 0), bins - 1))  # the last edge is inclusive
            counts[tuple(index)] += 1
    return counts / counts.sum()


def test_lab_histogram_matches_brute_force():
    images = (smooth_image(3, size=12), smooth_image(4, size=10))
    np.testing.assert_allclose(lab_histogram(images, 6), brute_force_histogram(images, 6), atol=1e-12)


def test_colour_distance_identity_disjoint_and_direction():
    red = torch.zeros(3, 16, 16)
    red[0] = 1.0
    blue = torch.zeros(3, 16, 16)
    blue[2] = 1.0
    metric = ColourHistogramDistance()
    assert float(metric(red, sample(red, red))) == pytest.approx(0.0, abs=1e-7)
    assert float(metric(red, sample(red, blue))) == pytest.approx(1.0)
    half = red.clone()
    half[:, :, 8:] = blue[:, :, 8:]
    assert 0.0 < float(metric(half, sample(half, blue))) < 1.0
    p, q = np.array([0.5, 0.5]), np.array([0.5, 0.5])
    assert hellinger(p, q) == pytest.approx(0.0, abs=1e-7)


def test_metrics_declare_direction_comparison_and_range():
    assert GreySSIM.describe() == {"higher_is_better": True, "compares": "output-content",
                                   "input_range": [0.0, 1.0], "pretrained": None,
                                   "set_level": False, "video": False}
    assert ColourHistogramDistance.describe()["higher_is_better"] is False
    assert ColourHistogramDistance.describe()["compares"] == "output-reference"


# -- the contract: `compares` picks the target, the kinds accept only what they can feed -------------------
class _Recorder(SampleMetric):
    """Returns 0 and keeps the target `score` was handed."""

    higher_is_better = True

    def score(self, output, target):
        self.seen = target
        return torch.zeros(())


def test_the_base_class_hands_score_the_target_compares_names():
    content, reference = torch.rand(3, 16, 16), torch.rand(3, 8, 8)
    case = Sample("s", content, (reference, reference), prompt="a red barn")
    seen = {}
    for compares in (Compares.CONTENT, Compares.REFERENCES, Compares.PROMPT):
        metric = type("M", (_Recorder,), {"compares": compares})()
        metric(torch.rand(3, 16, 16), case)
        seen[compares] = metric.seen
    assert torch.equal(seen[Compares.CONTENT], content)
    assert len(seen[Compares.REFERENCES]) == 2 and all(torch.equal(r, reference) for r in seen[Compares.REFERENCES])
    assert seen[Compares.PROMPT] == "a red barn"


def test_a_kind_refuses_a_compares_it_cannot_feed_when_the_class_is_defined():
    with pytest.raises(TypeError, match="cannot feed compares REFERENCE_SET"):
        type("Wrong", (_Recorder,), {"compares": Compares.REFERENCE_SET})
    with pytest.raises(TypeError, match="cannot feed compares CONTENT"):
        type("WrongVideo", (VideoMetric,), {"compares": Compares.CONTENT, "higher_is_better": True})
    with pytest.raises(ValueError, match="'output-style'"):
        type("Unknown", (_Recorder,), {"compares": "output-style"})
    assert type("Plain", (_Recorder,), {"compares": "output-content"}).compares is Compares.CONTENT


def test_frame_averaged_is_the_mean_of_the_metric_over_frames():
    frames = torch.rand(3, 3, 24, 24)
    video = Sample("v", frames[0], (torch.rand(3, 24, 24),), frames=frames)
    output = (frames * 0.8 + 0.1).clamp(0, 1)
    per_frame = [float(GreySSIM()(output[f], video.frame_sample(f))) for f in range(3)]
    assert float(FrameAveraged(GreySSIM())(output, video)) == pytest.approx(np.mean(per_frame), rel=1e-6)
    assert len(set(per_frame)) == 3  # the frames differ, so a wrong pairing would show
    with pytest.raises(TypeError, match="FrameAveraged is for image metrics"):
        FrameAveraged(type("V", (VideoMetric,), {"compares": Compares.OUTPUT_FRAMES, "higher_is_better": True,
                                                  "score": lambda self, output, target: output.mean()})())


def test_family_converters_shapes_ranges_and_guards():
    from semantix.metrics import inputs

    image = smooth_image(size=40)
    clip = inputs.to_clip_input(image)
    assert clip.shape == (1, 3, 224, 224)
    # normalised with CLIP statistics: a mid-grey image maps near zero
    grey = inputs.to_clip_input(torch.full((3, 40, 40), 0.45))
    assert grey.abs().max() < 0.2
    lp = inputs.to_lpips_input(image)
    assert lp.min() >= -1 and lp.max() <= 1 and lp.min() < 0
    assert torch.allclose(lp, image[None] * 2 - 1)
    assert inputs.to_vgg_input(image).shape == (1, 3, 512, 512)
    assert inputs.to_vgg_input(image, size=None).shape == (1, 3, 40, 40)
    assert inputs.dino_size(512, 512) == (224, 224)
    assert inputs.dino_size(300, 1200) == (120, 480)  # long side capped, multiples of 8
    assert inputs.to_dino_input(torch.rand(3, 100, 200)).shape == (1, 3, 224, 448)
    u8 = inputs.to_inception_uint8(image)
    assert u8.dtype == torch.uint8 and int(u8.max()) <= 255
    assert torch.equal(u8[0].float() / 255, (image * 255).round() / 255)
    for convert in (inputs.to_clip_input, inputs.to_lpips_input, inputs.to_vgg_input, inputs.to_dino_input,
                    inputs.to_inception_uint8):
        with pytest.raises(ValueError, match=r"expects \[0, 1\]"):
            convert(image * 2 - 1)


def test_a_random_weight_config_is_described_as_random_not_as_the_published_networks():
    from semantix.metrics.base import pretrained_in_use

    assert pretrained_in_use("ViT-L-14 openai", {"weights": None}) == "ViT-L-14 openai"
    assert pretrained_in_use("ViT-L-14 openai", {"weights": "/models/ViT-L-14.pt"}) == "ViT-L-14 openai"
    assert pretrained_in_use("ViT-L-14 openai", {"weights": "random"}) == (
        "seeded RANDOM weights (weights=random), not ViT-L-14 openai")
    assert pretrained_in_use(None, {"weights": "random"}) is None  # a metric without networks
