"""StyleGallery-style region matching: stage-1 regions, stage-2 matching, regional attention, and the
method on the tiny backbone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONF_DIR, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_rand_score

from semantix.diffusion.regions import (
    cluster_distance,
    cluster_regions,
    masked_style_target,
    match_regions,
    merge_close_clusters,
    merge_clusters_pairwise,
    positional_overlap,
    regional_attention,
    remove_small_regions,
    split_regions_by_depth,
    split_regions_by_depth_span,
    standardise_per_pixel,
    step_weights,
    token_labels,
    token_region_masks,
)
from semantix.methods.stylegallery import ImageRegions, StyleGallery
from semantix.registry import METHODS
from semantix.types import WeightsNotFoundError

# Few steps and few K-means restarts: code paths, not quality (the tiny UNet has random weights).
# DINOv2 and the depth model with seeded random weights, as the metric tests do (offline, code paths).
SMALL = {"inversion_steps": 2, "opt_steps": 2, "kmeans_n_init": 2, "k_max": 4, "dinov2_weights": "random",
         "depth_model": "random"}


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


def test_sigmoid_step_weights_are_upstreams():
    # Upstream (pipeline.py: weighted_features), rewritten: over the inversion order (least noisy first).
    total = 15
    indices = torch.arange(total)
    upstream = 1 / (1 + torch.exp(5 * (indices / total - 0.7)))
    upstream = (upstream / upstream.sum()).numpy()
    ours = step_weights(total, "sigmoid")  # noisiest first
    assert np.allclose(ours[::-1], upstream, atol=1e-7)
    # Weighted features: upstream stacks the inversion-order features; ours are noisiest first.
    feats = torch.randn(total, 1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = (feats * torch.as_tensor(upstream, dtype=torch.float32)[:, None, None, None, None]).sum(0)[0]
    from semantix.diffusion.regions import weighted_features
    assert torch.allclose(weighted_features(feats.flip(0)[:, 0], ours), expected, atol=1e-6)


def _upstream_merge(labels, centroids_count, features, threshold, depth=None, depth_threshold=None):
    """StyleGallery's merge_similar_clusters (pipeline.py), rewritten for the test."""
    pixel_means = torch.stack([features[labels == i].mean(0) for i in range(centroids_count)]).float()
    distances = torch.cdist(pixel_means, pixel_means)
    lock = depth is not None
    if lock:
        d = torch.as_tensor(depth).float().view(-1)
        d = (d - d.min()) / (d.max() - d.min() + 1e-6)
        depth_means = torch.stack([d[labels == i].mean() for i in range(centroids_count)])
        depth_distances = (depth_means[None] - depth_means[:, None]).abs()
    mapping = torch.arange(centroids_count)
    merge_map = {}
    for i in range(centroids_count):
        for j in range(i + 1, centroids_count):
            if distances[i, j] < threshold and (not lock or depth_distances[i, j] < depth_threshold):
                merge_map[j] = i
    for remove in list(merge_map):
        keep = merge_map[remove]
        while keep in merge_map:
            keep = merge_map[keep]
        merge_map[remove] = keep
    for remove, keep in merge_map.items():
        mapping[mapping == remove] = keep
    _, inverse = torch.unique(mapping, return_inverse=True)
    return inverse[labels]


@pytest.mark.parametrize("seed", range(6))
def test_cluster_merge_is_upstreams_rule(seed):
    g = torch.Generator().manual_seed(seed)
    k, n = 8, 256
    labels = torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])
    centres = torch.randn(k, 4, generator=g) * 0.6
    latent = centres[labels] + 0.3 * torch.randn(n, 4, generator=g)  # 4-channel image latent per pixel
    depth = torch.rand(n, generator=g)
    for threshold in (0.5, 0.85, 1.2):
        expected = _upstream_merge(labels, k, latent, threshold)
        ours = merge_clusters_pairwise(labels.numpy(), latent.numpy(), threshold)
        assert np.array_equal(ours, expected.numpy())
        expected = _upstream_merge(labels, k, latent, threshold, depth, 0.3)
        ours = merge_clusters_pairwise(labels.numpy(), latent.numpy(), threshold, depth=depth.numpy(),
                                       depth_threshold=0.3)
        assert np.array_equal(ours, expected.numpy())


