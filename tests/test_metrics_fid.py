"""FID and ArtFID (semantix.metrics.fid) on random weights: known answers, a scipy reference, weights errors.

Speed: every test uses the torchmetrics Inception at its 64-d feature layer (`feature=64`: the network
stops after its first block, and the 64 x 64 Fréchet term is instant), except where the 2048-d layer
itself is the point; a 2048-d Fréchet distance takes seconds on an idle CPU and far longer on a busy
one (a 2048 x 2048 non-symmetric eigendecomposition), so no test computes one.
"""

from __future__ import annotations

import tempfile

import lpips
import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision

from semantix.metrics.fid import (
    ART_INCEPTION_FILE,
    FID,
    INCEPTION_FILE,
    ArtFID,
    random_inception,
)
from semantix.metrics.inputs import to_inception_uint8
from semantix.metrics.perceptual import LPIPSDistance, shared_lpips
from semantix.metrics.weights import seeded
from semantix.types import Sample, WeightsNotFoundError

FAST = 64  # torchmetrics' smallest Inception feature layer


def smooth_image(seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)


def images(first_seed: int, n: int, size: int = 64) -> list[torch.Tensor]:
    return [smooth_image(first_seed + i, size) for i in range(n)]


def fid_of(metric: FID, outputs, references, contents=None) -> float:
    metric.reset()
    contents = contents or references
    for output, content, reference in zip(outputs, contents, references, strict=True):
        metric.update(output, Sample("s", content, (reference,)))
    return float(metric.compute())


def shifted(batch, amount: float):
    return [(image + amount).clamp(0, 1) for image in batch]


def test_set_against_itself_is_zero_and_degradation_increases_fid():
    references = images(0, 24)
    metric = FID(weights="random", feature=FAST, device="cpu")
    small = fid_of(metric, shifted(references, 0.05), references)
    large = fid_of(metric, shifted(references, 0.15), references)
    g = torch.Generator().manual_seed(1)
    noisy = fid_of(metric, [(r + 0.1 * torch.randn(r.shape, generator=g)).clamp(0, 1) for r in references],
                   references)
    itself = fid_of(metric, references, references)
    # Identical sets: mu and Sigma are equal, FID is 0 up to the eigenvalue round-off of
    # Tr sqrt(Sigma Sigma) in float64 (measured ~1e-9 here); bound it at 1e-6 of the smallest degradation.
    assert abs(itself) <= 1e-6 * small
    assert 0 < small < large
    assert noisy > 1e3 * abs(itself)


def frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), with scipy's sqrtm (pytorch-fid's formula)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean).real)


def test_fid_matches_direct_scipy_computation():
    references = images(0, 40)
    outputs = shifted(images(500, 40), 0.08)
    metric = FID(weights="random", feature=FAST, device="cpu")
    ours = fid_of(metric, outputs, references)

    network = metric.frechet.inception.network()  # the same module, run directly on each set
    with torch.no_grad():
        features = [network(torch.cat([to_inception_uint8(im) for im in batch])).double().numpy()
                    for batch in (outputs, references)]
    expected = frechet_reference(*features)
    assert ours == pytest.approx(expected, rel=1e-3)
    assert expected > 0.1  # a real distance, not round-off


def test_default_is_the_2048_d_pool_layer():
    metric = FID(weights="random", device="cpu")
    image = smooth_image(0)
    metric.update(image, Sample("s", image, (image,)))
    assert metric.frechet.real_features_sum.shape == (2048,)
    assert metric.set_sizes() == {"n_outputs": 1, "n_references": 1}


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_duplicate_references_count_once():
    styles = images(100, 3)
    contents = images(200, 6)
    outputs = shifted(images(300, 6), 0.1)
    metric = FID(weights="random", feature=FAST, device="cpu")
    for i, output in enumerate(outputs):
        # every style used twice, as a fresh tensor with the same content; one multi-reference sample
        references = (styles[i % 3].clone(),) if i != 5 else (styles[0].clone(), styles[2].clone())
        metric.update(output, Sample(f"s{i}", contents[i], references))
    assert metric.details() | {"fid": 0} == {"fid": 0, "n_outputs": 6, "n_references": 3,
                                           "inception": "random", "feature": FAST,
                                           "references": "distinct", "resize": "antialiased",
                                           "min_n": 50}

    once = FID(weights="random", feature=FAST, device="cpu")
    for i, output in enumerate(outputs):
        once.update(output, Sample(f"s{i}", contents[i], (styles[i],) if i < 3 else ()))
    assert float(metric.compute()) == pytest.approx(float(once.compute()), rel=1e-6)

    metric.reset()
    assert metric.set_sizes() == {"n_outputs": 0, "n_references": 0}
    with pytest.raises(ValueError, match="at least 2 outputs and 2 distinct references"):
        metric.compute()


