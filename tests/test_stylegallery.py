"""StyleGallery-style region matching: stage-1 regions, stage-2 matching, regional attention, and the
method on the tiny backbone."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_rand_score

from semantix.diffusion.regions import (
    cluster_distance,
    cluster_regions,
    match_regions,
    merge_close_clusters,
    positional_overlap,
    regional_attention,
    remove_small_regions,
    split_regions_by_depth,
    step_weights,
    token_labels,
    token_region_masks,
)
from semantix.methods.stylegallery import ImageRegions, StyleGallery
from semantix.registry import METHODS

# Few steps and few K-means restarts: code paths, not quality (the tiny UNet has random weights).
SMALL = {"inversion_steps": 2, "opt_steps": 2, "kmeans_n_init": 2, "k_max": 4}


# -- stage 1 -----------------------------------------------------------------------------------------
def planted(h=12, w=12, d=8, noise=0.05, seed=0):
    """Three Gaussian blobs laid out as three horizontal bands: ((d, h, w) features, (h, w) labels)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), h // 3)[:, None].repeat(w, axis=1)
    centres = np.linalg.qr(rng.normal(size=(d, 3)))[0].T * 5  # orthogonal, well separated
    feats = centres[labels] + rng.normal(0, noise, (h, w, d))
    return feats.transpose(2, 0, 1), labels


def test_clustering_recovers_planted_clusters():
    features, labels = planted()
    result = cluster_regions(features, k_min=2, k_max=10, pca_components=60, random_state=0)
    assert result.k == 3
    assert set(result.silhouette) == set(range(2, 11))
    assert max(result.silhouette, key=result.silhouette.get) == 3
    assert adjusted_rand_score(labels.ravel(), result.labels.ravel()) == 1.0
    assert result.reduced.shape == (144, 8)  # PCA components capped by the 8 channels


def test_step_weights_favour_less_noisy_steps():
    w = step_weights(4)  # noisiest first
    assert np.allclose(w, [0.1, 0.2, 0.3, 0.4]) and np.all(np.diff(w) > 0)
    assert np.allclose(step_weights(3, "uniform"), 1 / 3)


def test_small_regions_take_their_most_common_neighbour():
    labels = np.zeros((12, 12), dtype=np.int64)
    labels[:, 6:] = 1
    labels[4:7, 6:9] = 2  # 9 pixels at the boundary: 3 neighbours labelled 0, 9 labelled 1
    labels[9:11, 1:3] = 3  # 4 pixels inside region 0
    out = remove_small_regions(labels, min_pixels=20)
    expected = np.zeros((12, 12), dtype=np.int64)
    expected[:, 6:] = 1
    assert np.array_equal(out, expected)
    # Regions at or above the size limit stay (labels compacted in order).
    kept = remove_small_regions(labels, min_pixels=4)
    assert np.array_equal(kept, labels)


def test_merging_joins_close_clusters_and_keeps_distant_ones():
    assert math.isclose(cluster_distance(np.array([1.0, 0.0]), np.array([0.0, 3.0])), math.sqrt(2))
    labels = np.repeat(np.arange(3), 4)
    means = np.array([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 0.0, 1.0]])  # d(0,1) ~ 0.1, d(0,2) ~ 1.41
    features = means[labels]
    assert np.array_equal(merge_close_clusters(labels, features, 0.85), [0] * 8 + [1] * 4)
    assert np.array_equal(merge_close_clusters(labels, features, 0.05), labels)


def test_depth_split_separates_two_depth_modes():
    labels = np.zeros((8, 8), dtype=np.int64)
    depth = np.full((8, 8), 0.1)
    depth[:, 4:] = 0.9
    split = split_regions_by_depth(labels, depth, min_gap=0.2)
    assert split.max() == 1 and (split[:, :4] == 0).all() and (split[:, 4:] == 1).all()
    assert split_regions_by_depth(labels, np.full((8, 8), 0.5), min_gap=0.2).max() == 0
    with pytest.raises(ValueError, match="depth_model"):
        StyleGallery(depth_split=True)


