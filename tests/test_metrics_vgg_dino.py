"""VGG19 (CFSD, Gram) and DINO (structure, appearance, correspondence colour) metrics, on seeded random
weights and small images: known answers, directions, agreement with dense references, weight errors."""

from __future__ import annotations

import pytest
import torch
from skimage import color
from transformers import ViTConfig, ViTModel

from semantix.metrics.dino import (
    CorrespondenceColourError,
    DINOAppearanceSimilarity,
    DINOStructureDistance,
    lab_patch_means,
)
from semantix.metrics.inputs import to_dino_input, to_vgg_input
from semantix.metrics.vgg import CFSD, VGG19_FILE, GramDistance
from semantix.registry import build_metric
from semantix.types import Sample, WeightsNotFoundError

VGG = {"weights": "random", "size": 64}
DINO = {"weights": "random", "short_side": 64, "max_side": 64}


def image(seed: int, size: int = 64) -> torch.Tensor:
    """Smooth colour blobs plus texture: structure and colour for random networks to see."""
    g = torch.Generator().manual_seed(seed)
    blobs = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bilinear")[0]
    return (0.7 * blobs + 0.3 * torch.rand(3, size, size, generator=g)).clamp(0, 1)


def shuffle_patches(x: torch.Tensor, patch: int = 16, seed: int = 0) -> torch.Tensor:
    """The image's patch x patch tiles in a random order: same colours and textures, other layout."""
    c, h, w = x.shape
    rows, cols = h // patch, w // patch
    tiles = x.reshape(c, rows, patch, cols, patch).permute(1, 3, 0, 2, 4).reshape(rows * cols, c, patch, patch)
    tiles = tiles[torch.randperm(rows * cols, generator=torch.Generator().manual_seed(seed))]
    return tiles.reshape(rows, cols, c, patch, patch).permute(2, 0, 3, 1, 4).reshape(c, h, w)


def colour_swap(x: torch.Tensor) -> torch.Tensor:
    """Red and blue exchanged in the top-left quadrant only: a local colour change, layout kept."""
    out = x.clone()
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    out[:, :h, :w] = x[[2, 1, 0], :h, :w]
    return out


@pytest.fixture(scope="module")
def vgg_metrics():
    return CFSD(**VGG, chunk_size=37), GramDistance(**VGG)


@pytest.fixture(scope="module")
def dino_metrics():
    return DINOStructureDistance(**DINO), DINOAppearanceSimilarity(**DINO), CorrespondenceColourError(**DINO)


# -- VGG: CFSD and Gram ------------------------------------------------------------------------------
def test_vgg_identical_is_zero_and_degradations_raise_it(vgg_metrics):
    cfsd, gram = vgg_metrics
    content = image(0)
    assert float(cfsd.score(content, content)) == 0.0
    assert float(gram.score(content, (content,))) == 0.0
    assert float(cfsd.score(shuffle_patches(content), content)) > 0.0
    shifted = content * 0.5 + 0.25
    assert float(gram.score(shifted, (content,))) > 0.0
    # Gram matrices pool over locations: a shuffled layout barely moves them, a colour change does.
    assert float(gram.score(shuffle_patches(content), (content,))) < float(gram.score(shifted, (content,)))


def dense_cfsd(content_features: torch.Tensor, output_features: torch.Tensor) -> torch.Tensor:
    """StyleID's evaluation formula with the whole N x N matrices (location order w-major as theirs),
    in float64 as the metric (in float32 its rounding is larger than these random-weight values)."""
    def log_rows(f):
        _, c, _, _ = f.shape
        flat = f.transpose(1, 3).reshape(1, -1, c).double() / c
        return torch.log_softmax(flat @ flat.transpose(1, 2), dim=-1).reshape(1, -1)

    return torch.nn.functional.kl_div(log_rows(output_features), log_rows(content_features).exp(),
                                      reduction="batchmean")


