"""CLIP similarities and LPIPS on seeded random weights: known answers, directions, agreement with the
reference libraries, the [-1, 1] guard, and the missing-weights errors. Nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

from semantix.metrics.clip import CLIPContentSimilarity, CLIPStyleSimilarity, CLIPTextScore, clip_score
from semantix.metrics.inputs import to_clip_input
from semantix.metrics.perceptual import LPIPSDistance
from semantix.metrics.weights import seeded
from semantix.types import Sample, WeightsNotFoundError

# ViT-B-32 keeps these tests fast; the default ViT-L-14 gets one test of its own.
SMALL_CLIP = {"model": "ViT-B-32", "weights": "random"}


def smooth_image(seed: int, size: int = 224) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def noisy(image: torch.Tensor, sigma: float = 0.02) -> torch.Tensor:
    return (image + sigma * torch.randn(image.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)


def shuffled_patches(image: torch.Tensor, patch: int = 16) -> torch.Tensor:
    c, h, w = image.shape
    tiles = image.unfold(1, patch, patch).unfold(2, patch, patch).reshape(c, -1, patch, patch)
    tiles = tiles[:, torch.randperm(tiles.shape[1], generator=torch.Generator().manual_seed(0))]
    return tiles.reshape(c, h // patch, w // patch, patch, patch).permute(0, 1, 3, 2, 4).reshape(c, h, w)


def sample(content, *references, prompt=None):
    return Sample("s", content, tuple(references) or (content,), prompt=prompt)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    return tmp_path / "hf-hub"


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's cache pointed at an empty folder; monkeypatch restores the previous setting."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    return tmp_path / "torch-hub"



# -- CLIP (one shared random ViT-B-32) ----------------------------------------------------------------

def test_identical_images_give_the_maximum_clip_similarity():
    image = smooth_image(0, size=96)
    assert float(CLIPContentSimilarity(**SMALL_CLIP)(image, sample(image))) == pytest.approx(100.0, abs=1e-3)
    # a copy (not the same tensor) with two identical references: the mean is still the maximum
    style = CLIPStyleSimilarity(**SMALL_CLIP)
    assert float(style(image.clone(), sample(smooth_image(1), image, image))) == pytest.approx(100.0, abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_content_similarity_falls_as_the_content_is_destroyed(seed):
    # Even a random-weight ViT orders these: slight noise > shuffled 16x16 patches > a constant image
    # (measured margins >= 2.5 and >= 14 points over seeds 0-4).
    content = smooth_image(seed)
    metric = CLIPContentSimilarity(**SMALL_CLIP)
    slight = float(metric(noisy(content), sample(content)))
    shuffled = float(metric(shuffled_patches(content), sample(content)))
    constant = float(metric(torch.full_like(content, 0.5), sample(content)))
    assert 100.0 > slight > shuffled + 1.0 > constant + 5.0


def test_clip_style_similarity_is_the_mean_over_references():
    metric = CLIPStyleSimilarity(**SMALL_CLIP)
    output, ref_a, ref_b = smooth_image(3), smooth_image(4), smooth_image(5)
    a = float(metric(output, sample(output, ref_a)))
    b = float(metric(output, sample(output, ref_b)))
    assert float(metric(output, sample(output, ref_a, ref_b))) == pytest.approx((a + b) / 2, abs=1e-4)
    assert float(metric.compute()) == pytest.approx((a + b + (a + b) / 2) / 3, abs=1e-4)


def test_clip_text_score_is_clamped_100_cos_with_the_models_own_text_embedding():
    import open_clip

    metric = CLIPTextScore(**SMALL_CLIP)
    image = smooth_image(10, size=160)
    prompt = "a watercolour painting of a lighthouse"
    value = float(metric(image, sample(image, prompt=prompt)))

    model = metric.embedder.model
    with torch.no_grad():
        image_emb = torch.nn.functional.normalize(model.encode_image(to_clip_input(image, size=224)), dim=-1)[0]
        text_emb = torch.nn.functional.normalize(
            model.encode_text(open_clip.get_tokenizer("ViT-B-32")([prompt])), dim=-1)[0]
    assert value == pytest.approx(100.0 * max(float(image_emb @ text_emb), 0.0), abs=1e-3)

    unit = torch.nn.functional.normalize(torch.randn(8), dim=0)
    assert float(clip_score(unit, -unit)) == 0.0  # negative cosine clamps at 0
    assert float(clip_score(unit, unit)) == pytest.approx(100.0, abs=1e-4)


def test_clip_text_score_truncates_at_77_tokens_and_needs_a_prompt():
    metric = CLIPTextScore(**SMALL_CLIP)
    image = smooth_image(11, size=64)
    long_prompt = " ".join(["cat"] * 80)  # one token per word: past 77 with the start/end tokens
    truncated = float(metric(image, sample(image, prompt=long_prompt)))
    assert float(metric(image, sample(image, prompt=long_prompt + " dog dog dog"))) == truncated
    for missing in (None, "", "  "):
        with pytest.raises(ValueError, match="has no prompt"):
            metric(image, sample(image, prompt=missing))


def test_clip_metrics_share_one_model_and_describe_themselves():
    style, content, text = (cls(**SMALL_CLIP) for cls in (CLIPStyleSimilarity, CLIPContentSimilarity, CLIPTextScore))
    assert style.embedder is content.embedder is text.embedder
    # the shared model is not a registered child: metric.to() cannot move it, state_dict() skips it
    assert not list(style.parameters())
    assert [c.describe()["compares"] for c in (style, content, text)] == [
        "output-reference", "output-content", "output-prompt"]
    assert all(c.describe()["higher_is_better"] is True for c in (style, content, text))
    assert "ViT-L-14" in style.describe()["pretrained"]
    lpips_description = LPIPSDistance.describe()
    assert lpips_description["higher_is_better"] is False
    assert lpips_description["compares"] == "output-content"
    assert "alexnet" in lpips_description["pretrained"].lower()


# -- LPIPS ---------------------------------------------------------------------------------------------

def test_identical_images_give_zero_lpips():
    image = smooth_image(0, size=96)
    assert float(LPIPSDistance(weights="random")(image, sample(image))) == pytest.approx(0.0, abs=1e-6)


def test_lpips_rises_as_the_content_is_destroyed():
    content = smooth_image(0, size=128)
    metric = LPIPSDistance(weights="random")
    slight = float(metric(noisy(content), sample(content)))
    shuffled = float(metric(shuffled_patches(content), sample(content)))
    assert 0.0 < slight < shuffled


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # lpips' torchvision call
def test_lpips_equals_the_lpips_package_on_the_same_random_trunk():
    import lpips

    output, content = smooth_image(6, size=64), smooth_image(7, size=64)
    reference = seeded(lambda: lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False))
    with torch.no_grad():
        expected = float(reference(output[None] * 2 - 1, content[None] * 2 - 1))
    assert float(LPIPSDistance(weights="random")(output, sample(content))) == pytest.approx(expected, rel=1e-5)


def test_lpips_network_takes_only_unit_range_images_and_converts_them_itself():
    import lpips

    metric = LPIPSDistance(weights="random")
    image = smooth_image(0, size=32)
    for wrong in (image * 2 - 1, image * 255):  # [-1, 1] or 0..255 handed to the wrapper: refused
        with pytest.raises(ValueError, match=r"expects \[0, 1\]"):
            metric.network(wrong, image)
    # The pitfall it prevents: the raw network scores a [0, 1] pair without complaint, and lower.
    other = smooth_image(1, size=32)
    raw = seeded(lambda: lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False))
    with torch.no_grad():
        silently_wrong = float(raw(image[None], other[None]))
    assert float(metric.network(image, other)) > silently_wrong


def test_lpips_scores_a_pale_image():
    pale = 0.55 + 0.45 * torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(LPIPSDistance(weights="random")(pale.flip(-1), sample(pale))) > 0.0


# -- weights resolution (these build their own models, so they come last) -------------------------------

@pytest.mark.parametrize("source", ["torch_hub_cache", "path"])
def test_lpips_trunk_checkpoint_loads_like_lpips_own_loading(source, hub_dir, fresh_models, monkeypatch, capsys):
    import lpips
    import torchvision

    # A random stand-in for torchvision's alexnet-owt-7be5be79.pth, saved where torchvision keeps it.
    trunk = seeded(lambda: torchvision.models.alexnet(), seed=3)
    checkpoint = hub_dir / "checkpoints" / "alexnet-owt-7be5be79.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save(trunk.state_dict(), checkpoint)
    metric = LPIPSDistance(weights="torchvision" if source == "torch_hub_cache" else str(checkpoint))
    assert capsys.readouterr().out == ""  # lpips prints "Setting up [LPIPS]..." unless told not to

    # lpips' own loading path (its `tv.alexnet(pretrained=True)`), handed the same trunk.
    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", lambda pretrained: trunk)
    reference = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=False, verbose=False)
    output, content = smooth_image(8, size=64), smooth_image(9, size=64)
    with torch.no_grad():
        expected = float(reference(output[None] * 2 - 1, content[None] * 2 - 1))
    assert float(metric(output, sample(content))) == pytest.approx(expected, rel=1e-5)


def test_lpips_torchvision_trunk_absent_names_the_setting(hub_dir, fresh_models):
    with pytest.raises(WeightsNotFoundError, match=r"^weights: .*alexnet-owt-7be5be79\.pth"):
        LPIPSDistance()
    assert not (hub_dir / "checkpoints").exists()  # nothing was downloaded


@pytest.mark.parametrize("cls", [CLIPStyleSimilarity, CLIPContentSimilarity, CLIPTextScore])
def test_offline_uncached_clip_tag_names_the_setting(cls, empty_hf_cache, fresh_models):
    with pytest.raises(WeightsNotFoundError, match=r"^weights: .*timm/vit_base_patch32_clip_224\.openai"):
        cls(model="ViT-B-32", weights="openai")


def test_cached_clip_tag_loads_offline_with_the_tags_activation(empty_hf_cache, fresh_models):
    import open_clip
    from safetensors.torch import save_file

    # A random stand-in for the openai ViT-B-32 weights, laid out as the Hugging Face cache holds them;
    # openai's weights were trained with QuickGELU, which the plain ViT-B-32 config lacks.
    reference = seeded(lambda: open_clip.create_model("ViT-B-32-quickgelu"), seed=1).eval()
    repo = empty_hf_cache / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(reference.state_dict(), repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors")

    metric = CLIPContentSimilarity(model="ViT-B-32", weights="openai")
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in metric.embedder.model.modules())
    image = smooth_image(12, size=100)
    with torch.no_grad():
        expected = reference.encode_image(to_clip_input(image, size=224), normalize=True)[0]
    torch.testing.assert_close(metric.embedder.image(image), expected, atol=1e-5, rtol=1e-4)


def test_default_vit_l14_random_builds_and_scores_a_pair(fresh_models):
    metric = CLIPContentSimilarity(weights="random")
    assert metric.embedder.image_size == 224
    output, content = smooth_image(13, size=64), smooth_image(14, size=64)
    value = float(metric(output, sample(content)))
    assert -100.0 <= value < 100.0
    # the content's embedding is cached by value: a copy is not embedded again
    assert float(metric(content.clone(), sample(content))) == pytest.approx(100.0, abs=1e-3)
