"""Semantic regions, region matching and regional attention: the pieces of StyleGallery-style transfer.

He, Ye, Liu, Wu, Liu, Cai, "StyleGallery", CVPR 2026 (arXiv 2603.10354), as summarised in
docs/baselines.md; the method itself is `semantix.methods.stylegallery`. Each stage is a
small function here so that it can be tested on constructed inputs.

Stage 1, semantic regions of one image (numpy, scikit-learn):

- :func:`step_weights` / :func:`weighted_features`: decoder features of several inversion steps
  averaged with weights that grow towards the less noisy steps;
- :func:`cluster_regions`: optional per-location L2 normalisation, PCA (components capped by the
  number of locations and channels), K-means for each k in a range, k chosen by the silhouette
  score (scikit-learn's ``PCA``, ``KMeans``, ``silhouette_score``);
- :func:`merge_close_clusters`: agglomerative merging of clusters whose :func:`cluster_distance` is
  below a threshold;
- :func:`split_regions_by_depth`: optional split of a region whose depth is bimodal;
- :func:`remove_small_regions`: connected fragments under ``min_pixels`` take the most common label
  of their neighbours.

Stage 2, matching (torch): :func:`region_statistics`, :func:`statistics_similarity`,
:func:`pooled_region_features` + :func:`cosine_similarity_matrix` (semantic similarity),
:func:`positional_overlap`; :func:`match_regions` combines them over all reference images.

Stage 3, regional attention (torch): :func:`token_labels` / :func:`token_region_masks` carry the
label maps to an attention layer's token grid; :func:`regional_attention` computes the attention
output in which each output query attends only to the keys/values of the reference region matched
to its content region.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Clustering",
    "RegionMatch",
    "cluster_distance",
    "cluster_regions",
    "compact_labels",
    "circle_iou",
    "circle_overlap",
    "cosine_similarity_matrix",
    "match_regions",
    "masked_style_target",
    "merge_close_clusters",
    "merge_clusters_pairwise",
    "nearest_token_labels",
    "one_hot_regions",
    "pooled_region_features",
    "positional_overlap",
    "region_statistics",
    "regional_attention",
    "remove_small_regions",
    "remove_small_regions_once",
    "split_regions_by_depth",
    "split_regions_by_depth_span",
    "standardise_per_pixel",
    "statistics_similarity",
    "step_weights",
    "token_grid",
    "token_labels",
    "token_region_masks",
    "weighted_features",
]

STEP_WEIGHTINGS = ("sigmoid", "linear", "uniform")
FEATURE_NORMALIZATIONS = ("channel", "location", "none")


# ---------------------------------------------------------------------------------------------------
# Stage 1: semantic regions
# ---------------------------------------------------------------------------------------------------
def step_weights(num_steps: int, scheme: str = "linear") -> np.ndarray:
    """Weights of ``num_steps`` inversion steps ordered noisiest first, summing to 1.

    ``sigmoid`` (StyleGallery's public code, ``pipeline.py: weighted_features``): in inversion order
    (least noisy first, ``j = 0..T-1``) ``w_j proportional to 1 / (1 + exp(5 (j / T - 0.7)))``, so
    the less noisy steps weigh more, returned reversed (noisiest first); ``linear``: ``w_i
    proportional to i + 1`` (the least noisy step weighs ``num_steps`` times the noisiest one);
    ``uniform``: all equal.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if scheme == "sigmoid":
        j = np.arange(num_steps, dtype=np.float64)
        w = (1.0 / (1.0 + np.exp(5.0 * (j / num_steps - 0.7))))[::-1].copy()
    elif scheme == "linear":
        w = np.arange(1, num_steps + 1, dtype=np.float64)
    elif scheme == "uniform":
        w = np.ones(num_steps, dtype=np.float64)
    else:
        raise ValueError(f"step weighting must be one of {STEP_WEIGHTINGS}, got {scheme!r}")
    return w / w.sum()


def weighted_features(features: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i features[i]`` for ``features`` of shape ``(T, C, h, w)``, in float32."""
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float32, device=features.device)
    if w.shape[0] != features.shape[0]:
        raise ValueError(f"{w.shape[0]} weights for {features.shape[0]} steps")
    return torch.einsum("t,tchw->chw", w, features.float())


@dataclass
class Clustering:
    """Result of :func:`cluster_regions`: ``labels`` ``(h, w)`` int64 in ``0..k-1``; the chosen ``k``;
    ``silhouette`` score per tried k; ``reduced``: the ``(h*w, D)`` PCA features that were clustered."""

    labels: np.ndarray
    k: int
    silhouette: dict[int, float]
    reduced: np.ndarray


def cluster_regions(
    features: np.ndarray | torch.Tensor,
    k_min: int = 2,
    k_max: int = 10,
    pca_components: int = 60,
    random_state: int = 0,
    n_init: int = 10,
    normalize: bool | str = True,
    silhouette_sample_size: int | None = None,
) -> Clustering:
    """K-means regions of a ``(C, h, w)`` feature map, k chosen by the silhouette score.

    1. Locations are rows of ``(h*w, C)``. ``normalize``: ``"channel"`` standardises each channel over
       the locations (mean 0, unbiased std 1: StyleGallery's public code); ``"location"`` (or
       ``True``) scales each row to unit L2 norm; ``"none"`` (or ``False``) leaves them.
    2. PCA to ``min(pca_components, h*w, C)`` components (full SVD, deterministic).
    3. For each ``k`` in ``k_min .. min(k_max, h*w - 1)``: K-means (``n_init`` restarts,
       ``random_state``) and ``silhouette_score`` of its labels (on ``silhouette_sample_size``
       random locations when given). The k with the highest score wins (the smallest on ties).

    Features without structure (all locations equal) give a single region, ``k = 1``.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    feats = features.detach().cpu().float().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if feats.ndim != 3:
        raise ValueError(f"features must be (C, h, w), got shape {feats.shape}")
    c, h, w = feats.shape
    x = feats.reshape(c, h * w).T.astype(np.float64)
    mode = {True: "location", False: "none"}.get(normalize, normalize) if isinstance(normalize, bool) else normalize
    if mode not in FEATURE_NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {FEATURE_NORMALIZATIONS}, got {normalize!r}")
    if mode == "channel":
        x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0, ddof=1), 1e-12)
    elif mode == "location":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = h * w
    reduced = PCA(n_components=min(pca_components, n, c), svd_solver="full").fit_transform(x)
    scores: dict[int, float] = {}
    best: tuple[float, int, np.ndarray] | None = None
    # One thread: the data are small (h*w locations), and OpenMP threads competing with torch's (or
    # with other processes) slowed K-means down a hundredfold on a busy CPU.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # Degenerate data: K-means finds fewer distinct clusters than asked; skipped below.
        warnings.simplefilter("ignore")
        for k in range(max(2, k_min), min(k_max, n - 1) + 1):
            labels = KMeans(n_clusters=k, n_init=n_init, random_state=random_state).fit_predict(reduced)
            if len(np.unique(labels)) < 2:
                continue
            score = float(silhouette_score(reduced, labels, sample_size=silhouette_sample_size,
                                           random_state=random_state))
            scores[k] = score
            if best is None or score > best[0]:
                best = (score, k, labels)
    if best is None:
        return Clustering(np.zeros((h, w), dtype=np.int64), 1, scores, reduced)
    _, k, labels = best
    return Clustering(compact_labels(labels.reshape(h, w)), k, scores, reduced)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel to ``0 .. R-1`` keeping the order of the original label values."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64)