def test_artfid_is_one_plus_lpips_times_one_plus_fid():
    contents = images(0, 10)
    references = images(100, 10)
    outputs = [(0.6 * c + 0.4 * r) for c, r in zip(contents, references, strict=True)]
    art = ArtFID(inception_weights="random", lpips_weights="random", feature=FAST, device="cpu")
    for i in range(10):
        art.update(outputs[i], Sample(f"s{i}", contents[i], (references[i],)))

    # Independently: the lpips package directly (same seeded construction), and FID on the same sets.
    net = seeded(lambda: lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False))
    with torch.no_grad():
        distances = [float(net(o[None] * 2 - 1, c[None] * 2 - 1)) for o, c in zip(outputs, contents, strict=True)]
    fid = fid_of(FID(weights="random", feature=FAST, device="cpu"), outputs, references)
    expected = (1 + np.mean(distances)) * (1 + fid)

    assert float(art.compute()) == pytest.approx(expected, rel=1e-5)
    details = art.details()
    assert details["artfid"] == pytest.approx(expected, rel=1e-5)
    assert details["lpips"] == pytest.approx(np.mean(distances), rel=1e-5)
    assert details["fid"] == pytest.approx(fid, rel=1e-5)
    assert (details["inception"], details["n_outputs"], details["n_references"]) == ("random", 10, 10)
    # One LPIPS network per (net, weights, device), shared with the `lpips` metric.
    assert art.lpips_model() is shared_lpips("alex", "random", "cpu")
    assert art.lpips_model() is LPIPSDistance(weights="random", device="cpu").network


def test_wrong_range_and_sizes_are_refused():
    image = smooth_image(0)
    with pytest.raises(ValueError, match=r"expects \[0, 1\]"):
        FID(weights="random", feature=FAST, device="cpu").update(image * 2 - 1, Sample("s", image, (image,)))
    art = ArtFID(inception_weights="random", lpips_weights="random", feature=FAST, device="cpu")
    with pytest.raises(ValueError, match="sizes differ"):
        art.update(smooth_image(0, 32), Sample("s", image, (image,)))


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No torch hub checkpoints and no art-fid download folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def test_missing_weights_name_the_argument_and_file(empty_caches):
    # Built directly, the error begins with the constructor argument; the registry adds the config path.
    with pytest.raises(WeightsNotFoundError, match=rf"^weights: .*{INCEPTION_FILE}"):
        FID(device="cpu")
    with pytest.raises(WeightsNotFoundError, match=r"^weights: .*/nowhere/inception\.pth"):
        FID(weights="/nowhere/inception.pth", device="cpu")
    with pytest.raises(WeightsNotFoundError, match=rf"^inception_weights: .*{ART_INCEPTION_FILE}"):
        ArtFID(inception_weights="art", lpips_weights="random", device="cpu")
    with pytest.raises(WeightsNotFoundError, match=r"^lpips_weights: .*alexnet-owt-7be5be79\.pth"):
        ArtFID(inception_weights="random", lpips_weights="torchvision", feature=FAST, device="cpu")


def test_torch_fidelity_checkpoint_is_found_in_the_hub_cache_and_by_path(empty_caches):
    # A checkpoint of torch-fidelity's layout (random values) where torchmetrics would download it.
    path = empty_caches / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    path.parent.mkdir(parents=True)
    torch.save(seeded(lambda: random_inception(2048), seed=3).state_dict(), path)
    image = smooth_image(0)
    for metric in (FID(device="cpu", feature=FAST), FID(weights=str(path), device="cpu", feature=FAST),
                   ArtFID(inception_weights=str(path), lpips_weights="random", device="cpu", feature=FAST)):
        assert metric.inception_kind == "standard"
        metric.update(image, Sample("s", image, (image,)))
        assert metric.set_sizes() == {"n_outputs": 1, "n_references": 1}


