"""The published evaluation protocols' knobs, each against its reference formula (seeded random weights).

References, rewritten here from their papers' code (never imported from it, except torch-fidelity's
own feature extractor, which the project already depends on through torchmetrics):

- torch-fidelity `FeatureExtractorInceptionV3`: TF1-compatible bilinear resize to 299, (x - 128) / 128;
- pytorch-fid `InceptionV3(resize_input=True, normalize_input=True)`: x / 255, plain bilinear resize to
  299 (align_corners=False), 2 x - 1, then the same TF-ported layers;
- art-fid / StyleID `eval_artfid.py`: `Resize(512)` + `ToTensor()`, Inception3 trunk's pooled features;
  style folder with one copy per stylised image (StyleID's `sty_eval`); Fréchet distance with scipy's sqrtm;
- StyleID's CFSD (`image_metrics.PatchSimi`) on `ToTensor()` images: native size;
- scikit-image `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.

Fréchet distances here are 64-d (the standard Inception's first block), except the art Inception's 2048-d
FID, whose reference evaluates Tr sqrtm(S_a S_b) exactly through the n x n matrix A^T B (`frechet_low_rank`)
instead of scipy's 2048 x 2048 sqrtm (15 s on a CPU), to keep the suite quick.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from PIL import Image
from skimage.metrics import structural_similarity
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torchmetrics.image.fid import NoTrainInceptionV3
from torchvision.transforms.functional import rgb_to_grayscale

from semantix.metrics.fid import (
    FID,
    ArtFID,
    ImageNetFID,
    random_art_inception,
    random_inception,
)
from semantix.metrics.inputs import to_inception_uint8, to_vgg_input
from semantix.metrics.structure import GreySSIM
from semantix.metrics.vgg import CFSD
from semantix.metrics.weights import seeded
from semantix.types import Sample

FAST = 64


def smooth_image(seed: int, height: int = 64, width: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    size = (height, width or height)
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)


def uint8_batch(seed: int, n: int = 2, height: int = 96, width: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, height, width, generator=g) * 255).round().to(torch.uint8)


def frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    """art-fid's / pytorch-fid's `compute_frechet_distance` on np.cov statistics, scipy's sqrtm."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


@pytest.fixture(scope="module")
def standard_checkpoint(tmp_path_factory):
    """A seeded random standard Inception saved in torch-fidelity's layout."""
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(seeded(lambda: random_inception(2048), seed=3).state_dict(), path)
    return path


def ours(resize: str, path, feature: int = FAST) -> torch.nn.Module:
    metric = FID(weights=str(path), feature=feature, resize=resize, device="cpu")
    return metric.frechet.inception.network()


# -- resize modes of the standard Inception ---------------------------------------------------------
def test_torch_fidelity_resize_gives_torch_fidelity_features_exactly(standard_checkpoint):
    reference = FeatureExtractorInceptionV3("inception-v3-compat", [str(FAST)],
                                            feature_extractor_weights_path=str(standard_checkpoint)).eval()
    x = uint8_batch(0)
    with torch.no_grad():
        expected = reference(x)[0]
        got = ours("torch-fidelity", standard_checkpoint)(x)
        antialiased = ours("antialiased", standard_checkpoint)(x)
    assert torch.equal(got, expected)
    # torchmetrics' default antialiased resize moves the features (the issue's 5-6 % at 512 px)
    assert (antialiased - expected).norm() > 1e-3 * expected.norm()


def test_antialiased_resize_is_torchmetrics_default(standard_checkpoint):
    state = torch.load(standard_checkpoint, weights_only=True)
    empty = io.BytesIO()
    torch.save(state, empty)
    empty.seek(0)
    reference = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(FAST)],
                                   feature_extractor_weights_path=empty)
    x = uint8_batch(1)
    with torch.no_grad():
        assert torch.equal(ours("antialiased", standard_checkpoint)(x), reference(x))


def test_pytorch_fid_resize_matches_pytorch_fids_input_path(standard_checkpoint):
    """pytorch-fid: [0, 1] -> bilinear 299 (no antialias) -> 2x - 1 -> the shared layers; rewritten here
    on torch-fidelity's module (same TF-ported layers) for the 64-d block and the 2048-d pool."""
    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(standard_checkpoint)).eval()
    x = uint8_batch(2, n=1)
    with torch.no_grad():
        unit = torch.nn.functional.interpolate(x.float() / 255.0, size=(299, 299), mode="bilinear",
                                               align_corners=False)
        h = 2.0 * unit - 1.0
        h = reference.MaxPool_1(reference.Conv2d_2b_3x3(reference.Conv2d_2a_3x3(reference.Conv2d_1a_3x3(h))))
        expected_64 = h.mean(dim=(2, 3))
        h = reference.MaxPool_2(reference.Conv2d_4a_3x3(reference.Conv2d_3b_1x1(h)))
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            h = getattr(reference, name)(h)
        expected_2048 = h.mean(dim=(2, 3))
        torch.testing.assert_close(ours("pytorch-fid", standard_checkpoint)(x), expected_64, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours("pytorch-fid", standard_checkpoint, 2048)(x), expected_2048,
                                   rtol=1e-4, atol=1e-5)
        # and it is not torch-fidelity's: another resize and another normalisation
        tf = ours("torch-fidelity", standard_checkpoint)(x)
    assert (tf - expected_64).norm() > 1e-3 * tf.norm()


