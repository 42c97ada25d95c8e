"""Semantix: an energy-guided sampler for semantic style transfer.

He, Hu, Zheng, Wang, Cham, "Semantix: An Energy-guided Sampler for Semantic Style Transfer",
ICLR 2025 (arXiv 2503.22344). No official code is public and the paper's body (its Algorithm 1
and equations) was not available to us: what follows is our reading, argued in docs/method.md
(with the public code each choice follows), every choice a key of conf/method/semantix.yaml.

Settings the paper states (image experiments; defaults in conf/method/semantix.yaml): Stable
Diffusion 1.5; reference and context inverted with DDPM inversion over 60 steps; classifier-free
guidance 3.5 for inversion and sampling; guidance features from the 2nd and 3rd decoder blocks;
gamma_ref = 3.0 (style feature guidance), gamma_c = 0.9 (spatial feature guidance), gamma_reg = 1.0
(semantic distance regulariser), lambda_pe = 3.0 (positional encoding); each guidance term clamped
to [-1, 1]; after 20 denoising steps, AdaIN of the output latents to the reference latents.
Our readings where the paper is silent (docs/method.md): the energies carry DragonDiffusion's gain
(`energy_scale` 10), so the clamp binds as the paper's statement implies; the positional encoding is
a prior that breaks ties between equally similar candidates (`pe_form: prior`), not the dominant
term of the matching; AdaIN after every step from step 20 (`adain_mode: every`).

Video (conf/method/semantix_video.yaml: the paper's video weights gamma_ref = 6.0, gamma_c = 3.0,
gamma_reg = 5.0, lambda_pe = 3.0, on AnimateDiff): the same algorithm on a latent video
``(F, C, h, w)``. All frames of the context are inverted together through the video UNet (one
latent video), each reference image as a one-frame video (a reference video as a clip); features are
captured per frame, each output frame is matched to the reference features of every reference frame, the energies are summed over frames (each frame
is guided as an image would be; diagnostics report the per-frame mean), and AdaIN
takes its statistics over frames and space. A clip longer than `window_size` frames runs in
overlapping windows blended at every step (`semantix.diffusion.windows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from semantix.diffusion import (
    Inversion,
    adain,
    capture_block_outputs,
    cfg,
    clamped_energy_gradient,
    flatten_locations,
    frames_first,
    gather_matched,
    invert,
    match_displacement,
    match_features,
    semantic_distance_energy,
    spatial_energy,
    style_energy,
)
from semantix.diffusion.cache import resolve_feature_dtype
from semantix.diffusion.matching import PE_FORMS
from semantix.diffusion.windows import frame_windows, in_windows
from semantix.methods.diffusion import DiffusionMethod
from semantix.types import MethodOutput, Sample

GUIDANCE_FORMS = ("eps", "latent")
MATCH_SOURCES = ("context", "output")
ADAIN_MODES = ("every", "once")


class Semantix(DiffusionMethod):
    scheduler_kind = "ddpm"

    def __init__(
        self,
        num_steps: int = 60,
        guidance_scale: float = 3.5,
        prompt: str = "",
        reference_prompt: str = "",
        feature_blocks: Sequence[str] = ("up_blocks.1", "up_blocks.2"),
        block_weights: Sequence[float] | None = None,
        gamma_ref: float = 3.0,
        gamma_c: float = 0.9,
        gamma_reg: float = 1.0,
        lambda_pe: float = 3.0,
        pe_dim: int | None = 64,
        pe_form: str = "prior",
        pe_prior_unit: float = 0.01,
        energy_scale: float = 10.0,
        grad_clamp: float | None = 1.0,
        batched_gradients: bool = False,
        batch_cfg_inversion: bool = False,
        guidance_apply: str = "eps",
        match_on: str = "context",
        match_timestep: int | None = None,
        match_chunk_size: int = 1024,
        reg_max_side: int = 32,
        adain_start_step: int | None = 20,
        adain_mode: str = "every",
        cache_inversions: bool = True,
        feature_dtype: str = "float16",
        window_size: int = 16,
        window_overlap: int = 4,
    ):
        if guidance_apply not in GUIDANCE_FORMS:
            raise ValueError(f"guidance_apply must be one of {GUIDANCE_FORMS}, got {guidance_apply!r}")
        if match_on not in MATCH_SOURCES:
            raise ValueError(f"match_on must be one of {MATCH_SOURCES}, got {match_on!r}")
        if match_timestep is not None and match_on != "context":
            raise ValueError("match_timestep (one correspondence for all steps) needs match_on: context")
        if pe_form not in PE_FORMS:
            raise ValueError(f"pe_form must be one of {PE_FORMS}, got {pe_form!r}")
        if adain_mode not in ADAIN_MODES:
            raise ValueError(f"adain_mode must be one of {ADAIN_MODES}, got {adain_mode!r}")
        if energy_scale <= 0:
            raise ValueError(f"energy_scale must be > 0, got {energy_scale}")
        super().__init__(num_steps, cache_inversions)
        self.guidance_scale = guidance_scale
        self.prompt = prompt
        self.reference_prompt = reference_prompt
        self.feature_blocks = tuple(feature_blocks)
        weights = [1.0] * len(self.feature_blocks) if block_weights is None else list(block_weights)
        if len(weights) != len(self.feature_blocks):
            raise ValueError(f"block_weights has {len(weights)} values for {len(self.feature_blocks)} blocks")
        self.block_weights = [w / sum(weights) for w in weights]
        self.gammas = {"style": gamma_ref, "spatial": gamma_c, "reg": gamma_reg}
        self.lambda_pe = lambda_pe
        self.pe_dim = pe_dim
        self.pe_form = pe_form
        self.pe_prior_unit = pe_prior_unit
        self.energy_scale = energy_scale
        self.grad_clamp = grad_clamp
        self.batched_gradients = batched_gradients
        self.batch_cfg_inversion = batch_cfg_inversion
        self.guidance_apply = guidance_apply
        self.match_on = match_on
        self.match_timestep = match_timestep
        self.match_chunk_size = match_chunk_size
        self.reg_max_side = reg_max_side
        self.adain_start_step = adain_start_step
        self.adain_mode = adain_mode
        self.feature_dtype = resolve_feature_dtype(feature_dtype)
        frame_windows(window_size, window_size, window_overlap)  # validates the pair
        self.window_size = window_size
        self.window_overlap = window_overlap

    # -- set-up --------------------------------------------------------------------------------------
    def prepare(self, backbone, cache_dir: Path) -> None:
        super().prepare(backbone, cache_dir)
        for path in self.feature_blocks:
            try:
                self.unet.get_submodule(path)
            except AttributeError:
                known = [f"up_blocks.{i}" for i in range(len(self.unet.up_blocks))]
                raise ValueError(f"feature block {path!r} not in the UNet; decoder blocks: {known}") from None
        max_frames = getattr(self.unet.config, "motion_max_seq_length", None) if backbone.is_video else None
        if max_frames is not None and self.window_size > max_frames:
            raise ValueError(f"window_size {self.window_size} exceeds the motion modules' {max_frames} frames "
                             f"(motion_max_seq_length of backbone {backbone.name}); use at most {max_frames}")

    # -- the algorithm -------------------------------------------------------------------------------
    supports_batch = True
    supports_video = True

    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        return self.call_batch([sample], [seed])[0]

    def call_batch(self, samples, seeds) -> list[MethodOutput]:
        """Semantix on several samples, their output branches denoised as one batch (same results)."""
        contexts, references, conds = [], [], []
        for sample, seed in zip(samples, seeds, strict=True):
            self._check_sample_kind(sample)
            context_prompt = sample.prompt or self.prompt
            conds.append(self.backbone.encode_prompt([context_prompt]))
            # 1. Invert the context (all frames of a video at once) and every reference (edit-friendly DDPM
            #    inversion, CFG 3.5), capturing their decoder features F^c_t, F^r_t on the way (they replay,
            #    never re-sample).
            context, context_key = (sample.frames, "frames") if sample.is_video else (sample.content, "content")
            contexts.append(self.invert(context, sample.input_sha256.get(context_key), context_prompt, seed,
                                         "context"))
            if sample.reference_frames is not None:  # a reference video: its frames inverted as one clip
                images, hashes = [sample.reference_frames], [sample.input_sha256.get("reference_frames")]
            else:
                images, hashes = sample.references, [sample.input_sha256.get(k) for k in sample.reference_keys]
            references.append([
                self.invert(image, sha, self.reference_prompt, seed, f"reference_{k}")
                for k, (image, sha) in enumerate(zip(images, hashes, strict=True))
            ])

        # 2. Guided sampling of the output branches; 3. decode.
        latents, diagnostics = self.sample(contexts, references, torch.cat(conds))
        decoded = self.decode(latents)
        if latents.ndim == 4:
            return [MethodOutput(image=image, diagnostics=d) for image, d in zip(decoded, diagnostics, strict=True)]
        return [MethodOutput.video(frames, d) for frames, d in zip(decoded, diagnostics, strict=True)]

    def _check_sample_kind(self, sample: Sample) -> None:
        if sample.is_video and not self.backbone.is_video:
            raise ValueError(
                f"sample {sample.sample_id} is a video but backbone {self.backbone.name} is an image backbone; "
                "use a video backbone (backbone=animatediff, or tiny_video offline), or run image Semantix "
                "frame by frame (method=frames_semantix)"
            )
        if self.backbone.is_video and not sample.is_video:
            raise ValueError(
                f"sample {sample.sample_id} is an image but backbone {self.backbone.name} is a video backbone; "
                "use an image backbone (sd15, tiny) for image datasets"
            )

    def sample(self, contexts: list[Inversion], references: list[list[Inversion]],
               cond: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """The guided reverse process of B samples at once (docs/method.md, "Sampling").

        ``contexts[b]`` and ``references[b]`` are sample b's inversions, ``cond`` its prompt embeddings
        ``(B, L, D)``. Returns x_0 of the outputs ``(B, C, h, w)`` (videos: ``(B, F, C, h, w)``) and
        per-sample per-step diagnostics (energies, gradient size and clamping per term, the guidance's
        share of the noise prediction, match displacement per block).
        The samples only share UNet calls: every energy is a per-sample quantity and the guidance is the
        gradient of their sum, so sample b's guidance is its own (clamped element-wise).
        """
        self._check_schedule(contexts, references)
        # The outputs start at the contexts' inverted noise and use the contexts' noise maps.
        x = torch.cat([c.x_T for c in contexts])
        # Videos: frame windows of the motion module's length; AdaIN statistics over frames and space.
        windows = frame_windows(x.shape[1], self.window_size, self.window_overlap) if x.ndim == 5 else None
        adain_dims = (1, -2, -1) if x.ndim == 5 else (-2, -1)
        fixed = self._fixed_matches(contexts, references, x.device)
        trace: dict[str, list[torch.Tensor]] = {"grad_norm": []}
        for i, t in enumerate(self.stepper.timesteps):
            context_features = [_on(c.features[i], x.device) | m for c, m in zip(contexts, fixed, strict=True)]
            reference_features = [[_on(r.features[i], x.device) for r in refs] for refs in references]
            # Steps 2.1-2.4: CFG prediction, energy gradient (per-term clamped), guided prediction.
            eps, guidance, stats = self._windowed_guided_prediction(x, t, i, cond, context_features,
                                                                    reference_features, windows)
            # Step 2.5: DDPM step with the contexts' noise maps.
            x = self.stepper.step(x, eps, i, torch.cat([c.zs[i] for c in contexts]))
            if self.guidance_apply == "latent":
                x = x - guidance
            # Step 2.6: AdaIN of each output latent to its reference latents of the same timestep.
            if self._adain_at(i):
                x = torch.cat([adain(x[b:b + 1], _pooled(_latent_after_step(r, i) for r in refs), dims=adain_dims)
                               for b, refs in enumerate(references)])
            for name, value in stats.items():
                trace.setdefault(name, []).append(value)
            trace["grad_norm"].append(guidance.flatten(1).norm(dim=1))
        # One device sync for all diagnostics, after the loop; then one dict per sample.
        stacked = {name: torch.stack(values).T.tolist() for name, values in trace.items()}
        return x, [{name: rows[b] for name, rows in stacked.items()} for b in range(len(contexts))]

    def _fixed_matches(self, contexts: list[Inversion], references: list[list[Inversion]],
                       device: torch.device) -> list[dict]:
        """With `match_timestep`: each sample's correspondence, computed once from the stored features of
        the step nearest that timestep and used at every step (as DIFT matches at one moderate noise
        level), as ``{("match", block): indices}`` entries riding along the context features (images
        ``(1, N)``, videos ``(1, F, N)``: sliced with them per window). Without it: nothing (per step)."""
        if self.match_timestep is None or not self.gammas["style"]:
            return [{} for _ in contexts]
        timesteps = self.stepper.timesteps
        j = min(range(len(timesteps)), key=lambda i: abs(timesteps[i] - self.match_timestep))
        fixed = []
        for context, refs in zip(contexts, references, strict=True):
            features = _on(context.features[j], device)
            reference_features = [_on(r.features[j], device) for r in refs]
            video = next(iter(features.values())).ndim == 5
            ref_frames = (_frame_dicts(reference_features) if video
                          else [{k: v[0] for k, v in r.items()} for r in reference_features])
            matches = {}
            for block in self.feature_blocks:
                queries = features[block][0] if video else features[block]  # (F or 1, C, h, w)
                indices = torch.stack([self._match(q.float(), [r[block].float() for r in ref_frames])
                                       for q in queries])
                matches[("match", block)] = indices[None] if video else indices
            fixed.append(matches)
        return fixed

    def _match(self, query: torch.Tensor, f_refs: list[torch.Tensor]) -> torch.Tensor:
        """Indices of each query location's match among the references' locations (docs/method.md)."""
        indices, _ = match_features(query, f_refs, self.lambda_pe, self.pe_dim, self.match_chunk_size,
                                    pe_form=self.pe_form, pe_prior_unit=self.pe_prior_unit)
        return indices

    def _check_schedule(self, contexts: list[Inversion], references: list[list[Inversion]]) -> None:
        """Every inversion (fresh or from the cache) must be on this sampler's own timesteps."""
        expected = self.stepper.timesteps
        for inversion in [*contexts, *(r for refs in references for r in refs)]:
            if [int(t) for t in inversion.timesteps] != expected:
                raise ValueError(f"an inversion's timesteps {[int(t) for t in inversion.timesteps][:4]}... do "
                                 f"not match the sampler's {expected[:4]}... ({len(expected)} steps): "
                                 "a stale cache entry or another scheduler")

    def _adain_at(self, i: int) -> bool:
        """AdaIN after step i: every step from `adain_start_step` on, or only at that step (`once`)."""
        if self.adain_start_step is None:
            return False
        return i == self.adain_start_step if self.adain_mode == "once" else i >= self.adain_start_step

    # -- pieces --------------------------------------------------------------------------------------
    def invert(self, image: torch.Tensor, image_sha256: str | None, prompt: str, seed: int, role: str) -> Inversion:
        """Inversion with features, from the on-disk cache when an identical one was made before."""
        key = self.inversion_key(
            "semantix-inversion", image, image_sha256, scheduler=self.backbone.scheduler_config,
            num_steps=self.num_steps, guidance_scale=self.guidance_scale, batch_cfg=self.batch_cfg_inversion,
            prompt=prompt, noise_seed=self.noise_seed(seed, role), feature_blocks=self.feature_blocks,
            feature_dtype=str(self.feature_dtype),
        )
        if self.backbone.is_video:
            key["frames"] = image.shape[0] if image.ndim == 4 else 1
            key["window"] = (self.window_size, self.window_overlap)

        def compute() -> dict:
            eps_fn = self.inversion_eps_fn(self.backbone.encode_prompt([prompt]))
            noise = self.noise_generator(key["noise_seed"])
            return invert(self.encode(image), eps_fn, self.scheduler, generator=noise,
                          features_device="cpu").to("cpu").to_dict()

        # The features of all T steps stay in host memory (16 frames at 512 px: ~7.5 GB in float16);
        # `sample` copies one step's to the device at a time.
        inversion = Inversion.from_dict(self.cache.get_or_compute(key, compute))
        if self.backbone.device.type == "cuda":
            inversion.features = [{k: v.pin_memory() for k, v in step.items()} for step in inversion.features]
        return inversion.to(self.backbone.device, move_features=False)

    def inversion_eps_fn(self, cond: torch.Tensor):
        """``eps_fn(x_t, t) -> (eps, features)`` of the inversion: CFG prediction and the decoder features
        in `feature_dtype`; a video latent runs in blended frame windows (features blended too).
        With `batch_cfg_inversion` the unconditional and conditional passes run as one batch of 2B: the
        sampler's separate passes then differ from the inversion's by float rounding, so a zero-guidance
        output retraces the context to ~5e-5 instead of ~1e-8 (tiny backbone; docs/method.md, "Inversion")."""
        eps_fn = self.eps_fn(cond, self.guidance_scale, capture=self.feature_blocks,
                             batch_cfg=self.batch_cfg_inversion)

        def eps_with_stored_features(x_t, t):
            eps, feats = eps_fn(x_t, t)
            return eps, {k: v.detach().to(self.feature_dtype) for k, v in feats.items()}

        def eps_in_windows(x_t, t):
            windows = frame_windows(x_t.shape[1], self.window_size, self.window_overlap)
            return in_windows(lambda x_window, _: eps_with_stored_features(x_window, t), x_t, windows)

        return lambda x_t, t: (eps_in_windows if x_t.ndim == 5 else eps_with_stored_features)(x_t, t)

    def _windowed_guided_prediction(self, x, t, i, cond, context_features, reference_features, windows):
        """`guided_prediction` on each frame window of a video, blended; an image's in one call."""
        if windows is None:
            return self.guided_prediction(x, t, i, cond, context_features, reference_features)
        return in_windows(lambda x_window, window: self.guided_prediction(
            x_window, t, i, cond, [_frames(f, window) for f in context_features], reference_features), x, windows)

    def guided_prediction(self, x, t, i, cond, context_features, reference_features):
        """eps~ = CFG(eps_u, eps_c) + sqrt(1 - abar_t) g, g = sum_k clamp(d s gamma_k E_k / dx) (steps 2.2-2.4).

        Returns the guided eps, the guidance g and per-sample diagnostics ``(B,)`` (videos: means over
        frames): each term's energy, largest raw gradient element and fraction of elements at the
        clamp, the guidance's size relative to the noise prediction, and the match displacement per
        block. All stay on the device (read once, after the loop).
        """
        # Two separate passes (no batched CFG), so that the conditional pass, which needs a gradient,
        # computes exactly the numbers the inversion did (unless `batch_cfg_inversion`).
        eps_fn = self.eps_fn(cond, self.guidance_scale, batch_cfg=False)
        if not any(self.gammas.values()):
            with torch.no_grad():
                eps, _ = eps_fn(x, t)
            return eps, torch.zeros_like(x), {"guidance_ratio": torch.zeros(x.shape[0], device=x.device)}
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad(), capture_block_outputs(self.unet, self.feature_blocks) as captured:
            eps_cond = self.predict(x_in, t, cond)
        with torch.no_grad():
            eps_uncond = self.predict(x, t, self.uncond_embedding.expand(x.shape[0], -1, -1))
        eps = cfg(eps_uncond, eps_cond.detach(), self.guidance_scale)
        output_features = {k: frames_first(v, x).float() for k, v in captured.items()}
        with torch.enable_grad():
            energies, matches = self.energies(output_features, context_features, reference_features)
            # Sum over samples: each sample's gradient is that of its own energy.
            weighted = {k: self.energy_scale * self.gammas[k] * e.sum() for k, e in energies.items()}
            gradients = clamped_energy_gradient(weighted, x_in, self.grad_clamp, self.batched_gradients)
        guidance = gradients.total
        # The guidance as a change of the noise prediction (the latent form's equivalent for `latent`).
        in_eps_units = (self.stepper.sqrt_one_minus_alpha_bar(i) * guidance if self.guidance_apply == "eps"
                        else guidance / self.stepper.eps_coefficient(i))
        if self.guidance_apply == "eps":
            eps = eps + in_eps_units
        frames = x.shape[1] if x.ndim == 5 else 1
        stats = {"guidance_ratio": in_eps_units.flatten(1).norm(dim=1) / eps.flatten(1).norm(dim=1).clamp(min=1e-12)}
        for k, e in energies.items():
            stats[f"energy_{k}"] = e.detach() / frames
            stats[f"grad_max_{k}"] = gradients.max_abs[k]
            stats[f"clamp_fraction_{k}"] = gradients.clamped_fraction[k]
        return eps, guidance, stats | matches

    def energies(self, output_features, context_features, reference_features):
        """The three energy terms per sample ``(B,)``, averaged over blocks with `block_weights`, and the
        match displacement statistics per block ``(B,)`` (when style guidance matched)."""
        per_sample = [self.sample_energies({k: v[b] for k, v in output_features.items()}, context_features[b],
                                            reference_features[b]) for b in range(len(context_features))]
        energies = {k: torch.stack([e[k] for e, _ in per_sample]) for k in per_sample[0][0]}
        matches = {k: torch.stack([m[k] for _, m in per_sample]) for k in per_sample[0][1]}
        return energies, matches

    def sample_energies(self, output_features, context_features, reference_features):
        """One sample's energies and match statistics: ``output_features[block]`` is ``(C, h, w)``
        (video: ``(F, C, h, w)``, each frame's energies computed on its own and summed over frames, its
        match statistics averaged over frames), the others as stored."""
        first = next(iter(output_features.values()))
        if first.ndim == 3:
            return self.frame_energies(output_features, {k: v[0] for k, v in context_features.items()},
                                        [{k: v[0] for k, v in r.items()} for r in reference_features])
        # A reference (image or clip) offers all its frames' features to every output frame.
        references = _frame_dicts(reference_features)
        per_frame = [
            self.frame_energies({k: v[f] for k, v in output_features.items()},
                                 {k: v[0, f] for k, v in context_features.items()}, references)
            for f in range(first.shape[0])
        ]
        # Summed over frames, as over samples: each frame's guidance is that of its own energy, whatever
        # the clip or window length (the sampler reports the per-frame mean).
        energies = {k: torch.stack([e[k] for e, _ in per_frame]).sum() for k in per_frame[0][0]}
        matches = {k: torch.stack([m[k] for _, m in per_frame]).mean() for k in per_frame[0][1]}
        return energies, matches

    def frame_energies(self, output_features, context_features, reference_features):
        """The energies of one image (or one video frame), every feature ``(C, h, w)``, and, when style
        guidance is on, each block's match displacement: median and 90th percentile (in cells) and the
        fraction matched within one cell of its own position."""
        energies: dict[str, torch.Tensor] = {}
        matches: dict[str, torch.Tensor] = {}

        def add(term: str, value: torch.Tensor, weight: float) -> None:
            energies[term] = energies.get(term, 0.0) + weight * value

        for block, weight in zip(self.feature_blocks, self.block_weights, strict=True):
            f_out = output_features[block]
            f_ctx = context_features[block].float()
            if self.gammas["style"]:
                f_refs = [r[block].float() for r in reference_features]
                indices = context_features.get(("match", block))  # fixed by `match_timestep`
                if indices is None:
                    indices = self._match(f_out.detach() if self.match_on == "output" else f_ctx, f_refs)
                matched = gather_matched(torch.cat([flatten_locations(f) for f in f_refs]), indices,
                                         hw=tuple(f_out.shape[-2:]))
                add("style", style_energy(f_out, matched), weight)
                distance = match_displacement(indices, tuple(f_out.shape[-2:]), [tuple(f.shape[-2:]) for f in f_refs])
                matches[f"match_median_{block}"] = distance.median()
                matches[f"match_p90_{block}"] = distance.quantile(0.9)
                matches[f"match_local_{block}"] = (distance <= 1).float().mean()
            if self.gammas["spatial"]:
                add("spatial", spatial_energy(f_out, f_ctx), weight)
            if self.gammas["reg"]:
                add("reg", semantic_distance_energy(f_out, f_ctx, self.reg_max_side), weight)
        return energies, matches


def _latent_after_step(inversion: Inversion, i: int) -> torch.Tensor:
    """x_{t-1} of the replayed trajectory: the next stored latent, or x_0 after the last step."""
    return inversion.xts[i + 1] if i + 1 < len(inversion) else inversion.x0


def _on(features: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """One step's stored features on the sampling device (a no-op on the CPU)."""
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}


def _frames(features: dict[str, torch.Tensor], window: range) -> dict[str, torch.Tensor]:
    """Stored per-frame features ``(1, F, C, h, w)`` of the frames in `window`."""
    return {k: v[:, window.start:window.stop] for k, v in features.items()}


def _frame_dicts(reference_features: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Stored video features ``(1, F, C, h, w)`` of each reference -> one ``(C, h, w)`` dict per frame."""
    return [{k: v[0, f] for k, v in r.items()} for r in reference_features
            for f in range(next(iter(r.values())).shape[1])]


def _pooled(latents) -> torch.Tensor:
    """Several references' latents side by side, so AdaIN matches their pooled statistics."""
    return torch.cat(list(latents), dim=-1)