def direct_activations(trunk: torch.nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 by running the trunk layer by layer."""
    found = []
    for index, module in enumerate(trunk):
        x = module(x)
        if index in (1, 6, 11, 20, 29):
            found.append(x.clone())
    return found


def test_chunked_cfsd_equals_dense_formula(vgg_metrics):
    cfsd, _ = vgg_metrics
    content, output = image(0), shuffle_patches(image(0))
    with torch.no_grad():
        f_content = direct_activations(cfsd.trunk(), to_vgg_input(content, size=64))[2]
        f_output = direct_activations(cfsd.trunk(), to_vgg_input(output, size=64))[2]
        expected = float(dense_cfsd(f_content, f_output))
    assert f_content.shape[-1] ** 2 % cfsd.chunk_size != 0  # the last chunk is a partial one
    assert expected > 0
    assert float(cfsd.score(output, content)) == pytest.approx(expected, rel=1e-4)


def test_gram_distance_equals_direct_computation(vgg_metrics):
    _, gram = vgg_metrics
    output, refs = image(1), (image(2), image(3))
    expected = 0.0
    with torch.no_grad():
        acts_out = direct_activations(gram.trunk(), to_vgg_input(output, size=64))
        for ref in refs:
            acts_ref = direct_activations(gram.trunk(), to_vgg_input(ref, size=64))
            for a, b in zip(acts_out, acts_ref, strict=True):
                _, c, h, w = a.shape
                g_a = torch.einsum("ci,di->cd", a.reshape(c, -1), a.reshape(c, -1)) / (c * h * w)
                g_b = torch.einsum("ci,di->cd", b.reshape(c, -1), b.reshape(c, -1)) / (c * h * w)
                expected += float(torch.linalg.matrix_norm(g_a - g_b) ** 2) / len(refs)
    assert float(gram.score(output, refs)) == pytest.approx(expected, rel=1e-4)


def test_vgg_metrics_through_update_and_registry():
    cfsd = build_metric("cfsd", **VGG)
    gram = build_metric("gram", **VGG)
    assert isinstance(cfsd, CFSD) and isinstance(gram, GramDistance)
    content = image(4)
    sample = Sample("s", content, (content, image(5)))
    assert float(cfsd(content, sample)) == 0.0
    assert float(gram(content, sample)) > 0.0  # the mean over both references; the second differs
    with pytest.raises(ValueError, match=r"expects \[0, 1\]"):
        cfsd(content * 255, sample)


def test_one_shared_vgg(vgg_metrics):
    cfsd, gram = vgg_metrics
    assert cfsd.trunk() is gram.trunk() is CFSD(**VGG).trunk()


@pytest.mark.parametrize("cls", [CFSD, GramDistance])
def test_missing_vgg_weights_name_the_setting_and_file(cls, tmp_path, monkeypatch, fresh_models):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    with pytest.raises(WeightsNotFoundError, match="^weights: ") as error:
        cls(weights="torchvision", size=64)
    assert VGG19_FILE in str(error.value)
    with pytest.raises(WeightsNotFoundError, match="^weights: "):
        cls(weights=str(tmp_path / "nowhere.pth"), size=64)


def test_vgg_weights_from_hub_cache_and_from_path(tmp_path, monkeypatch, fresh_models):
    random_trunk = CFSD(**VGG).trunk()
    # torchvision's checkpoint layout ("features.*" keys); the classifier keys are not needed.
    checkpoint = tmp_path / "hub" / "checkpoints" / VGG19_FILE
    checkpoint.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in random_trunk.state_dict().items()}, checkpoint)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    x = to_vgg_input(image(6), size=64)
    expected = random_trunk(x)
    for weights in ("torchvision", str(checkpoint)):
        trunk = CFSD(weights=weights, size=64).trunk()
        assert trunk is not random_trunk
        torch.testing.assert_close(trunk(x), expected)


# -- DINO: structure distance, appearance similarity, correspondence colour error ------------------------
def test_dino_identical_images_give_the_known_answers(dino_metrics):
    structure, appearance, correspondence = dino_metrics
    content = image(0)
    assert float(structure.score(content, content)) == 0.0
    assert float(appearance.score(content, (content,))) == pytest.approx(100.0, abs=1e-3)
    assert float(correspondence.score(content, (content,))) == pytest.approx(0.0, abs=1e-4)


def test_dino_degradations_move_metrics_the_right_way(dino_metrics):
    structure, appearance, correspondence = dino_metrics
    content = image(0)
    assert float(structure.score(shuffle_patches(content), content)) > 0.0
    assert float(appearance.score(image(7), (content,))) < 100.0
    assert float(appearance.score(content * 0.5 + 0.25, (content,))) < 100.0
    assert float(correspondence.score(colour_swap(content), (content,))) > 1.0  # deltaE76 units


def test_structure_distance_equals_dense_reference(dino_metrics):
    structure, _, _ = dino_metrics
    content, output = image(0), shuffle_patches(image(0))
    model = structure.model()
    block = model.layers[-1]

    def self_similarity(x):
        # Keys recomputed from the last block's input, not from the metric's hook.
        with torch.no_grad():
            out = model(pixel_values=to_dino_input(x, 64, 64), interpolate_pos_encoding=True, output_hidden_states=True)
            keys = block.attention.k_proj(block.layernorm_before(out.hidden_states[-2]))[0]
        return torch.nn.functional.cosine_similarity(keys[:, None, :], keys[None, :, :], dim=-1, eps=1e-8)

    s_output, s_content = self_similarity(output), self_similarity(content)
    assert s_output.shape == (1 + 8 * 8, 1 + 8 * 8)  # CLS + 8 x 8 patches of a 64 px image
    expected = float(((s_output - s_content) ** 2).mean())
    assert expected > 0
    assert float(structure.score(output, content)) == pytest.approx(expected, rel=1e-4)


def test_appearance_is_cosine_of_last_block_cls_tokens(dino_metrics):
    _, appearance, _ = dino_metrics
    output, refs = image(1), (image(2), image(3))
    with torch.no_grad():
        cls = [appearance.model()(pixel_values=to_dino_input(x, 64, 64), interpolate_pos_encoding=True,
                                  output_hidden_states=True).hidden_states[-1][0, 0] for x in (output, *refs)]
    expected = 100 * sum(float(torch.cosine_similarity(cls[0], c, dim=0)) for c in cls[1:]) / 2
    assert float(appearance.score(output, refs)) == pytest.approx(expected, rel=1e-4)


def test_correspondence_colour_error_matches_a_brute_force_loop(dino_metrics):
    _, _, correspondence = dino_metrics
    output, refs = colour_swap(image(0)), (image(0), image(8))
    model = correspondence.model()

    def patches(x):
        with torch.no_grad():
            tokens = model(pixel_values=to_dino_input(x, 64, 64), interpolate_pos_encoding=True,
                           output_hidden_states=True).hidden_states[-1][0, 1:]
        return torch.nn.functional.normalize(tokens, dim=1), lab_patch_means(x, (8, 8))

    out_tokens, out_lab = patches(output)
    ref_pairs = [patches(r) for r in refs]
    ref_tokens = torch.cat([t for t, _ in ref_pairs])
    ref_lab = torch.cat([lab for _, lab in ref_pairs])
    errors = []
    for i in range(out_tokens.shape[0]):
        j = max(range(ref_tokens.shape[0]), key=lambda k: float(out_tokens[i] @ ref_tokens[k]))
        errors.append(float(torch.linalg.vector_norm(out_lab[i] - ref_lab[j])))
    expected = sum(errors) / len(errors)
    assert expected > 0
    # Chunked matching (5 output patches per product, a partial last chunk) gives the same matches.
    assert float(CorrespondenceColourError(**DINO, chunk_size=5).score(output, refs)) == pytest.approx(expected, rel=1e-4)
    assert float(correspondence.score(output, refs)) == pytest.approx(expected, rel=1e-4)


def test_lab_patch_means_are_region_means():
    x = image(9, size=16)
    means = lab_patch_means(x, (2, 4))
    lab = color.rgb2lab(x.permute(1, 2, 0).double().numpy())
    assert means.shape == (8, 3)
    torch.testing.assert_close(means[5], torch.tensor(lab[8:16, 4:8].reshape(-1, 3).mean(0)).float(), atol=1e-4, rtol=0)


def test_one_shared_dino(dino_metrics):
    models = {id(m.model()) for m in dino_metrics}
    assert len(models) == 1
    assert build_metric("structure_dino", **DINO).model() is dino_metrics[0].model()


@pytest.mark.parametrize("name", ["structure_dino", "dino_appearance", "correspondence_colour"])
def test_missing_dino_weights_name_the_setting_and_files(name, tmp_path, fresh_models):
    for weights in (str(tmp_path / "no-such-folder"), "semantix-tests/no-such-model"):
        with pytest.raises(WeightsNotFoundError, match="^weights: ") as error:
            build_metric(name, weights=weights)
        assert "config.json" in str(error.value) and "model.safetensors" in str(error.value)


def test_dino_weights_from_a_local_folder(tmp_path, fresh_models):
    # A narrow ViT stands in for DINO: the loading path does not depend on the width.
    config = ViTConfig(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=32)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    metric = DINOStructureDistance(weights=str(tmp_path / "vit"), short_side=32, max_side=32)
    assert metric.model().config.hidden_size == 32
    content = image(0, size=32)
    assert float(metric.score(shuffle_patches(content, patch=8), content)) > 0.0
