"""What Eye-for-an-eye and Cross-Image Attention share: appearance transfer by joint denoising.

Both methods (Go et al., arXiv 2406.07008; Alaluf et al., SIGGRAPH Asia 2024, arXiv 2311.03335)
invert the structure (content) and the appearance (reference) image with edit-friendly DDPM
inversion (Huberman-Spiegelglas et al., CVPR 2024; 100 steps, CFG 3.5, prompt "A photo of a
{domain}"), skip the first 32 steps, and denoise three latents together, one batch:

    row 0: the output,     starts at the structure's x_t, uses the structure's noise maps;
    row 1: the appearance, starts at its own x_t,       uses its own noise maps;
    row 2: the structure,  starts at its own x_t,       uses its own noise maps.

Rows 1 and 2 provide, at every step, the features the output borrows in chosen decoder
self-attention layers. This module holds those shared pieces: the cached inversion, the prompt,
the joint start, the per-layer step ranges, the structure-injection schedule and the masks at
latent and layer resolution. Each method's `__call__` and sampling loop live in its own file.

Step numbering: `r = 0 .. num_steps - skip_steps - 1` counts the denoising steps that run (the
authors' step index, in which their ranges are given); step `r` is schedule index `skip_steps + r`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from semantix.diffusion import DDPMStepper, Inversion, UNetEpsFn, invert
from semantix.diffusion.attention import self_attention_layers
from semantix.diffusion.cache import TensorCache
from semantix.methods.base import Method
from semantix.store import stable_hash
from semantix.types import Sample, SampleError

OUTPUT, APPEARANCE, STRUCTURE = 0, 1, 2


@dataclass
class JointBatch:
    """Everything a joint-denoising loop starts from (see `JointAppearanceTransfer.start`)."""

    prompt: str
    x: torch.Tensor  # (3, C, h, w): rows [output, appearance, structure] at the first step that runs
    zs: torch.Tensor  # (R, 3, C, h, w): noise maps of each run step, per row
    cond: torch.Tensor  # the prompt's embedding, one per row
    uncond: torch.Tensor  # the empty prompt's embedding, one per row
    masks: tuple[torch.Tensor, torch.Tensor] | None  # (structure, appearance) (1, H, W) image masks
    latent_masks: list[torch.Tensor] | None  # the same at latent resolution, (1, 1, h, w)
    references_used: int
    sample_id: str = ""
    _token_masks: dict = field(default_factory=dict, repr=False)

    def token_masks(self, side: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(structure, appearance) masks on a ``side x side`` token grid, flat booleans; made once per side."""
        if self.masks is None:
            return None
        if side not in self._token_masks:
            self._token_masks[side] = tuple(mask_at(m, side, self.sample_id).flatten().bool() for m in self.masks)
        return self._token_masks[side]


