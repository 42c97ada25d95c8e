"""StyleID: style injection by self-attention.

Chung, Hyun, Heo, "Style Injection in Diffusion: A Training-free Approach for Adapting Large-scale
Diffusion Models for Style Transfer", CVPR 2024 (arXiv 2312.09008). Written from the paper and
docs/baselines.md; the authors' code (jiwoogit/StyleID) was read to understand it, not
copied. Defaults in conf/method/styleid.yaml; our reading is in docs/baselines.md.

Settings (paper): Stable Diffusion 1.5, no text prompt (empty prompt embedding, no CFG); DDIM
inversion over 50 steps of content and style, recording the content's queries and the style's
keys/values in the decoder self-attention layers of up_blocks 2 and 3 (SD1.5's 7th to 12th decoder
attention layers); initial latent AdaIN(z_T^content, z_T^style); at every step, in those layers,
q = gamma q_content + (1 - gamma) q_out (gamma = 0.75), keys/values from the style, logits times
the temperature T = 1.5; DDIM sampling (eta = 0); decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from semantix.diffusion.adain import adain
from semantix.diffusion.attention import (
    InjectableAttnProcessor,
    Injection,
    attention_processors,
    self_attention_layers,
)
from semantix.diffusion.cache import resolve_feature_dtype
from semantix.diffusion.ddim import DDIMInversion, ddim_invert
from semantix.methods.diffusion import DiffusionMethod
from semantix.types import MethodOutput, Sample

MULTI_REFERENCE = ("concat", "first")


class StyleID(DiffusionMethod):
    scheduler_kind = "ddim"

    def __init__(
        self,
        num_steps: int = 50,
        gamma: float = 0.75,
        temperature: float = 1.5,
        layers: Sequence[str | int] = ("up_blocks.2", "up_blocks.3"),
        inject: bool = True,
        inject_start: int = 0,
        inject_end: int | None = None,
        adain_init: bool = True,
        prompt: str = "",
        multi_reference: str = "concat",
        cache_inversions: bool = True,
        feature_dtype: str = "float16",
    ):
        if multi_reference not in MULTI_REFERENCE:
            raise ValueError(f"multi_reference must be one of {MULTI_REFERENCE}, got {multi_reference!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(num_steps, cache_inversions)
        self.gamma = float(gamma)
        self.temperature = float(temperature)
        self.layer_selectors = list(layers)
        self.inject = inject
        self.inject_start = inject_start
        self.inject_end = num_steps if inject_end is None else inject_end
        self.adain_init = adain_init
        self.prompt = prompt
        self.multi_reference = multi_reference
        self.feature_dtype = resolve_feature_dtype(feature_dtype)

    # -- set-up --------------------------------------------------------------------------------------
    def prepare(self, backbone, cache_dir: Path) -> None:
        super().prepare(backbone, cache_dir)
        self.layers = self_attention_layers(self.unet, self.layer_selectors)
        self.embedding = backbone.encode_prompt([self.prompt])

    # -- the algorithm -------------------------------------------------------------------------------
    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        # 1. DDIM inversion of the content (recording its queries) and of the style(s) (keys/values).
        content = self.invert(sample.content, sample.input_sha256.get("content"), ("q",))
        references = list(sample.references)
        hashes = [sample.input_sha256.get(k) for k in sample.reference_keys]
        if self.multi_reference == "first":
            references, hashes = references[:1], hashes[:1]
        styles = [self.invert(img, sha, ("k", "v")) for img, sha in zip(references, hashes, strict=True)]

        # 2. Injected DDIM sampling from AdaIN(z_T^c, z_T^s); 3. decode.
        latent = self.sample(content, styles)
        return MethodOutput(image=self.decode(latent)[0],
                            diagnostics={"num_references_used": len(styles)})

    @torch.no_grad()
    def sample(self, content: DDIMInversion, styles: list[DDIMInversion]) -> torch.Tensor:
        """The reverse process with style injection; returns the clean output latent."""
        x = content.x_T.clone()
        if self.adain_init:
            # Several styles: AdaIN to their pooled statistics (side by side along the width).
            x = adain(x, torch.cat([s.x_T for s in styles], dim=-1))
        processors = {name: InjectableAttnProcessor(name) for name in self.layers}
        with attention_processors(self.unet, processors):
            for i, t in enumerate(self.stepper.timesteps):
                injecting = self.inject and self.inject_start <= i < self.inject_end
                for name, proc in processors.items():
                    proc.inject = self._injection(content, styles, i, name) if injecting else None
                x = self.stepper.step(x, self.predict(x, t, self.embedding), i)
        return x

    # -- pieces --------------------------------------------------------------------------------------
    def _injection(self, content: DDIMInversion, styles: list[DDIMInversion], i: int, name: str) -> Injection:
        # Several styles: their keys/values concatenated along the token axis, so the output's
        # queries attend over all of them at once.
        key = torch.cat([s.features[i][name]["k"] for s in styles], dim=1)
        value = torch.cat([s.features[i][name]["v"] for s in styles], dim=1)
        return Injection(key=key, value=value, query=content.features[i][name]["q"], gamma=self.gamma,
                         temperature=self.temperature)

    def invert(self, image: torch.Tensor, image_sha256: str | None, record: tuple[str, ...]) -> DDIMInversion:
        """DDIM inversion with recorded attention tensors, from the on-disk cache when possible."""
        key = self.inversion_key("styleid-inversion", image, image_sha256, num_steps=self.num_steps,
                                 scheduler="ddim", prompt=self.prompt, layers=self.layers, record=record,
                                 feature_dtype=str(self.feature_dtype))

        def compute() -> dict:
            latent = self.encode(image)
            processors = {name: InjectableAttnProcessor(name) for name in self.layers}
            for proc in processors.values():
                proc.record_keys = record

            def eps_fn(x, t):
                for proc in processors.values():
                    proc.record = {}
                eps = self.predict(x, t, self.embedding)
                feats = {n: {k: v.to(self.feature_dtype) for k, v in p.record.items()}
                         for n, p in processors.items()}
                return eps, feats

            with attention_processors(self.unet, processors):
                inversion = ddim_invert(latent, eps_fn, self.scheduler)
            return inversion.to("cpu").to_dict()

        return DDIMInversion.from_dict(self.cache.get_or_compute(key, compute)).to(self.backbone.device)