def test_art_inception_checkpoint_runs_torchvision_trunk_at_native_size(tmp_path):
    # art-fid's layout: torchvision's Inception3 trunk plus two heads and two auxiliary heads; He-normal
    # conv weights keep the activations O(1), so the comparison below is not between two ~0 vectors.
    trunk = seeded(lambda: torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False))
    for module in trunk.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, generator=torch.Generator().manual_seed(0),
                                          nonlinearity="relu")
    state = {k: v for k, v in trunk.state_dict().items() if not k.startswith("fc.")}
    state |= {"fc1.weight": torch.zeros(7, 2048), "fc1.bias": torch.zeros(7), "fc2.weight": torch.zeros(5, 2048),
              "fc2.bias": torch.zeros(5), "AuxLogits1.fc.weight": torch.zeros(7, 768)}
    path = tmp_path / ART_INCEPTION_FILE
    torch.save(state, path)

    art = ArtFID(inception_weights=str(path), lpips_weights="random", device="cpu")
    assert art.inception_kind == "art"
    outputs, references = images(0, 3, size=96), images(10, 3, size=96)
    for i in range(3):
        art.update(outputs[i], Sample(f"s{i}", outputs[i], (references[i],)))
    assert art.set_sizes() == {"n_outputs": 3, "n_references": 3}
    assert float(art.mean_lpips()) == pytest.approx(0.0, abs=1e-6)  # outputs are their own contents
    # (no compute(): a 2048-d Fréchet distance takes seconds on a CPU)

    trunk.fc = torch.nn.Identity()
    trunk.eval()
    with torch.no_grad():
        expected = trunk(to_inception_uint8(outputs[0]).float() / 255.0)  # [0, 1], 96 px, no resize
        ours = art.frechet.inception(to_inception_uint8(outputs[0]))
    torch.testing.assert_close(ours, expected)

    with pytest.raises(ValueError, match="at least 75 px"):
        art.update(smooth_image(0), Sample("s", smooth_image(0), (smooth_image(1),)))

    other = tmp_path / "imagenet_inception.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, other)
    with pytest.raises(ValueError, match="neither torch-fidelity's"):
        ArtFID(inception_weights=str(other), lpips_weights="random", device="cpu")


def test_lpips_trunk_from_a_torchvision_alexnet_file(tmp_path):
    alexnet = seeded(lambda: torchvision.models.alexnet(weights=None), seed=5)
    path = tmp_path / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in alexnet.features.state_dict().items()}, path)
    network = shared_lpips("alex", str(path), "cpu", "lpips_weights").model
    torch.testing.assert_close(network.net.slice1[0].weight, alexnet.features[0].weight)
    torch.testing.assert_close(getattr(network.net.slice5, "10").bias, alexnet.features[10].bias)


def test_declarations():
    for cls in (FID, ArtFID):
        described = cls.describe()
        assert (described["higher_is_better"], described["set_level"]) == (False, True)
    assert FID.describe()["compares"] == "outputs-references"
    assert "art_inception.pth" in ArtFID.describe()["pretrained"]


def test_reference_features_are_computed_once_per_process(monkeypatch):
    """A second run over the same references (e.g. the next ablation) reuses their Inception features."""
    outputs = [smooth_image(i) for i in range(4)]
    references = [smooth_image(100 + i) for i in range(4)]
    first = FID(weights="random", feature=FAST, device="cpu")
    value = fid_of(first, outputs, references)
    calls = []
    network_type = type(first.frechet.inception.network())
    original_forward = network_type.forward
    monkeypatch.setattr(network_type, "forward", lambda self, x: calls.append(len(x)) or original_forward(self, x))
    second = FID(weights="random", feature=FAST, device="cpu")
    assert fid_of(second, outputs, references) == pytest.approx(value, rel=1e-6)
    assert calls == []  # every image (outputs included) was already memoised
    fid_of(FID(weights="random", feature=FAST, device="cpu"), [smooth_image(50), smooth_image(51)], references[:2])
    assert calls == [1, 1]  # only the two new outputs