def test_initial_latent_is_upstreams_per_pixel_standardisation():
    x = torch.randn(1, 4, 9, 7, generator=torch.Generator().manual_seed(1)) * 3 + 1
    # Upstream (pipeline.py: remove_style), rewritten.
    expected = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-8)
    assert torch.allclose(standardise_per_pixel(x), expected, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_masked_tempered_style_target_is_upstreams(seed):
    g = torch.Generator().manual_seed(seed)
    b, heads, n, m, d = 1, 4, 36, 25, 8
    q, k, v = (torch.randn(b, heads, length, d, generator=g) for length in (n, m, m))
    content = (torch.rand(n, generator=g) > 0.5).float()
    style = (torch.rand(m, generator=g) > 0.6).float()
    # Upstream (pipeline.py: get_style_loss -> utils.style_loss, scale=1.5), rewritten: masks of shape
    # (1, 1, tokens, 1) multiply the per-head tensors; the zeroed keys stay in the softmax.
    expected = F.scaled_dot_product_attention(q * content.reshape(1, 1, n, 1) * 1.5,
                                              k * style.reshape(1, 1, m, 1), v * style.reshape(1, 1, m, 1))
    merge = lambda x: x.transpose(1, 2).reshape(b, x.shape[2], heads * d)  # noqa: E731
    ours = masked_style_target(merge(q), merge(k), merge(v), heads, content, style, query_scale=1.5)
    assert torch.allclose(ours, merge(expected), atol=1e-6)
    # Zeroed keys in the softmax are not the same as excluding them (the earlier reading).
    excluded = regional_attention(merge(q) * 1.5, merge(k), merge(v), heads, torch.zeros(n, dtype=torch.long),
                                  style.bool()[None], torch.zeros(1, dtype=torch.long))
    assert not torch.allclose(ours[:, content.bool()], excluded[:, content.bool()], atol=1e-3)


def test_circle_overlap_is_upstreams_position_term():
    from semantix.diffusion.regions import circle_overlap

    def upstream_circle(points):  # utils.py: minimum_enclosing_circle, rewritten
        centre = np.mean(points, axis=0)
        return centre, np.max(np.linalg.norm(points - centre, axis=1))

    def upstream_iou(c1, r1, c2, r2):  # utils.py: circle_intersection_area + calculate_overlap_ratio, rewritten
        d = np.linalg.norm(np.array(c1) - np.array(c2))
        if d >= r1 + r2:
            inter = 0.0
        elif d <= abs(r1 - r2):
            inter = np.pi * min(r1, r2) ** 2
        else:
            p1 = np.clip((d**2 + r1**2 - r2**2) / (2 * d * r1), -1.0, 1.0)
            p2 = np.clip((d**2 + r2**2 - r1**2) / (2 * d * r2), -1.0, 1.0)
            inter = r1**2 * np.arccos(p1) + r2**2 * np.arccos(p2) - 0.5 * np.sqrt(
                (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))
        union = np.pi * r1**2 + np.pi * r2**2 - inter
        return 0.0 if union == 0 else inter / union

    rng = np.random.default_rng(0)
    a = np.repeat(rng.integers(0, 4, (4, 16)), 4, axis=0)  # (16, 16), four labels
    b = np.repeat(np.repeat(rng.integers(0, 3, (4, 4)), 4, axis=0), 4, axis=1)  # (16, 16), three labels
    a, b = np.unique(a, return_inverse=True)[1].reshape(16, 16), np.unique(b, return_inverse=True)[1].reshape(16, 16)
    ours = circle_overlap(a, b).numpy()
    assert ours.shape == (a.max() + 1, b.max() + 1) and 0 < ours.max() <= 1
    for i in range(a.max() + 1):
        for j in range(b.max() + 1):
            expected = upstream_iou(*upstream_circle(np.argwhere(a == i)), *upstream_circle(np.argwhere(b == j)))
            assert abs(ours[i, j] - expected) < 1e-6


def test_dinov2_token_selection_as_upstream():
    from semantix.diffusion.regions import pooled_region_features

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(7, 16, 16, generator=g)
    labels = torch.randint(0, 3, (8, 8), generator=g).numpy()
    labels[0, 0] = 3  # a region of one 64-grid... here 8-grid pixel
    # Upstream (extract_semantic_features), rewritten: the mask nearest-upsampled to 512 px, 32x32
    # blocks, tokens of blocks with more than 10 region pixels, their plain mean.
    for region in range(4):
        mask = torch.as_tensor(labels == region).float()[None, None]
        big = F.interpolate(mask, size=(512, 512), mode="nearest")
        counts = big.unfold(2, 32, 32).unfold(3, 32, 32).reshape(16, 16, -1).sum(-1)
        keep = counts.flatten() > 10
        expected = tokens.flatten(1)[:, keep].mean(1)
        ours = pooled_region_features(tokens, labels, 4, min_coverage=10 / 1024)[region]
        assert torch.allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_small_region_clean_up_as_upstream(seed):
    from scipy import ndimage

    from semantix.diffusion.regions import compact_labels, remove_small_regions_once

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.repeat(rng.integers(0, 4, (6, 6)), 3, axis=0), 3, axis=1)  # 18x18, 9-pixel blocks
    labels[rng.integers(0, 18, 8), rng.integers(0, 18, 8)] = 4  # single pixels
    # Upstream (utils.py: remove_small_regions), rewritten with scipy for cv2: 4-connected components
    # of each label, the cross-dilation ring, neighbour labels from the input map, most common wins.
    cleaned = labels.copy()
    for u in np.unique(labels):
        comps, n = ndimage.label(labels == u)
        for i in range(1, n + 1):
            comp = comps == i
            if comp.sum() >= 20:
                continue
            ring = ndimage.binary_dilation(comp, structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])) & ~comp
            vals = labels[ring]
            vals = vals[vals != u]
            if vals.size:
                v, c = np.unique(vals, return_counts=True)
                cleaned[comp] = v[c.argmax()]
    assert np.array_equal(remove_small_regions_once(labels, 20), compact_labels(cleaned))


