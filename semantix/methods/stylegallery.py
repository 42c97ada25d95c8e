"""StyleGallery: semantic regions, cross-image region matching, regional attention distillation.

He, Ye, Liu, Wu, Liu, Cai, "StyleGallery", CVPR 2026 (arXiv 2603.10354), as the authors' public code
(iiiiiiiword/StyleGallery: pipeline.py, utils.py, demo.py) runs it; that code was read, not
copied. docs/baselines.md has a row per element (upstream function, our key, match or deliberate
difference); every element is a key of conf/method/stylegallery.yaml whose default is upstream's
behaviour, our earlier readings being the other values.

Upstream's pipeline: DDIM inversion of each image over 15 steps (empty prompt), the output of
``up_blocks.2`` averaged over the steps with sigmoid weights favouring the less noisy ones;
per-channel standardisation, PCA to 60 components, K-means for k = 2..10 by silhouette; clusters
merged when their mean 4-channel image latents are closer than 0.85; depth split (Depth Anything
V2) of regions spanning a wide depth range, then a depth-locked re-merge; fragments under 20
pixels take their most common neighbour. Matching over all reference images: 0.25 x statistics
similarity + 1.0 x DINOv2 similarity + 0.125 x the IoU of the regions' enclosing discs. Transfer:
Adam (lr 0.05, 150 steps, one per timestep of a 150-step schedule) on a latent initialised from the
content's last inversion latent standardised per pixel; per content region, L1 between the
output's self-attention output (up_blocks 2 and 3) and the target with queries x 1.5 and
out-of-region queries/keys/values zeroed (kept in the softmax); plus 0.26 x the L1 between the
output's and the content's queries; decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semantix.checkpoints import refusing_pickled_code
from semantix.diffusion.attention import self_attention_layers
from semantix.diffusion.cache import resolve_feature_dtype
from semantix.diffusion.ddim import ddim_invert
from semantix.diffusion.features import capture_block_outputs
from semantix.diffusion.regions import (
    FEATURE_NORMALIZATIONS,
    STEP_WEIGHTINGS,
    RegionMatch,
    circle_overlap,
    cluster_regions,
    cosine_similarity_matrix,
    masked_style_target,
    match_regions,
    merge_close_clusters,
    merge_clusters_pairwise,
    nearest_token_labels,
    pooled_region_features,
    positional_overlap,
    region_statistics,
    regional_attention,
    remove_small_regions,
    remove_small_regions_once,
    split_regions_by_depth,
    split_regions_by_depth_span,
    standardise_per_pixel,
    statistics_similarity,
    step_weights,
    token_grid,
    token_labels,
    token_region_masks,
    weighted_features,
)
from semantix.methods.base import seeded_generator
from semantix.methods.diffusion import DiffusionMethod
from semantix.types import MethodOutput, Sample, WeightsNotFoundError

SEMANTIC_FEATURES = ("backbone", "dinov2")
INIT_LATENTS = ("inversion_standardised", "content")
STYLE_TARGETS = ("masked", "exclusive")
MERGE_FEATURES = ("image_latent", "pca")
DEPTH_RULES = ("span", "otsu")
POSITION_TERMS = ("circle", "mask")
DINOV2_POOLINGS = ("upstream", "area")
SMALL_REGION_RULES = ("once", "until_stable")
DINOV2_MIN_COVERAGE = 10 / 1024  # upstream: > 10 region pixels in a token's 32x32 block at 512 px
DINOV2_SIZE = 224  # [ours] DINOv2 input side (16 x 16 patches of 14 px)


@dataclass
class ImageRegions:
    """Stage-1 result for one image: ``labels`` ``(h, w)`` on the region block's grid, ``0..R-1``."""

    labels: np.ndarray
    k: int  # chosen by the silhouette score
    silhouette: dict[int, float]
    num_merged: int  # clusters left after merging
    depth_split: bool

    @property
    def num_regions(self) -> int:
        return int(self.labels.max()) + 1

    def summary(self, image: str) -> dict:
        return {"image": image, "k": self.k, "silhouette": {str(k): s for k, s in self.silhouette.items()},
                "clusters_after_merge": self.num_merged, "regions": self.num_regions,
                "depth_split": self.depth_split}


