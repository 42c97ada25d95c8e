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

Masks (`masks: manifest | self | none`): the manifest's foreground masks; or self-segmentation as
Cross-Image Attention's code derives them (`utils/segmentation.py`, from Prompt Mixing): at the first step
with statistics matching (before its AdaIN), the head-averaged self-attention maps of the appearance and
the structure row in the last decoder self-attention layer at the latent's resolution are clustered
by K-means (5 segments), and the segments whose mean cross-attention to the domain word (from the
last decoder cross-attention layer at half that resolution, upsampled) exceeds 1.4 x the mean score
of the other segments form the foreground; or none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semantix.diffusion import Inversion, invert
from semantix.diffusion.attention import self_attention_layers
from semantix.methods.diffusion import DiffusionMethod
from semantix.types import Sample, SampleError

OUTPUT, APPEARANCE, STRUCTURE = 0, 1, 2
MASK_SOURCES = ("manifest", "self", "none")


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
    mask_source: str = "none"  # which masks this sample uses: manifest, self (from the segmentation step) or none
    _token_masks: dict = field(default_factory=dict, repr=False)

    def token_masks(self, side: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(structure, appearance) masks on a ``side x side`` token grid, flat booleans; made once per side."""
        if self.masks is None:
            return None
        if side not in self._token_masks:
            self._token_masks[side] = tuple(mask_at(m, side, self.sample_id).flatten().bool() for m in self.masks)
        return self._token_masks[side]


class JointAppearanceTransfer(DiffusionMethod):
    """Base of the two appearance-transfer methods; see the module docstring."""

    scheduler_kind = "ddpm"

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
        masks: str,
        cache_inversions: bool,
        self_segments: int = 5,
        self_segment_threshold: float = 1.4,
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
        super().__init__(num_steps, cache_inversions)
        self.skip_steps = skip_steps
        self.inversion_guidance_scale = inversion_guidance_scale
        self.prompt = prompt
        self.default_domain = default_domain
        self.layer_selectors = list(layers)
        self.step_ranges = [tuple(int(v) for v in r) for r in step_ranges]
        self.structure_every = structure_every
        self.structure_until = structure_until
        self.inject = inject
        if masks not in MASK_SOURCES:
            raise ValueError(f"masks must be one of {MASK_SOURCES}, got {masks!r}")
        self.mask_source = masks
        self.self_segments = int(self_segments)
        self.self_segment_threshold = float(self_segment_threshold)

    # -- set-up --------------------------------------------------------------------------------------
    def prepare(self, backbone, cache_dir: Path) -> None:
        super().prepare(backbone, cache_dir)
        # Each selector's layers with its [start, end) step range; a layer named twice keeps its first range.
        self.layer_ranges: dict[str, tuple[int, int]] = {}
        for selector, step_range in zip(self.layer_selectors, self.step_ranges, strict=True):
            for name in self_attention_layers(self.unet, [selector]):
                self.layer_ranges.setdefault(name, step_range)
        # Decoder cross-attention layers: recorded at the self-segmentation step (masks: self).
        self.cross_layers = [k[: -len(".processor")] for k in self.unet.attn_processors
                             if k.startswith("up_blocks") and k.endswith("attn2.processor")]

    # -- shared pieces -------------------------------------------------------------------------------
    @property
    def run_steps(self) -> range:
        """The denoising steps that run, numbered from 0 (module docstring)."""
        return range(self.num_steps - self.skip_steps)

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

    def start(self, sample: Sample, seed: int) -> JointBatch:
        """Invert the structure and the appearance image; the joint batch at step `skip_steps`."""
        prompt = self.prompt_for(sample)
        structure, appearance, used = self.invert_inputs(sample, prompt, seed)
        x, zs = self.joint_start(structure, appearance)
        masks = self.masks(sample)
        latent_masks = None if masks is None else [mask_at(m, x.shape[-1], sample.sample_id) for m in masks]
        source = "manifest" if masks is not None else ("self" if self.mask_source == "self" else "none")
        return JointBatch(prompt, x, zs, self.backbone.encode_prompt([prompt]).expand(3, -1, -1),
                          self.uncond_embedding.expand(3, -1, -1), masks, latent_masks, used, sample.sample_id,
                          source)

    def invert_inputs(self, sample: Sample, prompt: str, seed: int) -> tuple[Inversion, Inversion, int]:
        """Inversions of the structure (content) and appearance (first reference) images.

        Appearance transfer takes one appearance image: with several references the first is used
        and the count is returned for the diagnostics.
        """
        structure = self.invert(sample.content, sample.input_sha256.get("content"), prompt, seed, "structure")
        appearance = self.invert(sample.references[0], sample.input_sha256.get(sample.reference_keys[0]), prompt, seed,
                                 "appearance")
        return structure, appearance, 1

    def invert(self, image: torch.Tensor, image_sha256: str | None, prompt: str, seed: int,
                     role: str) -> Inversion:
        """Edit-friendly DDPM inversion with CFG, from the on-disk cache when possible.

        The key has no method name: Eye-for-an-eye and Cross-Image Attention with the same
        settings share their inversions.
        """
        key = self.inversion_key("ddpm-inversion", image, image_sha256, num_steps=self.num_steps,
                                 guidance_scale=self.inversion_guidance_scale, prompt=prompt,
                                 noise_seed=self.noise_seed(seed, role))

        def compute() -> dict:
            eps_fn = self.eps_fn(self.backbone.encode_prompt([prompt]), self.inversion_guidance_scale)
            noise = self.noise_generator(key["noise_seed"])
            return invert(self.encode(image), eps_fn, self.scheduler, generator=noise).to("cpu").to_dict()

        return Inversion.from_dict(self.cache.get_or_compute(key, compute)).to(self.backbone.device)

    def joint_start(self, structure: Inversion, appearance: Inversion) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [output, appearance, structure] at the first step that runs, and their noise maps."""
        k = self.skip_steps
        x = torch.cat([structure.xts[k], appearance.xts[k], structure.xts[k]])
        zs = torch.stack([structure.zs[k:], appearance.zs[k:], structure.zs[k:]], dim=1)[:, :, 0]
        return x, zs

    def masks(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(structure, appearance) foreground masks ``(1, H, W)``, or None when unused or absent."""
        if self.mask_source != "manifest":
            return None
        content, reference = sample.masks.get("content"), sample.masks.get(sample.reference_keys[0])
        if content is None or reference is None:
            return None
        return content.to(self.backbone.device), reference.to(self.backbone.device)


    # -- self-segmentation (masks: self) -------------------------------------------------------------
    def processors_for(self, job: JointBatch, processor_cls) -> dict:
        """The joint loop's attention processors: the injected layers, plus recorders on the decoder
        cross-attention layers when the sample's masks come from self-segmentation (inert otherwise)."""
        names = list(self.layer_ranges) + (self.cross_layers if job.mask_source == "self" else [])
        return {name: processor_cls(name) for name in names}

    def record(self, processors: dict, on: bool) -> None:
        """Start (a fresh record per layer, q and k) or stop recording in every processor."""
        for proc in processors.values():
            proc.record = {} if on else None
            proc.record_keys = ("q", "k")

    def domain_token_indices(self, prompt: str, domain: str) -> list[int]:
        """Positions of the domain word's tokens in the encoded prompt (after the start token)."""
        tokenizer = self.backbone.tokenizer
        full = tokenizer(prompt).input_ids
        head = tokenizer(prompt[: prompt.rfind(domain)].rstrip()).input_ids if domain in prompt else full
        start = len(head) - 1  # without the end token
        end = len(full) - 1
        return list(range(start, end)) if end > start else [end - 1]

    def self_masks(self, processors: dict, job: JointBatch, domain: str, side: int,
                   seed: int) -> tuple[list[torch.Tensor] | None, dict]:
        """(structure, appearance) latent masks ``(1, 1, side, side)`` by self-segmentation of the
        recorded step, and what the record says about them. An empty foreground gives ``None``
        (the caller then matches without masks) and says so."""
        heads = {name: int(self.unet.get_submodule(name).heads) for name in processors}
        own = [n for n in self.layer_ranges if processors[n].record and processors[n].record["q"].shape[1] == side * side]
        cross = [n for n in self.cross_layers if processors[n].record]
        if not own or not cross:
            raise RuntimeError("self-segmentation: no recorded self-attention layer at the latent resolution")
        sides = {n: tokens_side(processors[n].record["q"].shape[1]) for n in cross}
        half = [n for n in cross if sides[n] * 2 == side] or [n for n in cross if sides[n] == side] or cross
        self_layer, cross_layer = own[-1], half[-1]
        tokens = self.domain_token_indices(job.prompt, domain)
        masks, fractions = [], []
        for row in (STRUCTURE, APPEARANCE):
            rec, crec = processors[self_layer].record, processors[cross_layer].record
            self_maps = head_mean_attention(rec["q"][row], rec["k"][row], heads[self_layer])
            cross_maps = head_mean_attention(crec["q"][row], crec["k"][row], heads[cross_layer])
            mask = self_segmentation_mask(self_maps, cross_maps, tokens, self.self_segments,
                                          self.self_segment_threshold, seed)
            fractions.append(float(mask.mean()))
            masks.append(torch.from_numpy(mask).float().to(job.x.device)[None, None])
        info = {"self_mask_foreground": fractions, "self_mask_layers": [self_layer, cross_layer]}
        if min(fractions) == 0.0:
            info["self_mask_empty"] = True  # no segment passed the score: unmasked matching
            return None, info
        return masks, info


def head_mean_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` of one row's projected ``q`` ``(N, C)`` and ``k`` ``(M, C)``,
    averaged over the heads: ``(N, M)`` in float32 (one head at a time, to bound memory)."""
    n, c = q.shape
    d = c // heads
    total = torch.zeros(n, k.shape[0], dtype=torch.float32, device=q.device)
    for h in range(heads):
        qh, kh = q[:, h * d:(h + 1) * d].float(), k[:, h * d:(h + 1) * d].float()
        total += torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)
    return total / heads


def self_segmentation_mask(self_maps: torch.Tensor, cross_maps: torch.Tensor, tokens: Sequence[int],
                           num_segments: int = 5, threshold: float = 1.4, seed: int = 0) -> np.ndarray:
    """Foreground of one image by self-segmentation (Cross-Image Attention's ``Segmentor``, from
    Prompt Mixing): K-means of the rows of the ``(N, N)`` self-attention map into ``num_segments``
    segments; each word map (the ``(Nc, T)`` cross-attention columns ``tokens``, upsampled to the
    self-attention grid by repetition, normalised as ``(m - |min m|) / max m``) scores a segment by
    its mean over it; a segment is foreground when its best score exceeds ``threshold`` x the mean of
    the other segments' best scores (the highest one left out). Returns ``(side, side)`` bool."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    n = self_maps.shape[0]
    side, cside = tokens_side(n), tokens_side(cross_maps.shape[0])
    with threadpool_limits(limits=1):
        labels = KMeans(n_clusters=num_segments, n_init=10, random_state=seed).fit_predict(
            self_maps.cpu().numpy()).reshape(side, side)
    factor = max(side // cside, 1)
    maps = cross_maps.cpu().numpy().reshape(cside, cside, -1)[:, :, list(tokens)]
    maps = maps.repeat(factor, axis=0).repeat(factor, axis=1)[:side, :side]
    maps = (maps - np.abs(maps.min(axis=(0, 1)))) / np.maximum(maps.max(axis=(0, 1)), 1e-12)
    scores = []
    for c in range(num_segments):
        inside = labels == c
        scores.append(max(float(maps[inside, i].mean()) if inside.any() else 0.0 for i in range(maps.shape[-1])))
    others = sorted(scores)[:-1]
    mean_other = sum(others) / max(len(others), 1)
    foreground = [c for c in range(num_segments) if scores[c] > threshold * mean_other]
    return np.isin(labels, foreground)


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