# -- stage 2 -----------------------------------------------------------------------------------------
def test_matching_picks_the_right_region_across_two_references():
    a, b, c, d = np.eye(6)[:4] * 3  # four orthogonal "semantic" directions
    rng = np.random.default_rng(0)

    def image(top_or_left, bottom_or_right, vertical):
        labels = np.zeros((8, 8), dtype=np.int64)
        if vertical:
            labels[:, 4:] = 1
        else:
            labels[4:, :] = 1
        feats = np.where(labels[..., None] == 0, top_or_left, bottom_or_right) + rng.normal(0, 0.05, (8, 8, 6))
        return torch.tensor(feats.transpose(2, 0, 1), dtype=torch.float32), labels

    content = image(a, b, vertical=False)  # top: a, bottom: b
    ref0 = image(c, b, vertical=True)  # left: c, right: b
    ref1 = image(d, a, vertical=False)  # top: d, bottom: a (the wrong place for content's top region)
    regions = [ImageRegions(lab, 2, {}, 2, False) for _, lab in (content, ref0, ref1)]
    matches = StyleGallery().match([None] * 3, [content[0], ref0[0], ref1[0]], regions)
    assert [(m.content_region, m.reference, m.reference_region) for m in matches] == [(0, 1, 1), (1, 0, 1)]
    assert [m.global_region for m in matches] == [3, 1]  # ref0 has regions 0, 1; ref1 has 2, 3
    assert matches[0].position == 0.0 and math.isclose(matches[1].position, 1 / 3, rel_tol=1e-6)
    json.dumps([m.to_dict() for m in matches])


def test_match_score_weights_and_positional_overlap():
    top = np.zeros((4, 4), dtype=np.int64)
    top[2:] = 1
    iou = positional_overlap(top, np.kron(top, np.ones((2, 2), dtype=np.int64)))  # other resolution
    assert torch.equal(iou, torch.eye(2))
    # Semantic alone prefers column 0; with position weighted up, column 1 wins.
    stat, sem, pos = torch.zeros(1, 2), torch.tensor([[0.5, 0.4]]), torch.tensor([[0.0, 1.0]])
    assert match_regions([stat], [sem], [pos], (0.25, 1.0, 0.125))[0].reference_region == 1
    assert match_regions([stat], [sem], [pos], (0.25, 1.0, 0.05))[0].reference_region == 0


# -- stage 3 -----------------------------------------------------------------------------------------
def test_regional_attention_equals_a_per_region_loop():
    g = torch.Generator().manual_seed(0)
    heads, c, n, m = 2, 8, 12, 10
    q, k, v = torch.randn(1, n, c, generator=g), torch.randn(1, m, c, generator=g), torch.randn(1, m, c, generator=g)
    query_regions = torch.randint(0, 3, (n,), generator=g)
    key_masks = torch.zeros(4, m, dtype=torch.bool)  # two references: tokens 0-5 and 6-9
    key_masks[0, 0:3] = key_masks[1, 2:6] = key_masks[2, 6:8] = key_masks[3, 7:10] = True  # (overlaps allowed)
    match = torch.tensor([3, 0, 1])
    out = regional_attention(q, k, v, heads, query_regions, key_masks, match)

    expected = torch.zeros_like(q)
    d = c // heads
    for r in range(3):
        rows, cols = query_regions == r, key_masks[match[r]]
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            qs, ks, vs = q[0, rows, sl], k[0, cols, sl], v[0, cols, sl]
            expected[0, rows, sl] = torch.softmax(qs @ ks.T / math.sqrt(d), dim=-1) @ vs
    assert torch.allclose(out, expected, atol=1e-5)