def test_depth_span_split_as_upstream():
    labels = np.zeros((8, 8), dtype=np.int64)
    depth = np.full((8, 8), 0.05)
    depth[:, 4:] = 0.95
    split = split_regions_by_depth_span(labels, depth, 0.75)
    assert split.max() == 1 and len(np.unique(split[:, :4])) == 1 and len(np.unique(split[:, 4:])) == 1
    assert split[0, 0] != split[0, 7]
    assert split_regions_by_depth_span(labels, depth, 1.01).max() == 0  # span under the threshold
    assert split_regions_by_depth_span(labels[:4, :4], depth[:4, :4] * 0 + np.eye(4), 0.75, min_pixels=20).max() == 0


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
        StyleGallery(depth_split=True, depth_model=None)


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
    matches = StyleGallery(position_term="mask").match([None] * 3, [content[0], ref0[0], ref1[0]], regions)
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
    out = method(sample, 0)
    assert out.image.shape == sample.content.shape
    assert torch.isfinite(out.image).all() and 0 <= out.image.min() and out.image.max() <= 1
    assert (out.image - sample.content).abs().mean() > 1e-3
    diag = out.diagnostics
    json.dumps(diag)
    # Upstream starts from the standardised last inversion latent, not the content: content loss > 0.
    assert len(diag["loss"]) == SMALL["opt_steps"] and diag["loss_content"][0] > 0.0
    assert [r["image"] for r in diag["regions"]] == ["content", "reference_0"]
    assert len(diag["matches"]) == diag["regions"][0]["regions"]
    assert all(not mod._forward_hooks for mod in backbone.unet.modules())  # capture hooks removed
    assert method.cache.misses == 2
    again = method(sample, 0)  # features from the cache this time
    assert method.cache.hits == 2
    assert torch.equal(out.image, again.image) and out.diagnostics == again.diagnostics