def cluster_distance(mean_a: np.ndarray, mean_b: np.ndarray) -> float:
    """Distance between two clusters: ``|| m_a / |m_a| - m_b / |m_b| ||_2`` of their mean feature
    vectors (Euclidean distance of the unit-normalised means, in ``[0, 2]``; ``sqrt(2 - 2 cos)``)."""
    a = mean_a / max(float(np.linalg.norm(mean_a)), 1e-12)
    b = mean_b / max(float(np.linalg.norm(mean_b)), 1e-12)
    return float(np.linalg.norm(a - b))


def merge_close_clusters(labels: np.ndarray, features: np.ndarray, threshold: float) -> np.ndarray:
    """Merge clusters whose :func:`cluster_distance` is below ``threshold``.

    ``labels``: ``(h, w)`` (or ``(N,)``); ``features``: ``(N, D)`` per location in raster order (e.g.
    the PCA features that were clustered). Agglomerative: the closest pair under the threshold is
    merged, the merged cluster's mean is recomputed over all its locations, and so on until no
    pair is closer than ``threshold``. Returns compact labels of the input's shape.
    """
    flat = np.asarray(labels).reshape(-1).copy()
    feats = np.asarray(features, dtype=np.float64).reshape(flat.shape[0], -1)
    while True:
        ids = np.unique(flat)
        if len(ids) < 2:
            break
        means = np.stack([feats[flat == i].mean(axis=0) for i in ids])
        best = (threshold, -1, -1)
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                d = cluster_distance(means[a], means[b])
                if d < best[0]:
                    best = (d, a, b)
        if best[1] < 0:
            break
        flat[flat == ids[best[2]]] = ids[best[1]]
    return compact_labels(flat.reshape(np.asarray(labels).shape))


