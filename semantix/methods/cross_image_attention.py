"""Cross-Image Attention for zero-shot appearance transfer.

Alaluf, Garibi, Patashnik, Averbuch-Elor, Cohen-Or, "Cross-Image Attention for Zero-Shot Appearance
Transfer", SIGGRAPH Asia 2024 (arXiv 2311.03335). Written from the paper and
docs/baselines.md; the authors' code (garibida/cross-image-attention) was read to
understand it, not copied. Defaults in conf/method/cross_image_attention.yaml; our reading in
docs/baselines.md.

Settings (paper / authors' configuration): Stable Diffusion 1.5; edit-friendly DDPM inversion of
the structure and the appearance image, 100 steps, CFG 3.5, prompt "A photo of a {domain}";
denoising skips the first 32 steps; text CFG 1.0. Three latents denoised together: the output
(from the structure's noise), the appearance and the structure. In the decoder self-attention
layers the output keeps its queries and takes keys and values from the appearance image: 64x64
layers (SD1.5 up_blocks.3) for steps 10 to 90, 32x32 layers (up_blocks.2) for steps 10 to 70; at
steps 10, 15, ..., 35 from the structure image instead. The output's cross-image attention map is
contrasted with strength 1.67. Swap guidance: the UNet runs with and without the swap and
eps = eps_noswap + s (eps_swap - eps_noswap), s decaying linearly over the steps from 3.5 to
max(3.5 / 2, 1). AdaIN of the output latent to the appearance latent after every step from step
20 on, masked to the foregrounds that self-segmentation of the attention finds at step 20 (the
authors' code; ``masks: self``), or to the dataset's masks (``masks: manifest``), or unmasked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from semantix.diffusion import adain, cfg, masked_adain
from semantix.diffusion.attention import InjectableAttnProcessor, Injection, attention_processors
from semantix.methods.appearance import APPEARANCE, OUTPUT, STRUCTURE, JointAppearanceTransfer
from semantix.types import MethodOutput, Sample


class CrossImageAttention(JointAppearanceTransfer):
    def __init__(
        self,
        num_steps: int = 100,
        skip_steps: int = 32,
        inversion_guidance_scale: float = 3.5,
        guidance_scale: float = 1.0,
        prompt: str = "A photo of a {domain}",
        default_domain: str = "object",
        layers: Sequence[str | int] = ("up_blocks.2", "up_blocks.3"),
        step_ranges: Sequence[Sequence[int]] = ((10, 70), (10, 90)),
        structure_every: int | None = 5,
        structure_until: int = 40,
        contrast_strength: float = 1.67,
        swap_guidance_scale: float = 3.5,
        adain_start_step: int | None = 20,
        inject: bool = True,
        masks: str = "self",
        self_segments: int = 5,
        self_segment_threshold: float = 1.4,
        cache_inversions: bool = True,
    ):
        super().__init__(num_steps, skip_steps, inversion_guidance_scale, prompt, default_domain, layers,
                         step_ranges, structure_every, structure_until, inject, masks, cache_inversions,
                         self_segments, self_segment_threshold)
        self.guidance_scale = guidance_scale
        self.contrast_strength = contrast_strength
        self.swap_guidance_scale = swap_guidance_scale
        self.adain_start_step = adain_start_step

    # -- the algorithm -------------------------------------------------------------------------------
    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        # 1. Edit-friendly DDPM inversion of the structure and the appearance image (CFG 3.5); the
        #    joint batch [output, appearance, structure] at step `skip_steps`.
        job = self.start(sample, seed)
        x = job.x
        swap_scales = self.swap_guidance_schedule()
        latent_masks = job.latent_masks
        segmentation: dict = {}
        segment_step = None
        if job.mask_source == "self" and self.adain_start_step is not None:
            # The authors record the attention while their step counter (set after each step) reads
            # start - 1, i.e. while step `start` is computed, and segment before its AdaIN.
            segment_step = self.adain_start_step
        processors = self.processors_for(job, InjectableAttnProcessor)
        with torch.no_grad(), attention_processors(self.unet, processors):
            for r in self.run_steps:
                i = self.skip_steps + r
                t = self.stepper.timesteps[i]
                active = self.active_layers(r)
                # 2a. Pass with the swap: the output's queries attend to the appearance's (or, on
                #     structure steps, the structure's) keys/values, with a contrasted map.
                source = STRUCTURE if self.is_structure_step(r) else APPEARANCE
                swap = Injection(kv_rows=[source, APPEARANCE, STRUCTURE], contrast=self.contrast_strength,
                                 contrast_rows=[OUTPUT])
                for name, proc in processors.items():
                    proc.inject = swap if name in active else None
                self.record(processors, r == segment_step)
                eps_swap = self.predict(x, t, job.cond)
                if r == segment_step:  # masks: self: segment the appearance and the structure row
                    latent_masks, segmentation = self.self_masks(processors, job, sample.domain or self.default_domain,
                                                                 x.shape[-1], seed & 0x7FFFFFFF)
                    self.record(processors, False)
                # 2b. Swap guidance: a pass without the swap, extrapolated towards the swapped one
                #     (only where a layer swapped). With text CFG > 1 (the paper uses 1: off), the
                #     authors instead combine an unconditional pass without the swap with eps_swap.
                for proc in processors.values():
                    proc.inject = None
                if self.guidance_scale != 1.0:
                    eps = cfg(self.predict(x, t, job.uncond), eps_swap, self.guidance_scale)
                elif active and swap_scales[r] != 1.0:
                    eps = cfg(self.predict(x, t, job.cond), eps_swap, swap_scales[r])
                else:
                    eps = eps_swap
                # 2c. DDPM step of each row with its own noise map.
                x = self.stepper.step(x, eps, i, job.zs[r])
                # 2d. AdaIN of the output latent to the appearance latent (masked to the foregrounds).
                if self.adain_start_step is not None and r >= self.adain_start_step:
                    out, app = x[OUTPUT:OUTPUT + 1], x[APPEARANCE:APPEARANCE + 1]
                    x[OUTPUT:OUTPUT + 1] = adain(out, app) if latent_masks is None else masked_adain(out, app, *latent_masks)
        # 3. Decode the output row.
        image = self.decode(x[OUTPUT:OUTPUT + 1])[0]
        return MethodOutput(image=image, diagnostics={"num_references_used": job.references_used,
                                                      "masked": job.masks is not None, "prompt": job.prompt,
                                                      "masks": job.mask_source, **segmentation})

    # -- pieces --------------------------------------------------------------------------------------
    def swap_guidance_schedule(self) -> list[float]:
        """Swap-guidance scale per run step: linear from s to max(s / 2, 1) over the steps that run."""
        s = self.swap_guidance_scale
        return np.linspace(s, max(s / 2, 1.0), len(self.run_steps)).tolist()