def test_zero_steps_return_the_decoded_initial_latent(backbone, cache_dir, demo):
    from semantix.diffusion.ddim import ddim_invert
    from semantix.diffusion.eps import UNetEpsFn

    sample = single(demo)
    method = StyleGallery(**{**SMALL, "opt_steps": 0})
    method.prepare(backbone, cache_dir)
    out = method(sample, 0)
    # Upstream's start: the last latent of the 15-step (here 2-step) inversion, standardised per pixel.
    latent = backbone.encode_images(sample.content[None])
    last = ddim_invert(latent, UNetEpsFn(backbone.unet, method.embedding), method.scheduler).xts[0]
    expected = backbone.decode_latents(standardise_per_pixel(last.float()))[0]
    assert torch.allclose(out.image, expected, atol=1e-5)
    assert out.diagnostics["loss"] == [] and out.diagnostics["init_latent"] == "inversion_standardised"
    content = StyleGallery(**{**SMALL, "opt_steps": 0, "init_latent": "content"})
    content.prepare(backbone, cache_dir)
    reconstruction = backbone.decode_latents(latent)[0]
    assert torch.equal(content(sample, 0).image, reconstruction)


def test_earlier_readings_still_run(backbone, cache_dir, demo):
    method = StyleGallery(**{**SMALL, "init_latent": "content", "style_target": "exclusive", "merge_features": "pca",
                             "feature_normalization": "location", "region_block": "up_blocks.3",
                             "step_weighting": "linear", "depth_rule": "otsu", "semantic_features": "backbone",
                             "position_term": "mask", "dinov2_pooling": "area",
                             "small_region_rule": "until_stable"})
    method.prepare(backbone, cache_dir)
    out = method(single(demo), 0)
    assert torch.isfinite(out.image).all() and out.diagnostics["loss_content"][0] == 0.0


def test_missing_depth_weights_name_the_key(backbone, cache_dir, tmp_path):
    method = StyleGallery(**{**SMALL, "depth_model": str(tmp_path / "no-such-model")})
    with pytest.raises(WeightsNotFoundError, match="depth_model"):
        method.prepare(backbone, cache_dir)
    method = StyleGallery(**{**SMALL, "depth_split": False, "depth_model": str(tmp_path / "no-such-model")})
    method.prepare(backbone, cache_dir)  # depth splitting off: the model is not needed


def test_multi_reference(method, demo):
    multi = [s for s in demo.values() if len(s.references) > 1]
    if not multi:
        pytest.skip("the demo set has no multi-reference sample")
    sample = multi[0]
    out = method(sample, 0)
    assert out.image.shape == sample.content.shape and torch.isfinite(out.image).all()
    assert len(out.diagnostics["regions"]) == 1 + len(sample.references)
    assert {m["reference"] for m in out.diagnostics["matches"]} <= set(range(len(sample.references)))


def test_fast_config_builds_stylegallery_with_fewer_steps():
    # The shipped config equals the constructor's defaults: tests/test_method_defaults.py.
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "stylegallery.yaml"))
    settings = {k: v for k, v in cfg.items() if k not in ("_target_", "name")}
    assert isinstance(METHODS.build("stylegallery", **settings), StyleGallery)
    fast = compose(["method=stylegallery_fast"]).method.stylegallery_fast
    assert fast.opt_steps == 10 and fast.name == "stylegallery"
    assert fast.depth_split and fast.dinov2_weights == "random" and fast.depth_model == "random"
    assert instantiate(fast).opt_steps == 10


def test_dinov2_semantic_features_are_optional(backbone, cache_dir, demo):
    with pytest.raises(ValueError, match="dinov2_weights"):
        StyleGallery(semantic_features="dinov2", dinov2_weights=None)
    method = StyleGallery(**{**SMALL, "dinov2_weights": "/no/such/dinov2"})
    with pytest.raises(WeightsNotFoundError, match="dinov2_weights"):
        method.prepare(backbone, cache_dir)
    # Seeded random DINOv2 weights: the code path only (numbers meaningless).
    method = StyleGallery(**{**SMALL, "opt_steps": 0}, semantic_features="dinov2")
    method.prepare(backbone, cache_dir)
    sample = single(demo)
    assert method._dinov2_tokens(sample.content).shape == (768, 16, 16)
    assert method(sample, 0).diagnostics["matches"]