class JointAppearanceTransfer(Method):
    """Base of the two appearance-transfer methods; see the module docstring."""

    uses_backbone = True

    def __init__(
        self,
        num_steps: int,
        skip_steps: int,
        inversion_guidance_scale: float,
        prompt: str,
        default_domain: str,
        layers: Sequence[str | int],
        step_ranges: Sequence[Sequence[int]],
        structure_every: int | None,
        structure_until: int,
        inject: bool,
        use_masks: bool,
        cache_inversions: bool,
    ):
        if not 0 <= skip_steps < num_steps:
            raise ValueError(f"skip_steps must be in [0, num_steps), got {skip_steps} of {num_steps}")
        if len(step_ranges) != len(layers):
            raise ValueError(f"step_ranges has {len(step_ranges)} ranges for {len(layers)} layer selectors; "
                             "give one [start, end) range per selector")
        if any(len(r) != 2 or r[0] > r[1] for r in step_ranges):
            raise ValueError(f"each step range must be [start, end) with start <= end, got {list(step_ranges)}")
        if "{domain}" not in prompt:
            raise ValueError(f"prompt must contain '{{domain}}', got {prompt!r}")
        self.num_steps = num_steps
        self.skip_steps = skip_steps
        self.inversion_guidance_scale = inversion_guidance_scale
        self.prompt = prompt
        self.default_domain = default_domain
        self.layer_selectors = list(layers)
        self.step_ranges = [tuple(int(v) for v in r) for r in step_ranges]
        self.structure_every = structure_every
        self.structure_until = structure_until
        self.inject = inject
        self.use_masks = use_masks
        self.cache_inversions = cache_inversions

    # -- set-up --------------------------------------------------------------------------------------
    def prepare(self, backbone, cache_dir: Path) -> None:
        self.backbone = backbone
        self.unet = backbone.unet
        # Each selector's layers with its [start, end) step range; a layer named twice keeps its first range.
        self.layer_ranges: dict[str, tuple[int, int]] = {}
        for selector, step_range in zip(self.layer_selectors, self.step_ranges, strict=True):
            for name in self_attention_layers(self.unet, [selector]):
                self.layer_ranges.setdefault(name, step_range)
        self.scheduler = backbone.make_scheduler("ddpm")
        self.scheduler.set_timesteps(self.num_steps)
        self.stepper = DDPMStepper(self.scheduler)
        self.uncond_embedding = backbone.encode_prompt([""])
        self.cache = TensorCache(Path(cache_dir), enabled=self.cache_inversions)

    # -- shared pieces -------------------------------------------------------------------------------
    @property
    def run_steps(self) -> range:
        """The denoising steps that run, numbered from 0 (module docstring)."""
        return range(self.num_steps - self.skip_steps)

    def predict(self, x: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        """One UNet noise prediction of the joint batch ``x`` (rows as ``emb``'s), in ``x``'s dtype."""
        dtype = self.unet.dtype
        return self.unet(x.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample.to(x.dtype)

    def prompt_for(self, sample: Sample) -> str:
        return self.prompt.format(domain=sample.domain or self.default_domain)

    def active_layers(self, r: int) -> list[str]:
        """Layers whose step range contains run step `r` (none when injection is off)."""
        if not self.inject:
            return []
        return [name for name, (start, end) in self.layer_ranges.items() if start <= r < end]

    def is_structure_step(self, r: int) -> bool:
        """Steps r = 0, every, 2 every, ... below `structure_until` borrow from the structure image instead."""
        return self.structure_every is not None and r % self.structure_every == 0 and r < self.structure_until

    def start(self, sample: Sample, generator: torch.Generator) -> JointBatch:
        """Invert the structure and the appearance image; the joint batch at step `skip_steps`."""
        prompt = self.prompt_for(sample)
        structure, appearance, used = self.invert_inputs(sample, prompt, generator.initial_seed())
        x, zs = self.joint_start(structure, appearance)
        masks = self.masks(sample)
        latent_masks = None if masks is None else [mask_at(m, x.shape[-1], sample.sample_id) for m in masks]
        return JointBatch(prompt, x, zs, self.backbone.encode_prompt([prompt]).expand(3, -1, -1),
                          self.uncond_embedding.expand(3, -1, -1), masks, latent_masks, used, sample.sample_id)

    def invert_inputs(self, sample: Sample, prompt: str, seed: int) -> tuple[Inversion, Inversion, int]:
        """Inversions of the structure (content) and appearance (first reference) images.

        Appearance transfer takes one appearance image: with several references the first is used
        and the count is returned for the diagnostics.
        """
        structure = self.invert_image(sample.content, sample.input_sha256.get("content"), prompt, seed, "structure")
        appearance = self.invert_image(sample.references[0], sample.input_sha256.get(sample.reference_keys[0]), prompt, seed,
                                       "appearance")
        return structure, appearance, 1

    def invert_image(self, image: torch.Tensor, image_sha256: str | None, prompt: str, seed: int,
                     role: str) -> Inversion:
        """Edit-friendly DDPM inversion with CFG, from the on-disk cache when possible.

        The key has no method name: Eye-for-an-eye and Cross-Image Attention with the same
        settings share their inversions.
        """
        key = {
            "kind": "ddpm-inversion",
            "backbone": self.backbone.provenance,
            "image_sha256": image_sha256 or hashlib.sha256(image.numpy().tobytes()).hexdigest(),
            "resolution": tuple(image.shape[-2:]),
            "num_steps": self.num_steps,
            "guidance_scale": self.inversion_guidance_scale,
            "prompt": prompt,
            "noise_seed": stable_hash(f"{seed}:{role}"),
        }

        def compute() -> dict:
            latent = self.backbone.encode_images(image[None].to(self.backbone.device))
            noise = torch.Generator().manual_seed(int(key["noise_seed"], 16) & 0x7FFFFFFF)
            eps_fn = UNetEpsFn(self.unet, self.backbone.encode_prompt([prompt]), self.uncond_embedding,
                               self.inversion_guidance_scale)
            return invert(latent, eps_fn, self.scheduler, generator=noise).to("cpu").to_dict()

        return Inversion.from_dict(self.cache.get_or_compute(key, compute)).to(self.backbone.device)

    def joint_start(self, structure: Inversion, appearance: Inversion) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [output, appearance, structure] at the first step that runs, and their noise maps."""
        k = self.skip_steps
        x = torch.cat([structure.xts[k], appearance.xts[k], structure.xts[k]])
        zs = torch.stack([structure.zs[k:], appearance.zs[k:], structure.zs[k:]], dim=1)[:, :, 0]
        return x, zs

    def masks(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(structure, appearance) foreground masks ``(1, H, W)``, or None when unused or absent."""
        if not self.use_masks:
            return None
        content, reference = sample.masks.get("content"), sample.masks.get(sample.reference_keys[0])
        if content is None or reference is None:
            return None
        return content.to(self.backbone.device), reference.to(self.backbone.device)


def mask_at(mask: torch.Tensor, side: int, sample_id: str = "") -> torch.Tensor:
    """A ``(1, H, W)`` mask at ``side x side`` (area average, then >= 0.5) as ``(1, 1, side, side)`` floats.

    A mask without any foreground at that resolution is a `SampleError` (the sample fails, with the reason).
    """
    small = (F.interpolate(mask[None].float(), size=(side, side), mode="area") >= 0.5).float()
    if not bool(small.any()):
        raise SampleError(f"sample {sample_id}: a foreground mask has no foreground left at {side}x{side} "
                          "(the layer or latent resolution); use a larger object or run without masks")
    return small


def tokens_side(num_tokens: int) -> int:
    """Side of the square token grid of an attention layer (the benchmark's images are square)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens are not a square grid")
    return side
