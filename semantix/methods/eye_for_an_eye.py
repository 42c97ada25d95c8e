"""Eye-for-an-eye: appearance transfer by explicit semantic correspondence.

Go, Choi, Shin, Uh, "Eye-for-an-eye: Appearance Transfer with Semantic Correspondence in Diffusion
Models", arXiv 2406.07008 (2024). Written from the paper and docs/baselines.md; the
authors' code (sooyeon-go/eye_for_an_eye) was read to understand it, not copied. Defaults in
conf/method/eye_for_an_eye.yaml; our reading in docs/baselines.md.

Settings (paper / authors' configuration): Stable Diffusion 1.5 at 512 px; edit-friendly DDPM
inversion of the structure and the appearance image, 100 steps, CFG 3.5, prompt "A photo of a
{domain}"; denoising skips the first 32 steps (68 run), CFG 2.5; the three latents (output,
appearance, structure) are denoised together. In the decoder self-attention layers at 32x32 and
64x64 (SD1.5's up_blocks 2 and 3, six layers), for denoising steps 10 to 70 and in the conditional
pass only, before the attention each output location's hidden state is replaced by the appearance
image's hidden state at its most similar location (cosine on that layer's hidden states), so the
queries, keys and values all come from the rearranged features; at steps 10, 15, ..., 35 the
structure image's own hidden states replace the output's instead. With foreground masks, matching
is restricted to the foregrounds and the output latent's foreground statistics are matched to the
appearance's (masked AdaIN) after steps 49 to 67. Without masks, as the authors' code runs with
``use_masked_adain`` off, the output latent is matched to the appearance latent by unmasked AdaIN
after the same steps (``stats_without_masks: adain``, the default; ``none`` = our earlier reading).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from semantix.diffusion import adain, cfg, cosine_correspondence, masked_adain
from semantix.diffusion.attention import InjectableAttnProcessor, Injection, attention_processors
from semantix.methods.appearance import (
    APPEARANCE,
    OUTPUT,
    STRUCTURE,
    JointAppearanceTransfer,
    JointBatch,
    tokens_side,
)
from semantix.types import MethodOutput, Sample

STATS_WITHOUT_MASKS = ("adain", "none")


class EyeForAnEye(JointAppearanceTransfer):
    def __init__(
        self,
        num_steps: int = 100,
        skip_steps: int = 32,
        inversion_guidance_scale: float = 3.5,
        guidance_scale: float = 2.5,
        prompt: str = "A photo of a {domain}",
        default_domain: str = "object",
        layers: Sequence[str | int] = ("up_blocks.2", "up_blocks.3"),
        step_ranges: Sequence[Sequence[int]] = ((10, 70), (10, 70)),
        structure_every: int | None = 5,
        structure_until: int = 40,
        inject: bool = True,
        masks: str = "manifest",
        self_segments: int = 5,
        self_segment_threshold: float = 1.4,
        stats_start_step: int | None = 49,
        stats_without_masks: str = "adain",
        match_chunk_size: int = 1024,
        cache_inversions: bool = True,
    ):
        super().__init__(num_steps, skip_steps, inversion_guidance_scale, prompt, default_domain, layers,
                         step_ranges, structure_every, structure_until, inject, masks, cache_inversions,
                         self_segments, self_segment_threshold)
        self.guidance_scale = guidance_scale
        if stats_without_masks not in STATS_WITHOUT_MASKS:
            raise ValueError(f"stats_without_masks must be one of {STATS_WITHOUT_MASKS}, got {stats_without_masks!r}")
        self.stats_start_step = stats_start_step
        self.stats_without_masks = stats_without_masks
        self.match_chunk_size = match_chunk_size

    # -- the algorithm -------------------------------------------------------------------------------
    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        # 1. Edit-friendly DDPM inversion of the structure and the appearance image (CFG 3.5); the
        #    joint batch [output, appearance, structure] at step `skip_steps`.
        job = self.start(sample, seed)
        x = job.x
        latent_masks = job.latent_masks
        statistics = self.statistics_matching(latent_masks is not None)
        segment_step = self.segmentation_step(job)
        segmentation: dict = {}
        processors = self.processors_for(job, InjectableAttnProcessor)
        with torch.no_grad(), attention_processors(self.unet, processors):
            for r in self.run_steps:
                i = self.skip_steps + r
                t = self.stepper.timesteps[i]
                # 2a. Unconditional pass: plain attention.
                for proc in processors.values():
                    proc.inject = None
                eps_uncond = self.predict(x, t, job.uncond)
                # 2b. Conditional pass: output features rearranged by correspondence (or the structure's).
                active = self.active_layers(r)
                rewrite = self.rewrite(r, job)
                for name, proc in processors.items():
                    proc.inject = Injection(rewrite_hidden=rewrite) if name in active else None
                self.record(processors, r == segment_step)
                eps_cond = self.predict(x, t, job.cond)
                if r == segment_step:  # masks: self: segment the appearance and the structure row
                    latent_masks, segmentation = self.self_masks(processors, job, sample.domain or self.default_domain,
                                                                 x.shape[-1], seed & 0x7FFFFFFF)
                    self.record(processors, False)
                    statistics = self.statistics_matching(latent_masks is not None)
                # 2c. CFG 2.5 and the DDPM step of each row with its own noise map.
                x = self.stepper.step(x, cfg(eps_uncond, eps_cond, self.guidance_scale), i, job.zs[r])
                # 2d. Late colour-statistics matching of the output to the appearance: masked AdaIN
                #     with masks, unmasked AdaIN without (the authors' use_masked_adain off).
                if statistics != "none" and r >= self.stats_start_step:
                    out, app = x[OUTPUT:OUTPUT + 1], x[APPEARANCE:APPEARANCE + 1]
                    x[OUTPUT:OUTPUT + 1] = masked_adain(out, app, *latent_masks) if statistics == "masked_adain" \
                        else adain(out, app)
        # 3. Decode the output row.
        image = self.decode(x[OUTPUT:OUTPUT + 1])[0]
        return MethodOutput(image=image, diagnostics={"num_references_used": job.references_used,
                                                      "masked": job.masks is not None, "prompt": job.prompt,
                                                      "statistics_matching": statistics, "masks": job.mask_source,
                                                      **segmentation})

    def segmentation_step(self, job: JointBatch) -> int | None:
        """Run step whose attention is segmented (masks: self): the first step with statistics matching
        (segmented after its UNet passes, before its AdaIN), as Cross-Image Attention's code."""
        if job.mask_source != "self" or self.stats_start_step is None:
            return None
        return self.stats_start_step

    def statistics_matching(self, masked: bool) -> str:
        """Which late statistics matching runs: ``masked_adain``, ``adain`` (no masks) or ``none``."""
        if self.stats_start_step is None:
            return "none"
        if masked:
            return "masked_adain"
        return "adain" if self.stats_without_masks == "adain" else "none"

    # -- pieces --------------------------------------------------------------------------------------
    def rewrite(self, r: int, job: JointBatch):
        """The hidden-state rewrite of run step `r` for rows [output, appearance, structure]."""
        if self.is_structure_step(r):
            def to_structure(hidden: torch.Tensor) -> torch.Tensor:
                out = hidden.clone()
                out[OUTPUT] = hidden[STRUCTURE]
                return out
            return to_structure

        def by_correspondence(hidden: torch.Tensor) -> torch.Tensor:
            out_mask, ref_mask = job.token_masks(tokens_side(hidden.shape[1])) or (None, None)
            indices = cosine_correspondence(hidden[OUTPUT], hidden[APPEARANCE], out_mask, ref_mask,
                                            self.match_chunk_size)
            matched = indices >= 0
            out = hidden.clone()
            out[OUTPUT, matched] = hidden[APPEARANCE, indices[matched]]
            return out
        return by_correspondence