def merge_clusters_pairwise(labels: np.ndarray, features: np.ndarray, threshold: float,
                            depth: np.ndarray | None = None, depth_threshold: float | None = None) -> np.ndarray:
    """StyleGallery's merge rule (public code, ``pipeline.py: merge_similar_clusters``), one pass.

    ``features``: ``(N, D)`` per location in raster order (upstream: the 4-channel image latent).
    The mean feature of every cluster is computed once; for every pair ``i < j`` with
    ``||m_i - m_j||_2 < threshold`` (and, when ``depth`` is given, ``|d_i - d_j| < depth_threshold``
    for the clusters' mean depths, the depth map normalised to ``[0, 1]`` over the image) cluster
    ``j`` is mapped to ``i`` (the last such ``i`` wins); chains are followed to their root. Nothing
    is recomputed after a merge. Returns compact labels of the input's shape.
    """
    shape = np.asarray(labels).shape
    flat = compact_labels(np.asarray(labels).reshape(-1))
    feats = np.asarray(features, dtype=np.float64).reshape(flat.shape[0], -1)
    n = int(flat.max()) + 1
    means = np.stack([feats[flat == i].mean(axis=0) for i in range(n)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    ok = dist < threshold
    if depth is not None and depth_threshold is not None:
        d = np.asarray(depth, dtype=np.float64).reshape(-1)
        d = (d - d.min()) / (d.max() - d.min() + 1e-6)
        dm = np.array([d[flat == i].mean() for i in range(n)])
        ok &= np.abs(dm[:, None] - dm[None]) < depth_threshold
    parent = {}
    for i in range(n):
        for j in range(i + 1, n):
            if ok[i, j]:
                parent[j] = i
    root = np.arange(n)
    for j in range(n):
        r = j
        while r in parent:
            r = parent[r]
        root[j] = r
    return compact_labels(root[flat].reshape(shape))


def split_regions_by_depth_span(labels: np.ndarray, depth: np.ndarray, span_threshold: float = 0.75,
                                min_pixels: int = 20, random_state: int = 0) -> np.ndarray:
    """StyleGallery's depth split (public code, ``pipeline.py: refine_with_depth``).

    ``depth`` on the label grid is normalised to ``[0, 1]`` over the image; a region of at least
    ``min_pixels`` whose depth span between its 5th and 95th percentile (sorted values at indices
    ``int(0.05 n)`` and ``int(0.95 n)``) reaches ``span_threshold`` is split in two by 2-means of its
    depths. Returns compact labels.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    labels = np.asarray(labels).astype(np.int64)
    d = np.asarray(depth, dtype=np.float64)
    if d.shape != labels.shape:
        raise ValueError(f"depth {d.shape} and labels {labels.shape} differ in shape")
    d = (d - d.min()) / (d.max() - d.min() + 1e-6)
    out = labels.copy()
    next_label = int(labels.max()) + 1
    for value in np.unique(labels):
        inside = labels == value
        n = int(inside.sum())
        if n < min_pixels:
            continue
        values = np.sort(d[inside])
        if values[int(0.95 * n)] - values[int(0.05 * n)] < span_threshold:
            continue
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sub = KMeans(n_clusters=2, n_init=1, random_state=random_state).fit_predict(d[inside][:, None])
        if 0 < sub.sum() < n:
            idx = np.flatnonzero(inside.ravel())
            out.flat[idx[sub == 1]] = next_label
            next_label += 1
    return compact_labels(out)


def standardise_per_pixel(latent: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean_c x) / (std_c x + eps)`` over the channel axis (dim 1, unbiased std) of a
    ``(B, C, h, w)`` latent: StyleGallery's initialisation of the optimised latent from its last
    inversion latent (public code, ``pipeline.py: remove_style``)."""
    return (latent - latent.mean(dim=1, keepdim=True)) / (latent.std(dim=1, keepdim=True) + eps)


def _neighbour_counts(component: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label counts over the 4-neighbours outside ``component`` (one count per neighbour pair)."""
    counts = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    for axis in (0, 1):
        for shift in (1, -1):
            moved = np.roll(component, shift, axis=axis)
            # np.roll wraps around: blank the wrapped row/column.
            edge = [slice(None), slice(None)]
            edge[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
            moved[tuple(edge)] = False
            neighbours = moved & ~component
            counts += np.bincount(labels[neighbours], minlength=len(counts))
    return counts


def remove_small_regions(labels: np.ndarray, min_pixels: int = 20) -> np.ndarray:
    """Relabel every connected fragment (4-connectivity) smaller than ``min_pixels`` to the most
    common label among its 4-neighbours (counted per neighbouring pixel pair; ties: the smallest label).

    A pass visits the fragments smallest first (then in raster order of their first pixel); each one
    is re-measured on the current labels first, so a fragment that an earlier one grew past
    ``min_pixels`` stays. Passes repeat until nothing changes: every relabelling joins two
    components, so this ends. A fragment with no other label around it (the whole image) stays.
    Returns compact labels.
    """
    from scipy import ndimage

    labels = np.asarray(labels).astype(np.int64).copy()
    if labels.ndim != 2:
        raise ValueError(f"labels must be (h, w), got shape {labels.shape}")
    while True:
        fragments = []
        for value in np.unique(labels):
            components, _ = ndimage.label(labels == value)
            sizes = np.bincount(components.ravel())
            ids, first = np.unique(components.ravel(), return_index=True)
            fragments += [(int(sizes[c]), int(f)) for c, f in zip(ids, first, strict=True)
                          if c and sizes[c] < min_pixels]
        changed = False
        for _, first in sorted(fragments):
            value = labels.flat[first]
            components, _ = ndimage.label(labels == value)
            component = components == components.flat[first]
            if component.sum() >= min_pixels:
                continue
            counts = _neighbour_counts(component, labels)
            if counts.sum() == 0:
                continue
            labels[component] = int(np.argmax(counts))
            changed = True
        if not changed:
            break
    return compact_labels(labels)


def remove_small_regions_once(labels: np.ndarray, min_pixels: int = 20) -> np.ndarray:
    """StyleGallery's clean-up (public code, ``utils.py: remove_small_regions``), one pass.

    For every label of the input and each of its 4-connected fragments under ``min_pixels``: the
    ring of pixels that a one-step cross dilation adds (counted once each), labels from the *input*
    map other than the fragment's own, the most common one (ties: the smallest) replaces the
    fragment in the output. A fragment with no other label around it stays. Returns compact labels.
    """
    from scipy import ndimage

    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (h, w), got shape {labels.shape}")
    cleaned = labels.copy()
    for value in np.unique(labels):
        components, count = ndimage.label(labels == value)
        for c in range(1, count + 1):
            component = components == c
            if component.sum() >= min_pixels:
                continue
            ring = ndimage.binary_dilation(component) & ~component
            around = labels[ring]
            around = around[around != value]
            if around.size == 0:
                continue
            values, counts = np.unique(around, return_counts=True)
            cleaned[component] = values[counts.argmax()]
    return compact_labels(cleaned)


def _otsu_split(values: np.ndarray) -> tuple[float, float, float]:
    """1-D two-class split maximising the between-class variance: (threshold, low mean, high mean)."""
    v = np.sort(values)
    n = len(v)
    cumsum = np.cumsum(v)
    best = (-1.0, v[0], v[0], v[-1])
    for i in range(1, n):
        lo, hi = cumsum[i - 1] / i, (cumsum[-1] - cumsum[i - 1]) / (n - i)
        between = i * (n - i) * (lo - hi) ** 2
        if between > best[0]:
            best = (between, (v[i - 1] + v[i]) / 2, lo, hi)
    return best[1], best[2], best[3]


def split_regions_by_depth(labels: np.ndarray, depth: np.ndarray, min_gap: float = 0.2) -> np.ndarray:
    """Split each region whose depth is bimodal into a near and a far part.

    ``depth``: ``(h, w)`` on the label grid, any scale (normalised here to ``[0, 1]`` over the image).
    For each region, the Otsu threshold of its depths splits it in two; the split is kept when the
    two parts' mean depths differ by more than ``min_gap``. Returns compact labels.
    """
    labels = np.asarray(labels).astype(np.int64)
    d = np.asarray(depth, dtype=np.float64)
    if d.shape != labels.shape:
        raise ValueError(f"depth {d.shape} and labels {labels.shape} differ in shape")
    span = d.max() - d.min()
    d = (d - d.min()) / span if span > 0 else np.zeros_like(d)
    out = labels.copy()
    next_label = int(labels.max()) + 1
    for value in np.unique(labels):
        inside = labels == value
        if inside.sum() < 2:
            continue
        threshold, low, high = _otsu_split(d[inside])
        if high - low > min_gap:
            out[inside & (d > threshold)] = next_label
            next_label += 1
    return compact_labels(out)


# ---------------------------------------------------------------------------------------------------
# Stage 2: region matching
# ---------------------------------------------------------------------------------------------------
def one_hot_regions(labels: torch.Tensor | np.ndarray, num_regions: int | None = None) -> torch.Tensor:
    """``(R, h, w)`` float32 one-hot masks of a ``(h, w)`` label map."""
    lab = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).long()
    r = int(lab.max()) + 1 if num_regions is None else int(num_regions)
    return F.one_hot(lab, r).permute(2, 0, 1).float()


def region_statistics(features: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-region channel mean and standard deviation (population) of ``(C, h, w)`` features over
    a ``(h, w)`` label map: two ``(R, C)`` tensors."""
    masks = one_hot_regions(labels).to(features.device).flatten(1)  # (R, N)
    x = features.float().flatten(1)  # (C, N)
    count = masks.sum(1, keepdim=True).clamp_min(1)
    mean = masks @ x.T / count
    var = (masks @ (x.T**2) / count - mean**2).clamp_min(0)
    return mean, var.sqrt()


def statistics_similarity(mean_a, std_a, mean_b, std_b) -> torch.Tensor:
    """``exp(-(rms(mu_a - mu_b) + rms(sigma_a - sigma_b)))`` for every pair: ``(Ra, Rb)`` in ``(0, 1]``.

    ``rms`` is the root mean square over channels; the features should share one scale (the method
    standardises them per channel over all images first).
    """
    d_mean = torch.cdist(mean_a.float(), mean_b.float()) / math.sqrt(mean_a.shape[1])
    d_std = torch.cdist(std_a.float(), std_b.float()) / math.sqrt(std_a.shape[1])
    return torch.exp(-(d_mean + d_std))


def pooled_region_features(features: torch.Tensor, labels, num_regions: int | None = None,
                           min_coverage: float | None = None) -> torch.Tensor:
    """Mean of ``(D, h', w')`` features over each region of a ``(h, w)`` label map.

    The one-hot masks are resampled to the feature grid by area (``adaptive_avg_pool2d``). Default:
    each feature location counts with the fraction of it that the region covers (area weights).
    ``min_coverage``: the plain mean of the locations the region covers by more than that fraction
    (StyleGallery's public code keeps the DINOv2 tokens whose 32x32-pixel block at 512 px holds
    more than 10 region pixels: ``10 / 1024``); a region that covers no location by that much falls
    back to area weights. Returns ``(R, D)``.
    """
    masks = one_hot_regions(labels, num_regions).to(features.device)
    weights = F.adaptive_avg_pool2d(masks[None], features.shape[-2:])[0].flatten(1)  # (R, N')
    if min_coverage is not None:
        kept = (weights > min_coverage).float()
        weights = torch.where(kept.sum(1, keepdim=True) > 0, kept, weights)
    pooled = weights @ features.float().flatten(1).T
    return pooled / weights.sum(1, keepdim=True).clamp_min(1e-12)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(Ra, Rb)`` cosine similarities of the rows of ``a`` and ``b``."""
    return F.normalize(a.float(), dim=1, eps=1e-12) @ F.normalize(b.float(), dim=1, eps=1e-12).T


def positional_overlap(labels_a, labels_b) -> torch.Tensor:
    """Intersection over union of every pair of regions, ``labels_b`` resized to ``labels_a``'s grid
    (nearest neighbour; normalised image coordinates): ``(Ra, Rb)`` in ``[0, 1]``."""
    a = torch.as_tensor(np.asarray(labels_a)).long()
    b = torch.as_tensor(np.asarray(labels_b)).long()
    if b.shape != a.shape:
        b = F.interpolate(b[None, None].float(), size=tuple(a.shape), mode="nearest")[0, 0].long()
    ma = one_hot_regions(a).flatten(1)
    mb = one_hot_regions(b, int(np.asarray(labels_b).max()) + 1).flatten(1)
    inter = ma @ mb.T
    union = ma.sum(1, keepdim=True) + mb.sum(1)[None] - inter
    return inter / union.clamp_min(1)


def _enclosing_circles(labels: np.ndarray, scale: tuple[float, float]) -> list[tuple[np.ndarray, float]]:
    """Per region: (centre = mean pixel coordinate, radius = distance to its farthest pixel), in
    ``(row, col)`` coordinates multiplied by ``scale``."""
    labels = np.asarray(labels)
    circles = []
    for value in range(int(labels.max()) + 1):
        points = np.argwhere(labels == value).astype(np.float64) * np.asarray(scale)
        if len(points) == 0:
            circles.append((np.zeros(2), 0.0))
            continue
        centre = points.mean(axis=0)
        circles.append((centre, float(np.linalg.norm(points - centre, axis=1).max())))
    return circles


def circle_iou(c1: np.ndarray, r1: float, c2: np.ndarray, r2: float) -> float:
    """Intersection over union of two discs (the lens area formula; 0 when the union is empty)."""
    d = float(np.linalg.norm(np.asarray(c1) - np.asarray(c2)))
    if d >= r1 + r2:
        inter = 0.0
    elif d <= abs(r1 - r2):
        inter = math.pi * min(r1, r2) ** 2
    else:
        a1 = np.clip((d * d + r1 * r1 - r2 * r2) / (2 * d * r1), -1.0, 1.0)
        a2 = np.clip((d * d + r2 * r2 - r1 * r1) / (2 * d * r2), -1.0, 1.0)
        inter = (r1 * r1 * math.acos(a1) + r2 * r2 * math.acos(a2)
                 - 0.5 * math.sqrt(max((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2), 0.0)))
    union = math.pi * r1 * r1 + math.pi * r2 * r2 - inter
    return 0.0 if union == 0 else inter / union


def circle_overlap(labels_a, labels_b) -> torch.Tensor:
    """StyleGallery's positional term (public code, ``utils.py: minimum_enclosing_circle`` and
    ``calculate_overlap_ratio``): the IoU of the discs around every pair of regions (centre: the
    region's mean pixel; radius: its farthest pixel), ``labels_b``'s coordinates scaled to
    ``labels_a``'s grid. ``(Ra, Rb)`` in ``[0, 1]``."""
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    scale = (a.shape[0] / b.shape[0], a.shape[1] / b.shape[1])
    circles_a, circles_b = _enclosing_circles(a, (1.0, 1.0)), _enclosing_circles(b, scale)
    out = torch.zeros(len(circles_a), len(circles_b))
    for i, (ca, ra) in enumerate(circles_a):
        for j, (cb, rb) in enumerate(circles_b):
            out[i, j] = circle_iou(ca, ra, cb, rb)
    return out


@dataclass
class RegionMatch:
    """The reference region chosen for one content region, with its score and the score's parts."""

    content_region: int
    reference: int  # index into Sample.references
    reference_region: int  # label within that reference's region map
    global_region: int  # index over all references' regions, in reference order
    score: float
    statistics: float
    semantic: float
    position: float

    def to_dict(self) -> dict:
        return asdict(self)


def match_regions(
    statistics: Sequence[torch.Tensor],
    semantic: Sequence[torch.Tensor],
    position: Sequence[torch.Tensor],
    weights: tuple[float, float, float] = (0.25, 1.0, 0.125),
) -> list[RegionMatch]:
    """For each content region the best reference region over all references.

    Each argument holds one ``(R_content, R_ref_j)`` similarity matrix per reference ``j``; the
    score is ``w_stat * statistics + w_sem * semantic + w_pos * position`` and the highest one wins
    (the first on ties, i.e. the earlier reference and the lower region label).
    """
    if not (len(statistics) == len(semantic) == len(position)) or not statistics:
        raise ValueError("need one statistics, semantic and position matrix per reference (at least one)")
    w_stat, w_sem, w_pos = weights
    stat, sem, pos = (torch.cat([m.float().cpu() for m in ms], dim=1) for ms in (statistics, semantic, position))
    score = w_stat * stat + w_sem * sem + w_pos * pos
    owner = torch.cat([torch.full((m.shape[1],), j) for j, m in enumerate(statistics)])
    local = torch.cat([torch.arange(m.shape[1]) for m in statistics])
    best = score.argmax(dim=1)
    return [
        RegionMatch(content_region=r, reference=int(owner[g]), reference_region=int(local[g]), global_region=int(g),
                    score=float(score[r, g]), statistics=float(stat[r, g]), semantic=float(sem[r, g]),
                    position=float(pos[r, g]))
        for r, g in enumerate(best.tolist())
    ]


# ---------------------------------------------------------------------------------------------------
# Stage 3: regional attention
# ---------------------------------------------------------------------------------------------------
def token_grid(latent_hw: tuple[int, int], num_tokens: int) -> tuple[int, int]:
    """The ``(h, w)`` token grid of an attention layer with ``num_tokens`` tokens for a latent of
    ``latent_hw`` (the UNet halves both sides per level)."""
    h, w = latent_hw
    factor = round(math.sqrt(h * w / num_tokens))
    if factor < 1 or (h // factor) * (w // factor) != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a grid of a {h}x{w} latent")
    return h // factor, w // factor


def token_labels(labels, size: tuple[int, int], num_regions: int | None = None) -> torch.Tensor:
    """``(h*w,)`` label of each token of a ``size`` grid: the region covering most of it (area
    fractions from ``adaptive_avg_pool2d`` of the one-hot masks; ties: the lower label)."""
    masks = one_hot_regions(labels, num_regions)
    return F.adaptive_avg_pool2d(masks[None], size)[0].argmax(0).flatten()


def token_region_masks(labels, size: tuple[int, int], num_regions: int | None = None) -> torch.Tensor:
    """``(R, h*w)`` bool: token overlaps region (``adaptive_max_pool2d`` of the one-hot masks).

    Every non-empty region keeps at least one token at any grid size, so a matched reference region
    never leaves a query without keys.
    """
    masks = one_hot_regions(labels, num_regions)
    return F.adaptive_max_pool2d(masks[None], size)[0].flatten(1) > 0


def nearest_token_labels(labels, size: tuple[int, int]) -> torch.Tensor:
    """``(h*w,)`` label of each token of a ``size`` grid by nearest-neighbour resizing of the label map
    (``F.interpolate(mode="nearest")``, as StyleGallery's public code resizes its region masks)."""
    lab = torch.as_tensor(np.asarray(labels)).float()[None, None]
    return F.interpolate(lab, size=size, mode="nearest")[0, 0].long().flatten()


def masked_style_target(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        query_mask: torch.Tensor, key_mask: torch.Tensor,
                        query_scale: float = 1.5) -> torch.Tensor:
    """StyleGallery's per-region style target (public code, ``utils.py: style_loss`` called from
    ``pipeline.py: get_style_loss``): queries outside the content region and keys/values outside the
    matched reference region are multiplied by zero, not removed, so the zeroed keys stay in the
    softmax (logit 0, value 0); the queries are multiplied by ``query_scale`` before the usual
    ``1 / sqrt(head_dim)`` scaling. ``q``: ``(B, N, C)``; ``k``, ``v``: ``(B, M, C)``; masks
    ``(N,)``/``(M,)`` (0/1 or bool). Returns ``(B, N, C)``."""
    b, n, c = q.shape
    qm = q * query_mask.to(q.dtype).to(q.device)[None, :, None] * query_scale
    km = k * key_mask.to(k.dtype).to(k.device)[None, :, None]
    vm = v * key_mask.to(v.dtype).to(v.device)[None, :, None]
    split = [x.reshape(b, x.shape[1], heads, c // heads).transpose(1, 2) for x in (qm, km, vm)]
    out = F.scaled_dot_product_attention(*split)
    return out.transpose(1, 2).reshape(b, n, c)


def regional_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    query_regions: torch.Tensor,
    key_masks: torch.Tensor,
    match: torch.Tensor,
    scale: float | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Multi-head attention in which each query attends only to its matched region's keys.

    ``q``: ``(B, N, C)`` projected queries; ``k``, ``v``: ``(B, M, C)`` projected keys/values (all
    references' tokens concatenated); ``query_regions``: ``(N,)`` content region of each query;
    ``key_masks``: ``(G, M)`` bool, key token ``j`` belongs to (global) reference region ``g``;
    ``match``: ``(R,)`` global reference region matched to each content region. Query ``i`` attends
    to the keys ``j`` with ``key_masks[match[query_regions[i]], j]``:
    ``softmax(q k^T * scale + mask) v`` per head (``scale`` default ``1 / sqrt(C / heads)``), i.e.
    what the layer computes before its output projection. Returns ``(B, N, C)``. ``check``: raise
    when a query has no allowed key (one device synchronisation; callers that built the masks with
    :func:`token_region_masks` can skip it).
    """
    b, n, c = q.shape
    m = k.shape[1]
    head_dim = c // heads
    allowed = key_masks.to(q.device)[match.to(q.device)[query_regions.to(q.device)]]  # (N, M)
    if check and not bool(allowed.any(dim=1).all()):
        raise ValueError("some query has no key in its matched region")
    qh = q.reshape(b, n, heads, head_dim).transpose(1, 2)
    kh = k.reshape(b, m, heads, head_dim).transpose(1, 2)
    vh = v.reshape(b, m, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed, scale=scale)
    return out.transpose(1, 2).reshape(b, n, c)