def test_token_maps_keep_every_region():
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[0, 0] = 1  # one pixel
    assert token_labels(labels, (4, 4)).tolist() == [0] * 16  # a token takes the majority label
    masks = token_region_masks(labels, (2, 2))
    assert masks.shape == (2, 4) and masks[1].tolist() == [True, False, False, False] and masks[0].all()


# -- the method --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stylegallery-cache")


@pytest.fixture(scope="module")
def method(backbone, cache_dir):
    m = StyleGallery(**SMALL)
    m.prepare(backbone, cache_dir)
    return m


def single(demo):
    return next(s for s in demo.values() if len(s.references) == 1)


def test_runs_changes_the_content_and_is_deterministic(method, demo, backbone):
    sample = single(demo)
    out = method(sample, torch.Generator().manual_seed(0))
    assert out.image.shape == sample.content.shape
    assert torch.isfinite(out.image).all() and 0 <= out.image.min() and out.image.max() <= 1
    assert (out.image - sample.content).abs().mean() > 1e-3
    diag = out.diagnostics
    json.dumps(diag)
    assert len(diag["loss"]) == SMALL["opt_steps"] and diag["loss_content"][0] == 0.0  # starts at the content
    assert [r["image"] for r in diag["regions"]] == ["content", "reference_0"]
    assert len(diag["matches"]) == diag["regions"][0]["regions"]
    assert all(not mod._forward_hooks for mod in backbone.unet.modules())  # capture hooks removed
    assert method.cache.misses == 2
    again = method(sample, torch.Generator().manual_seed(0))  # features from the cache this time
    assert method.cache.hits == 2
    assert torch.equal(out.image, again.image) and out.diagnostics == again.diagnostics


def test_zero_steps_return_the_decoded_content_latent(backbone, cache_dir, demo):
    method = StyleGallery(**{**SMALL, "opt_steps": 0})
    method.prepare(backbone, cache_dir)
    sample = single(demo)
    out = method(sample, torch.Generator().manual_seed(0))
    reconstruction = backbone.decode_latents(backbone.encode_images(sample.content[None]))[0]
    assert torch.equal(out.image, reconstruction)
    assert out.diagnostics["loss"] == []


def test_multi_reference(method, demo):
    multi = [s for s in demo.values() if len(s.references) > 1]
    if not multi:
        pytest.skip("the demo set has no multi-reference sample")
    sample = multi[0]
    out = method(sample, torch.Generator().manual_seed(0))
    assert out.image.shape == sample.content.shape and torch.isfinite(out.image).all()
    assert len(out.diagnostics["regions"]) == 1 + len(sample.references)
    assert {m["reference"] for m in out.diagnostics["matches"]} <= set(range(len(sample.references)))


def test_config_keys_match_the_constructor():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "stylegallery.yaml"))
    assert cfg.pop("_target_") == "semantix.registry.build_method" and cfg.pop("name") == "stylegallery"
    defaults = {k: p.default for k, p in inspect.signature(StyleGallery).parameters.items()}
    assert set(cfg) == set(defaults)
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()} == cfg  # code = config
    assert isinstance(METHODS.build("stylegallery", **cfg), StyleGallery)
    fast = compose(["method=stylegallery_fast"]).method.stylegallery_fast
    assert fast.opt_steps == 10 and fast.name == "stylegallery"
    assert instantiate(fast).opt_steps == 10


def test_dinov2_semantic_features_are_optional(backbone, cache_dir, demo):
    with pytest.raises(ValueError, match="dinov2_weights"):
        StyleGallery(semantic_features="dinov2")
    # Seeded random DINOv2 weights: the code path only (numbers meaningless).
    method = StyleGallery(**{**SMALL, "opt_steps": 0}, semantic_features="dinov2", dinov2_weights="random")
    method.prepare(backbone, cache_dir)
    sample = single(demo)
    assert method._dinov2_tokens(sample.content).shape == (768, 16, 16)
    assert method(sample, torch.Generator().manual_seed(0)).diagnostics["matches"]