def test_unknown_knob_values_are_refused():
    with pytest.raises(ValueError, match="resize must be one of"):
        FID(weights="random", feature=FAST, resize="bicubic", device="cpu")
    with pytest.raises(ValueError, match="references must be one of"):
        FID(weights="random", feature=FAST, references="twice", device="cpu")
    with pytest.raises(ValueError, match="network must be one of"):
        ArtFID(inception_weights="random", lpips_weights="random", network="vgg", device="cpu")
    with pytest.raises(ValueError, match="border must be one of"):
        GreySSIM(border="zero")


# -- references: once per output (StyleID's duplicated style folder) vs once ------------------------
def styleid_grid():
    """3 styles x 4 contents, as StyleID's 40 x 20: every style recurs once per content."""
    styles = [smooth_image(100 + s) for s in range(3)]
    samples, outputs = [], []
    for c in range(4):
        content = smooth_image(200 + c)
        for s, style in enumerate(styles):
            samples.append(Sample(f"c{c}_s{s}", content, (style.clone(),)))
            outputs.append((0.5 * content + 0.5 * style).clamp(0, 1))
    return styles, samples, outputs


def test_references_per_output_equal_the_duplicated_folder_computation():
    styles, samples, outputs = styleid_grid()
    per_output = FID(weights="random", feature=FAST, references="per_output", device="cpu")
    distinct = FID(weights="random", feature=FAST, references="distinct", device="cpu")
    for output, sample in zip(outputs, samples, strict=True):
        per_output.update(output, sample)
        distinct.update(output, sample)
    assert per_output.set_sizes() == {"n_outputs": 12, "n_references": 12}
    assert distinct.set_sizes() == {"n_outputs": 12, "n_references": 3}

    network = per_output.frechet.inception.network()
    with torch.no_grad():
        stylised = network(torch.cat([to_inception_uint8(o) for o in outputs])).double().numpy()
        folder = network(torch.cat([to_inception_uint8(s.references[0]) for s in samples])).double().numpy()
        unique = network(torch.cat([to_inception_uint8(s) for s in styles])).double().numpy()
    duplicated = frechet_reference(stylised, folder)  # StyleID: sty_eval holds one copy per output
    once = frechet_reference(stylised, unique)
    assert float(per_output.compute()) == pytest.approx(duplicated, rel=1e-3)
    assert float(distinct.compute()) == pytest.approx(once, rel=1e-3)
    assert abs(duplicated - once) > 1e-3 * once  # the two protocols differ: the knob matters
    assert per_output.details()["references"] == "per_output"


# -- the art Inception (art-fid / StyleID) ----------------------------------------------------------
def art_reference_features(trunk: torchvision.models.Inception3, image: torch.Tensor, short_side: int | None):
    """StyleID's eval_artfid.py: the 8-bit file -> PIL -> Resize(short_side) -> ToTensor -> features."""
    pil = Image.fromarray(to_inception_uint8(image)[0].permute(1, 2, 0).numpy())
    if short_side is not None:
        pil = torchvision.transforms.Resize(short_side)(pil)
    with torch.no_grad():
        return trunk(torchvision.transforms.functional.to_tensor(pil)[None])


def test_art_inception_features_are_art_fids_at_own_size_and_styleids_at_short_side_512():
    own = FID(weights="random", network="art", device="cpu")
    styleid = FID(weights="random", network="art", short_side=128, device="cpu")
    assert own.inception_kind == styleid.inception_kind == "random-art"
    assert own.details.__name__ and styleid.protocol() == {"references": "distinct", "min_n": 50, "short_side": 128}
    trunk = seeded(lambda: random_art_inception()).trunk  # the same seeded network, built independently
    image = smooth_image(7, 96, 144)
    with torch.no_grad():
        got_own = own.frechet.inception(to_inception_uint8(image))
        got_resized = styleid.frechet.inception(to_inception_uint8(image))
    torch.testing.assert_close(got_own, art_reference_features(trunk, image, None), rtol=1e-5, atol=1e-6)
    expected = art_reference_features(trunk, image, 128)
    # PIL's antialiased bilinear vs torchvision's on tensors: 8-bit pixels differ by at most a level or so;
    # the pooled features agree to ~1e-3 relative (measured 8.5e-4 here).
    assert ((got_resized - expected).norm() / expected.norm()) < 1e-2
    assert ((got_own - expected).norm() / expected.norm()) > 1e-2  # resizing matters more than PIL vs torch