class StyleGallery(DiffusionMethod):
    scheduler_kind = "ddim"  # of the stage-1 inversion

    def __init__(
        self,
        # Stage 1: semantic regions
        inversion_steps: int = 15,
        prompt: str = "",
        region_block: str = "up_blocks.2",
        step_weighting: str = "sigmoid",
        feature_normalization: str = "channel",
        pca_components: int = 60,
        k_min: int = 2,
        k_max: int = 10,
        kmeans_n_init: int = 10,
        silhouette_sample_size: int | None = None,
        merge_features: str = "image_latent",
        merge_threshold: float = 0.85,
        min_region_pixels: int = 20,
        small_region_rule: str = "once",
        depth_split: bool = True,
        depth_model: str | None = "depth-anything/Depth-Anything-V2-Large-hf",
        depth_rule: str = "span",
        depth_span_threshold: float = 0.75,
        depth_merge_threshold: float = 0.35,
        depth_merge_gap: float = 0.3,
        depth_split_gap: float = 0.2,
        # Stage 2: region matching
        weight_statistics: float = 0.25,
        weight_semantic: float = 1.0,
        weight_position: float = 0.125,
        position_term: str = "circle",
        semantic_features: str = "dinov2",
        dinov2_weights: str | None = "facebook/dinov2-base",
        dinov2_pooling: str = "upstream",
        # Stage 3: transfer
        attention_layers: Sequence[str | int] = ("up_blocks.2", "up_blocks.3"),
        init_latent: str = "inversion_standardised",
        style_target: str = "masked",
        style_query_scale: float = 1.5,
        content_weight: float = 0.26,
        learning_rate: float = 0.05,
        opt_steps: int = 150,
        opt_timestep: int | None = None,
        cache_inversions: bool = True,
        feature_dtype: str = "float16",
    ):
        if step_weighting not in STEP_WEIGHTINGS:
            raise ValueError(f"step_weighting must be one of {STEP_WEIGHTINGS}, got {step_weighting!r}")
        if semantic_features not in SEMANTIC_FEATURES:
            raise ValueError(f"semantic_features must be one of {SEMANTIC_FEATURES}, got {semantic_features!r}")
        for key, value, allowed in (("feature_normalization", feature_normalization, FEATURE_NORMALIZATIONS),
                                    ("merge_features", merge_features, MERGE_FEATURES),
                                    ("depth_rule", depth_rule, DEPTH_RULES),
                                    ("init_latent", init_latent, INIT_LATENTS),
                                    ("style_target", style_target, STYLE_TARGETS),
                                    ("position_term", position_term, POSITION_TERMS),
                                    ("dinov2_pooling", dinov2_pooling, DINOV2_POOLINGS),
                                    ("small_region_rule", small_region_rule, SMALL_REGION_RULES)):
            if value not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
        if semantic_features == "dinov2" and not dinov2_weights:
            raise ValueError("semantic_features: dinov2 needs DINOv2 weights: set the config key `dinov2_weights` "
                             "(a local transformers Dinov2Model folder, a hub id already in the cache, or `random`)")
        if depth_split and not depth_model:
            raise ValueError("depth_split: true needs a depth model: set the config key `depth_model` to a local "
                             "transformers depth-estimation model folder (e.g. DPT or Depth Anything), or set "
                             "`depth_split: false`")
        if not 2 <= k_min <= k_max:
            raise ValueError(f"need 2 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if opt_steps < 0 or inversion_steps < 1:
            raise ValueError(f"need opt_steps >= 0 and inversion_steps >= 1, got {opt_steps}, {inversion_steps}")
        super().__init__(inversion_steps, cache_inversions)  # the base's schedule: the stage-1 inversion's
        self.prompt = prompt
        self.region_block = region_block
        self.step_weighting = step_weighting
        self.feature_normalization = feature_normalization
        self.merge_features = merge_features
        self.depth_rule = depth_rule
        self.depth_span_threshold = float(depth_span_threshold)
        self.depth_merge_threshold = float(depth_merge_threshold)
        self.depth_merge_gap = float(depth_merge_gap)
        self.init_latent = init_latent
        self.position_term = position_term
        self.dinov2_pooling = dinov2_pooling
        self.small_region_rule = small_region_rule
        self.style_target = style_target
        self.style_query_scale = float(style_query_scale)
        self.pca_components = pca_components
        self.k_range = (k_min, k_max)
        self.kmeans_n_init = kmeans_n_init
        self.silhouette_sample_size = silhouette_sample_size
        self.merge_threshold = merge_threshold
        self.min_region_pixels = min_region_pixels
        self.depth_split = depth_split
        self.depth_model_path = depth_model
        self.depth_split_gap = depth_split_gap
        self.match_weights = (float(weight_statistics), float(weight_semantic), float(weight_position))
        self.semantic_features = semantic_features
        self.dinov2_weights = dinov2_weights
        self.layer_selectors = list(attention_layers)
        self.content_weight = float(content_weight)
        self.learning_rate = float(learning_rate)
        self.opt_steps = opt_steps
        self.opt_timestep = opt_timestep
        self.feature_dtype = resolve_feature_dtype(feature_dtype)
        self.dinov2 = None  # set in prepare when configured
        self.depth = None

    # -- set-up --------------------------------------------------------------------------------------
    def prepare(self, backbone, cache_dir: Path) -> None:
        super().prepare(backbone, cache_dir)
        try:
            self.unet.get_submodule(self.region_block)
        except AttributeError:
            known = [f"up_blocks.{i}" for i in range(len(self.unet.up_blocks))]
            raise ValueError(f"region_block {self.region_block!r} not in the UNet; decoder blocks: {known}") from None
        self.layers = self_attention_layers(self.unet, self.layer_selectors)
        self.heads = {name: int(self.unet.get_submodule(name).heads) for name in self.layers}
        self.opt_timesteps = self._optimisation_timesteps(backbone)
        self.embedding = backbone.encode_prompt([self.prompt])
        device = backbone.device
        self.dinov2 = _load_dinov2(self.dinov2_weights).to(device) if self.semantic_features == "dinov2" else None
        self.depth = _load_depth_model(self.depth_model_path, device) if self.depth_split else None

    def _optimisation_timesteps(self, backbone) -> list[int]:
        """One UNet timestep per Adam step: a fixed ``opt_timestep``, or (default) the ``opt_steps``
        timesteps of a DDIM schedule, noisiest first, as Attention Distillation's optimisation loop."""
        if self.opt_steps == 0:
            return []
        if self.opt_timestep is not None:
            return [int(self.opt_timestep)] * self.opt_steps
        scheduler = backbone.make_scheduler("ddim")
        scheduler.set_timesteps(self.opt_steps)
        return [int(t) for t in scheduler.timesteps]

    # -- the algorithm -------------------------------------------------------------------------------
    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        random_state = int(torch.randint(0, 2**31 - 1, (), generator=seeded_generator(seed)))  # K-means seeds
        images = [sample.content, *sample.references]
        names = ["content", *(f"reference_{j}" for j in range(len(sample.references)))]
        hashes = [sample.input_sha256.get(k) for k in ["content", *sample.reference_keys]]

        # Stage 1: semantic regions of the content and of every reference image, from step-weighted
        # decoder features of a short inversion: PCA, K-means (k by silhouette), merge, clean-up.
        inverted = [self.decoder_features(image, sha) for image, sha in zip(images, hashes, strict=True)]
        features = [f for f, _ in inverted]
        latents = [self.encode(image) for image in images]
        regions = [self.semantic_regions(f, image, random_state, latent)
                   for f, image, latent in zip(features, images, latents, strict=True)]

        # Stage 2: each content region gets the best-scoring region of any reference image.
        matches = self.match(images, features, regions)

        # Stage 3: energy-guided optimisation of the output latent (regional attention distillation
        # + content loss), starting from the content's last inversion latent standardised per pixel
        # (upstream) or from the content latent; decode.
        if self.init_latent == "inversion_standardised":
            start = standardise_per_pixel(inverted[0][1].to(latents[0].device).float())
        else:
            start = latents[0]
        latent, trace = self.optimise(latents[0], latents[1:], regions[0], regions[1:], matches, start=start)
        return MethodOutput(
            image=self.decode(latent)[0],
            diagnostics={
                "num_references": len(sample.references),
                "init_latent": self.init_latent,
                "style_target": self.style_target,
                "regions": [r.summary(name) for r, name in zip(regions, names, strict=True)],
                "matches": [m.to_dict() for m in matches],
                **trace,
            },
        )

    # -- stage 1 -------------------------------------------------------------------------------------
    def decoder_features(self, image: torch.Tensor, image_sha256: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, h, w)`` output of ``region_block`` averaged over the inversion steps (step weights),
        and the inversion's last (noisiest) latent ``(1, 4, h', w')``.

        The per-step features of the DDIM inversion (empty prompt, no CFG) come from the on-disk
        cache when an identical inversion was made before.
        """
        key = self.inversion_key("stylegallery-features", image, image_sha256, num_steps=self.num_steps,
                                 scheduler="ddim", prompt=self.prompt, block=self.region_block,
                                 feature_dtype=str(self.feature_dtype))

        def compute() -> dict:
            latent = self.encode(image)
            eps_fn = self.eps_fn(self.embedding, capture=(self.region_block,))

            def eps_with_features(x, t):
                eps, feats = eps_fn(x, t)
                return eps, feats[self.region_block][0].detach().to(self.feature_dtype).cpu()

            inversion = ddim_invert(latent, eps_with_features, self.scheduler)
            return {"format": "semantix.stylegallery_features/2", "timesteps": list(inversion.timesteps),
                    "features": torch.stack(inversion.features), "last_latent": inversion.xts[0].detach().float().cpu()}

        payload = self.cache.get_or_compute(key, compute)
        steps = payload["features"]  # (T, C, h, w), noisiest step first
        if payload.get("format") != "semantix.stylegallery_features/2" or steps.shape[0] != self.num_steps:
            raise ValueError(f"unexpected stylegallery feature cache entry for {key['image_sha256']}")
        weighted = weighted_features(steps.to(self.backbone.device), step_weights(steps.shape[0], self.step_weighting))
        return weighted, payload["last_latent"]

    def semantic_regions(self, features: torch.Tensor, image: torch.Tensor, random_state: int,
                         latent: torch.Tensor | None = None) -> ImageRegions:
        """Label map of one image: cluster, merge close clusters, (depth split), remove small regions.

        ``merge_features: image_latent`` (upstream) merges by the distance between the clusters' mean
        4-channel image latents (``latent``, resized to the region grid by area when the grids differ).
        """
        clustering = cluster_regions(
            features, k_min=self.k_range[0], k_max=self.k_range[1], pca_components=self.pca_components,
            random_state=random_state, n_init=self.kmeans_n_init, normalize=self.feature_normalization,
            silhouette_sample_size=self.silhouette_sample_size,
        )
        grid = clustering.labels.shape
        if self.merge_features == "image_latent":
            if latent is None:
                raise ValueError("merge_features: image_latent needs the image latent")
            lat = latent.float()
            if tuple(lat.shape[-2:]) != tuple(grid):
                lat = F.adaptive_avg_pool2d(lat, grid) if lat.shape[-1] >= grid[1] else F.interpolate(lat, size=grid)
            merge_feats = lat[0].flatten(1).T.cpu().numpy()
            labels = merge_clusters_pairwise(clustering.labels, merge_feats, self.merge_threshold)
        else:
            labels = merge_close_clusters(clustering.labels, clustering.reduced, self.merge_threshold)
        num_merged = int(labels.max()) + 1
        if self.depth is not None:
            depth = self._depth_map(image, labels.shape)
            if self.depth_rule == "span":
                labels = split_regions_by_depth_span(labels, depth, self.depth_span_threshold,
                                                     random_state=random_state)
                labels = merge_clusters_pairwise(labels, merge_feats if self.merge_features == "image_latent"
                                                 else clustering.reduced, self.depth_merge_threshold,
                                                 depth=depth, depth_threshold=self.depth_merge_gap)
            else:
                labels = split_regions_by_depth(labels, depth, self.depth_split_gap)
        clean = remove_small_regions_once if self.small_region_rule == "once" else remove_small_regions
        labels = clean(labels, self.min_region_pixels)
        return ImageRegions(labels, clustering.k, clustering.silhouette, num_merged, self.depth is not None)

    def _depth_map(self, image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        processor, model = self.depth
        pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        inputs = processor(images=pixels, return_tensors="pt").to(next(model.parameters()).device)
        with torch.no_grad():
            depth = model(**inputs).predicted_depth  # (1, h', w')
        depth = F.interpolate(depth[:, None].float(), size=size, mode="nearest")
        return depth[0, 0].cpu().numpy()

    # -- stage 2 -------------------------------------------------------------------------------------
    def match(self, images: list[torch.Tensor], features: list[torch.Tensor],
              regions: list[ImageRegions]) -> list[RegionMatch]:
        """Best reference region for every content region, over all reference images.

        The decoder features are first standardised per channel over all images' locations
        together, so statistics and pooled features of different images share one scale.
        """
        flat = torch.cat([f.flatten(1) for f in features], dim=1)
        mean, std = flat.mean(1)[:, None, None], flat.std(1).clamp_min(1e-6)[:, None, None]
        standardised = [(f - mean) / std for f in features]
        stats = [region_statistics(f, r.labels) for f, r in zip(standardised, regions, strict=True)]
        semantic_maps = [self._dinov2_tokens(image) for image in images] if self.dinov2 is not None else standardised
        coverage = DINOV2_MIN_COVERAGE if self.dinov2 is not None and self.dinov2_pooling == "upstream" else None
        pooled = [pooled_region_features(m, r.labels, r.num_regions, min_coverage=coverage)
                  for m, r in zip(semantic_maps, regions, strict=True)]
        content = regions[0]
        refs = range(1, len(images))
        return match_regions(
            statistics=[statistics_similarity(*stats[0], *stats[j]) for j in refs],
            semantic=[cosine_similarity_matrix(pooled[0], pooled[j]) for j in refs],
            position=[(circle_overlap if self.position_term == "circle" else positional_overlap)(
                content.labels, regions[j].labels) for j in refs],
            weights=self.match_weights,
        )

    @torch.no_grad()
    def _dinov2_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """DINOv2 patch tokens of the last layer as a ``(D, 16, 16)`` map (CLS token dropped)."""
        from semantix.metrics.inputs import IMAGENET_MEAN, IMAGENET_STD

        model = self.dinov2
        device = next(model.parameters()).device
        if self.dinov2_pooling == "upstream":
            # As the authors' AutoImageProcessor (DINOv2): shortest side to 256, centre crop 224 (the
            # token grid then covers the central 7/8 of the image, while the region masks are laid
            # over the whole image: upstream's alignment, kept).
            side = round(DINOV2_SIZE * 256 / 224)
            x = F.interpolate(image[None].float(), size=(side, side), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
            off = (side - DINOV2_SIZE) // 2
            x = x[..., off:off + DINOV2_SIZE, off:off + DINOV2_SIZE]
        else:
            x = F.interpolate(image[None].float(), size=(DINOV2_SIZE, DINOV2_SIZE), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0, 1)
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        tokens = model(pixel_values=x.to(device)).last_hidden_state[0, 1:]
        side = DINOV2_SIZE // model.config.patch_size
        return tokens.reshape(side, side, -1).permute(2, 0, 1).float()

    # -- stage 3 -------------------------------------------------------------------------------------
    def optimise(self, content_latent: torch.Tensor, reference_latents: list[torch.Tensor],
                 content_regions: ImageRegions, reference_regions: list[ImageRegions],
                 matches: list[RegionMatch], start: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Adam on the output latent (from ``start``, default the content latent) against the regional
        style loss plus ``content_weight`` x the query content loss; one step per timestep of
        ``opt_timesteps``."""
        match = torch.tensor([m.global_region for m in matches], dtype=torch.long, device=content_latent.device)
        z = (content_latent if start is None else start).detach().clone().float().requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=self.learning_rate)
        grids: dict[str, tuple] = {}
        trace: dict[str, list[torch.Tensor]] = {"loss_style": [], "loss_content": [], "loss": []}
        for t in self.opt_timesteps:
            with torch.no_grad():
                content = self._attention_tensors(content_latent, t, ("q",))
                references = [self._attention_tensors(r, t, ("k", "v")) for r in reference_latents]
            optimiser.zero_grad(set_to_none=True)
            with torch.enable_grad():
                output = self._attention_tensors(z, t, ("q", "k", "v"))
                style_loss = content_loss = 0.0
                for layer in self.layers:
                    q, k, v = (output[layer][n].float() for n in ("q", "k", "v"))
                    own = _attention(q, k, v, self.heads[layer])
                    content_loss = content_loss + F.l1_loss(q, content[layer]["q"].float())
                    if self.style_target == "masked":
                        style_loss = style_loss + self._masked_style_loss(
                            layer, q, own, references, content_latent, reference_latents, content_regions,
                            reference_regions, matches, grids)
                        continue
                    k_ref = torch.cat([r[layer]["k"] for r in references], dim=1).float()
                    v_ref = torch.cat([r[layer]["v"] for r in references], dim=1).float()
                    if layer not in grids:
                        grids[layer] = self._region_tokens(q.shape[1], [r[layer]["k"].shape[1] for r in references],
                                                           content_latent, reference_latents, content_regions,
                                                           reference_regions)
                    query_regions, key_masks = grids[layer]
                    with torch.no_grad():  # the target is a constant (stop-gradient), as in AD
                        target = regional_attention(q, k_ref, v_ref, self.heads[layer], query_regions, key_masks,
                                                    match, check=False)
                    style_loss = style_loss + F.l1_loss(own, target)
                loss = style_loss + self.content_weight * content_loss
                loss.backward()
            optimiser.step()
            for name, value in (("loss_style", style_loss), ("loss_content", content_loss), ("loss", loss)):
                trace[name].append(value.detach())
        # One device sync for the whole trace, after the loop.
        diagnostics = {name: torch.stack(values).tolist() if values else [] for name, values in trace.items()}
        return z.detach(), diagnostics

    def _masked_style_loss(self, layer: str, q: torch.Tensor, own: torch.Tensor, references: list[dict],
                           content_latent: torch.Tensor, reference_latents: list[torch.Tensor],
                           content_regions: ImageRegions, reference_regions: list[ImageRegions],
                           matches: list[RegionMatch], grids: dict) -> torch.Tensor:
        """StyleGallery's style loss (public code, ``get_style_loss`` + ``utils.style_loss``): for every
        content region, ``L1(own * m_c, SDPA(1.5 q m_c, k_ref m_r, v_ref m_r))`` with the matched
        reference's keys/values zeroed outside the matched region (kept in the softmax), summed over
        regions; masks by nearest-neighbour resizing of the label maps to the layer's token grid."""
        key = ("masked", layer)
        if key not in grids:
            n = q.shape[1]
            device = q.device
            query_labels = nearest_token_labels(content_regions.labels,
                                                token_grid(tuple(content_latent.shape[-2:]), n)).to(device)
            key_labels = [nearest_token_labels(r.labels, token_grid(tuple(lat.shape[-2:]), ref[layer]["k"].shape[1]))
                          .to(device) for r, lat, ref in zip(reference_regions, reference_latents, references,
                                                             strict=True)]
            grids[key] = (query_labels, key_labels)
        query_labels, key_labels = grids[key]
        loss = 0.0
        for m in matches:
            query_mask = (query_labels == m.content_region).float()
            key_mask = (key_labels[m.reference] == m.reference_region).float()
            ref = references[m.reference][layer]
            with torch.no_grad():  # the target is a constant (stop-gradient)
                target = masked_style_target(q, ref["k"].float(), ref["v"].float(), self.heads[layer], query_mask,
                                             key_mask, self.style_query_scale)
            loss = loss + F.l1_loss(own * query_mask[None, :, None], target)
        return loss

    def _attention_tensors(self, latent: torch.Tensor, t: int, which: tuple[str, ...]) -> dict[str, dict]:
        """Projected q/k/v ``(1, N, C)`` of every chosen self-attention layer for one UNet pass on the
        (clean) latent at timestep ``t``; not detached, so gradients reach ``latent``."""
        paths = {f"{layer}.to_{n}": (layer, n) for layer in self.layers for n in which}
        with capture_block_outputs(self.unet, list(paths)) as captured:
            self.predict(latent, t, self.embedding)
        out: dict[str, dict] = {layer: {} for layer in self.layers}
        for path, (layer, n) in paths.items():
            out[layer][n] = captured[path]
        return out

    @staticmethod
    def _region_tokens(num_queries: int, num_keys: list[int], content_latent: torch.Tensor,
                       reference_latents: list[torch.Tensor], content_regions: ImageRegions,
                       reference_regions: list[ImageRegions]) -> tuple[torch.Tensor, torch.Tensor]:
        """Content region of each query token and the ``(G, M)`` key masks of all reference regions
        (block-diagonal over the references, whose tokens are concatenated) on a layer's grid."""
        device = content_latent.device
        query_regions = token_labels(content_regions.labels,
                                     token_grid(tuple(content_latent.shape[-2:]), num_queries),
                                     content_regions.num_regions)
        blocks = [token_region_masks(r.labels, token_grid(tuple(lat.shape[-2:]), m), r.num_regions)
                  for r, lat, m in zip(reference_regions, reference_latents, num_keys, strict=True)]
        key_masks = torch.zeros(sum(b.shape[0] for b in blocks), sum(num_keys), dtype=torch.bool)
        row = col = 0
        for b in blocks:
            key_masks[row:row + b.shape[0], col:col + b.shape[1]] = b
            row, col = row + b.shape[0], col + b.shape[1]
        # token_region_masks keeps every region on every grid, so every query has keys (no check later).
        assert bool(key_masks.any(dim=1).all()), "a reference region vanished on a token grid"
        return query_regions.to(device), key_masks.to(device)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head self-attention output (before the output projection), ``(B, N, C)``."""
    b, n, c = q.shape
    split = [x.reshape(b, x.shape[1], heads, c // heads).transpose(1, 2) for x in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, n, c)


def _load_dinov2(weights: str):
    """DINOv2 (transformers ``Dinov2Model``, eval, frozen): a local folder, a cached hub id, or
    ``random`` (seeded random ViT-B/14 weights: code paths only)."""
    from transformers import Dinov2Config, Dinov2Model

    from semantix.metrics.weights import is_random, seeded
    from semantix.runtime import hub_downloads_allowed

    if is_random(weights):
        model = seeded(lambda: Dinov2Model(Dinov2Config()))
    else:
        try:
            with refusing_pickled_code("dinov2_weights", weights):  # transformers: weights_only=True
                model = Dinov2Model.from_pretrained(weights, local_files_only=not hub_downloads_allowed())
        except OSError as error:
            raise WeightsNotFoundError(
                f"dinov2_weights: DINOv2 weights not found (value {weights!r}); expected a folder with config.json "
                f"and model.safetensors (Dinov2Model.save_pretrained) or a hub id already in the Hugging Face "
                f"cache (e.g. facebook/dinov2-base). Or set semantic_features: backbone. Cause: {error}"
            ) from error
    return model.eval().requires_grad_(False)


def _random_depth_model():
    """A small Depth Anything (DINOv2 backbone) with seeded random weights and its image processor:
    code paths only, offline (numbers meaningless), as the metrics' ``random`` weights."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    from semantix.metrics.inputs import IMAGENET_MEAN, IMAGENET_STD
    from semantix.metrics.weights import seeded

    backbone = Dinov2Config(hidden_size=48, num_hidden_layers=4, num_attention_heads=2, intermediate_size=96,
                            out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
                            image_size=518, patch_size=14)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[24, 48, 96, 96], fusion_hidden_size=32,
                                 reassemble_hidden_size=48, head_hidden_size=16)
    processor = DPTImageProcessor(do_resize=True, size={"height": 112, "width": 112}, keep_aspect_ratio=True,
                                  ensure_multiple_of=14, do_normalize=True, image_mean=list(IMAGENET_MEAN),
                                  image_std=list(IMAGENET_STD))
    return processor, seeded(lambda: DepthAnythingForDepthEstimation(config))


def _load_depth_model(path: str, device):
    """A transformers depth-estimation model and its image processor: a local folder, a hub id already
    in the Hugging Face cache (upstream uses Depth Anything V2 Large), or ``random``."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from semantix.metrics.weights import is_random
    from semantix.runtime import hub_downloads_allowed

    if is_random(path):
        processor, model = _random_depth_model()
        return processor, model.to(device).eval().requires_grad_(False)
    try:
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=not hub_downloads_allowed())
        with refusing_pickled_code("depth_model", path):  # transformers: weights_only=True
            model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=not hub_downloads_allowed())
    except OSError as error:
        raise WeightsNotFoundError(
            f"depth_model: depth-estimation model not found (value {path!r}); expected a transformers "
            f"AutoModelForDepthEstimation folder (e.g. a saved Depth Anything V2 or DPT) or a hub id already in the "
            f"Hugging Face cache (depth-anything/Depth-Anything-V2-Large-hf), `random` for seeded random weights "
            f"(code paths only), or set depth_split: false. "
            f"Cause: {error}"
        ) from error
    return processor, model.to(device).eval().requires_grad_(False)