def frechet_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """art-fid's `compute_frechet_distance` for n << d: Tr sqrtm(S_a S_b) is the nuclear norm of A^T B
    (S = A A^T with A the centred features / sqrt(n - 1)), the same value scipy's sqrtm gives in seconds
    instead of a 2048 x 2048 Schur decomposition."""
    centred = [(x - x.mean(0)) / np.sqrt(len(x) - 1) for x in (a, b)]
    trace_sqrt = np.linalg.svd(centred[0] @ centred[1].T, compute_uv=False).sum()
    traces = sum((c ** 2).sum() for c in centred)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + traces - 2 * trace_sqrt)


def test_art_inception_fid_is_art_fids_frechet_distance_on_the_duplicated_style_folder():
    _, samples, outputs = styleid_grid()
    up = lambda x: torch.nn.functional.interpolate(x[None], size=(80, 80), mode="bilinear")[0].clamp(0, 1)  # noqa: E731
    samples, outputs = samples[:6], [up(o) for o in outputs[:6]]
    samples = [Sample(s.sample_id, up(s.content), (up(s.references[0]),)) for s in samples]
    metric = FID(weights="random", network="art", references="per_output", device="cpu")
    for output, sample in zip(outputs, samples, strict=True):
        metric.update(output, sample)
    network = metric.frechet.inception.network()
    with torch.no_grad():
        stylised = network(torch.cat([to_inception_uint8(o) for o in outputs])).double().numpy()
        folder = network(torch.cat([to_inception_uint8(s.references[0]) for s in samples])).double().numpy()
    assert stylised.shape == (6, 2048)
    expected = frechet_low_rank(stylised, folder)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-4)  # measured 1.0e-6 (8e-7 vs scipy's sqrtm)


def test_art_network_checks_weights_and_network_agree(tmp_path):
    with pytest.raises(ValueError, match="network: art"):
        FID(weights="torch-fidelity", network="art", device="cpu")
    path = tmp_path / "standard.pth"
    torch.save(seeded(lambda: random_inception(2048), seed=3).state_dict(), path)
    with pytest.raises(ValueError, match="holds the standard Inception"):
        FID(weights=str(path), network="art", device="cpu")
    assert FID(weights=str(path), feature=FAST, device="cpu").inception_kind == "standard"


def test_imagenet_fid_is_its_own_metric():
    metric = ImageNetFID(weights="random", feature=FAST, device="cpu")
    assert metric.inception_kind == "random"
    with pytest.raises(ValueError, match="standard Inception"):
        ImageNetFID(weights="random", network="art", device="cpu")


# -- CFSD at native size (StyleID's PatchSimi on ToTensor images) -----------------------------------
def dense_cfsd(content_features: torch.Tensor, output_features: torch.Tensor) -> torch.Tensor:
    """PatchSimi: features / C, F F^T over all locations, KL(softmax(content) || softmax(output)) batchmean."""
    def log_rows(f):
        c = f.shape[1]
        flat = f.flatten(2).transpose(1, 2).double() / c
        return torch.log_softmax(flat @ flat.transpose(1, 2), dim=-1).reshape(1, -1)

    return torch.nn.functional.kl_div(log_rows(output_features), log_rows(content_features).exp(),
                                      reduction="batchmean")


def test_cfsd_at_native_size_is_patchsimi_on_the_unresized_pair():
    native = CFSD(weights="random", size=None, chunk_size=100, device="cpu")
    fixed = CFSD(weights="random", size=64, chunk_size=100, device="cpu")
    content = smooth_image(0, 48, 80)
    output = (0.7 * content + 0.3 * smooth_image(1, 48, 80)).clamp(0, 1)
    trunk = native.trunk()
    with torch.no_grad():
        f_content = trunk[:12](to_vgg_input(content, size=None))
        f_output = trunk[:12](to_vgg_input(output, size=None))
    assert f_content.shape[-2:] == (12, 20)  # relu3_1 at 1/4 of 48 x 80: no resize happened
    expected = float(dense_cfsd(f_content, f_output))
    assert expected > 0
    assert float(native.score(output, content)) == pytest.approx(expected, rel=1e-6)
    assert float(fixed.score(output, content)) != pytest.approx(expected, rel=1e-2)


# -- SSIM without the padded border (Wang et al., scikit-image) -------------------------------------
@pytest.mark.parametrize("size", [(96, 128), (64, 64)])
def test_ssim_valid_border_equals_scikit_image(size):
    g = torch.Generator().manual_seed(0)
    content = smooth_image(3, *size)
    output = (content + 0.1 * torch.randn(content.shape, generator=g)).clamp(0, 1)
    grey = [rgb_to_grayscale(x)[0].double().numpy() for x in (output, content)]
    expected = structural_similarity(*grey, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0)
    valid = float(GreySSIM(border="valid").score(output, content))
    padded = float(GreySSIM(border="padded").score(output, content))
    assert valid == pytest.approx(expected, abs=2e-5)  # float32 vs float64 (measured 3e-6)
    assert abs(padded - expected) > 1e-3  # torchmetrics' mean includes the reflect-padded border
    assert GreySSIM().border == "valid"
