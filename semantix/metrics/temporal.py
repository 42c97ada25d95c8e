"""Temporal consistency of output videos: CLIP frame consistency and warping error.

`CLIPFrameConsistency` (`clip_frame_consistency`, higher is better): the mean over consecutive output
frames (t, t+1) of 100 x cos(CLIP(O_t), CLIP(O_t+1)). Embeddings as in `semantix.metrics.clip`: open_clip
image embeddings AFTER the projection into the joint image-text space (`encode_image`), L2-normalised
(pre-projection features give other values); the same model and weights keys as `clip_style`
(default ViT-L-14 `openai`) and the same input convention (`inputs.to_clip_input`: the whole frame
resized to the model's square input, no centre crop).

`WarpingError` (`warping_error`, lower is better): Lai et al., "Learning Blind Video Temporal
Consistency", ECCV 2018,

    E_warp = 1/(F-1) sum_t  sum_i M_t(i) ||O_t(i) - warp(O_t+1)(i)||^2 / sum_i M_t(i)

with O the output frames in [0, 1], the squared error AVERAGED over the 3 channels (as Lai et al.'s
released evaluation code computes it: its mask is read as a 3-channel image, so the denominator counts
channels), and a pair with no valid pixel counting 0 (as in that code). The flow t -> t+1 and the
non-occlusion mask M_t come from the SOURCE video, never the output: flow estimated on a stylised video
would follow its artefacts and reward them. `warp(O_t+1)(p) = O_t+1(p + w(p))` (`backward_warp`).

Occlusion (`occlusion_mask`) per Ruder, Dosovitskiy, Brox, "Artistic style transfer for videos", GCPR
2016, as in Lai et al.'s code: with w the forward flow at p and w^ the backward flow sampled at p + w,
p is occluded where |w + w^|^2 > 0.01 (|w|^2 + |w^|^2) + 0.5, on a motion boundary where
|grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002 (forward differences, zero on the last row and column).
Ruder et al. write both for the flow that warps into the frame the mask belongs to; here that frame is
t and that flow is the forward one, so the boundary test is on w = (u, v). Pixels whose target p + w
falls outside the frame are invalid too [ours: Lai et al.'s code keeps them, comparing against the
warp's border padding; so values are close to, not identical with, their published E_warp].

Flow: torchvision's RAFT large (Teed and Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical
Flow", ECCV 2020), weights `Raft_Large_Weights.C_T_SKHT_V2`, `num_flow_updates` refinement steps
(torchvision's default 12), the last prediction. Input: frames mapped to [-1, 1] at `inputs.raft_size`:
`flow_size` (short side; None = the frames' own size), at least 128 px (the least torchvision's RAFT
takes) and each side rounded up to a multiple of 8. The flow is resized back to the frame size and its
vectors scaled by the same factors. Flow convention: (B, 2, H, W) in pixels, channel 0 = x (u),
channel 1 = y (v), pixel centres at integer coordinates (torchvision's).

Weights (config key `weights`): `torchvision` = the checkpoint in torch hub's cache, never
downloaded; a local path to that state dict; or `random` (seeded random RAFT, numbers meaningless).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

from semantix.checkpoints import load_state_dict_file
from semantix.metrics.base import Compares, VideoMetric
from semantix.metrics.clip import _CLIPMetric
from semantix.metrics.inputs import raft_size, to_clip_input, to_raft_input
from semantix.metrics.weights import (
    TORCHVISION,
    LRUCache,
    is_random,
    metric_device,
    require_file,
    seeded,
    shared_model,
    torch_hub_checkpoint,
)

RAFT_WEIGHTS = Raft_Large_Weights.C_T_SKHT_V2
RAFT_FILE = RAFT_WEIGHTS.url.rsplit("/", 1)[-1]
# Source videos whose flows are kept, so that several methods scored on one video share its flows.
FLOW_CACHE_SIZE = 8


class CLIPFrameConsistency(VideoMetric, _CLIPMetric):
    """Mean over consecutive output frames of 100 x cos of their CLIP image embeddings (module docstring).

    `batch_size`: frames per CLIP forward pass (memory only, the value does not depend on it).
    """

    compares = Compares.OUTPUT_FRAMES

    def __init__(self, model: str = "ViT-L-14", weights: str = "openai", batch_size: int = 16,
                 device: str = "auto", **kwargs):
        super().__init__(model=model, weights=weights, device=device, **kwargs)
        self.batch_size = batch_size

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, D) unit-norm post-projection embeddings of (F, 3, H, W) frames in [0, 1]."""
        embedder = self.embedder
        batch = torch.cat([to_clip_input(frame, size=embedder.image_size, mean=embedder.mean, std=embedder.std)
                           for frame in frames])
        return torch.cat([
            embedder.model.encode_image(chunk.to(embedder.device), normalize=True).float().cpu()
            for chunk in batch.split(self.batch_size)
        ])

    def score(self, output: torch.Tensor, target: None) -> torch.Tensor:
        embeddings = self.embed_frames(output)
        return (100.0 * (embeddings[:-1] * embeddings[1:]).sum(dim=1)).mean()


def _targets(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) x and y pixel coordinates of p + flow(p)."""
    _, _, height, width = flow.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype, device=flow.device),
                            torch.arange(width, dtype=flow.dtype, device=flow.device), indexing="ij")
    return xs + flow[:, 0], ys + flow[:, 1]


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """warped(p) = image(p + flow(p)): (B, C, H, W) image, (B, 2, H, W) flow in pixels (x then y).

    Bilinear, align_corners=True (pixel centres at integer coordinates, as the flow's); a target
    outside the frame takes the nearest border value, which `occlusion_mask` marks invalid anyway.
    """
    _, _, height, width = flow.shape
    x, y = _targets(flow)
    grid = torch.stack((2.0 * x / (width - 1) - 1.0, 2.0 * y / (height - 1) - 1.0), dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def target_in_frame(flow: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: p + flow(p) lies inside the frame (within the outermost pixel centres)."""
    _, _, height, width = flow.shape
    x, y = _targets(flow)
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def _squared_norm(flow: torch.Tensor) -> torch.Tensor:
    return (flow ** 2).sum(dim=1)


def _squared_gradient(flow: torch.Tensor) -> torch.Tensor:
    """|grad u|^2 + |grad v|^2 with forward differences, zero on the last column / row (Lai et al.)."""
    dx = F.pad(flow[..., :, 1:] - flow[..., :, :-1], (0, 1))
    dy = F.pad(flow[..., 1:, :] - flow[..., :-1, :], (0, 0, 0, 1))
    return (dx ** 2 + dy ** 2).sum(dim=1)


def occlusion_mask(forward_flow: torch.Tensor, backward_flow: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool, True = valid (use the pixel): not occluded, not on a motion boundary, and its
    target inside the frame (Ruder et al. 2016; module docstring). `forward_flow` t -> t+1 and
    `backward_flow` t+1 -> t, both (B, 2, H, W); the mask belongs to frame t."""
    backward_at_target = backward_warp(backward_flow, forward_flow)
    inconsistent = _squared_norm(forward_flow + backward_at_target) > (
        0.01 * (_squared_norm(forward_flow) + _squared_norm(backward_at_target)) + 0.5
    )
    boundary = _squared_gradient(forward_flow) > 0.01 * _squared_norm(forward_flow) + 0.002
    return ~inconsistent & ~boundary & target_in_frame(forward_flow)


def warping_error(frames: torch.Tensor, flows_forward: torch.Tensor, valid_masks: torch.Tensor) -> torch.Tensor:
    """E_warp of (F, C, H, W) frames given the (F-1, 2, H, W) flows t -> t+1 and (F-1, H, W) valid masks
    (Lai et al. 2018; module docstring): masked squared error, averaged over channels and valid pixels
    per pair (0 for a pair without valid pixels), then over pairs."""
    pairs = frames.shape[0] - 1
    if flows_forward.shape != (pairs, 2, *frames.shape[-2:]) or valid_masks.shape != (pairs, *frames.shape[-2:]):
        raise ValueError(f"warping_error: frames {tuple(frames.shape)} need flows ({pairs}, 2, H, W) and masks "
                         f"({pairs}, H, W), got {tuple(flows_forward.shape)} and {tuple(valid_masks.shape)}")
    squared = ((frames[:-1] - backward_warp(frames[1:], flows_forward)) ** 2).mean(dim=1)
    valid = valid_masks.to(squared.dtype)
    per_pair = (squared * valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2)).clamp(min=1.0)
    return per_pair.mean()


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, 2, h, w) flow field resampled to `size` (H, W), its vectors scaled by W/w and H/h."""
    if tuple(flow.shape[-2:]) == tuple(size):
        return flow
    scale = torch.tensor([size[1] / flow.shape[-1], size[0] / flow.shape[-2]], dtype=flow.dtype, device=flow.device)
    return F.interpolate(flow, size=size, mode="bilinear", align_corners=False) * scale.view(1, 2, 1, 1)


def load_raft_large(weights: str, setting: str = "weights") -> torch.nn.Module:
    """torchvision's RAFT large (eval, frozen, on CPU) with `weights` (module docstring); `setting` is
    named in weights errors."""
    if is_random(weights):
        return seeded(lambda: raft_large(weights=None)).eval().requires_grad_(False)
    candidates = [torch_hub_checkpoint(RAFT_FILE)] if weights == TORCHVISION else []
    path = require_file(
        setting, weights, candidates,
        expected=f"torchvision's RAFT large {RAFT_WEIGHTS} state dict {RAFT_FILE}",
        how_to_get=f"On a machine with network, `python -c \"import torchvision; "
                   f"torchvision.models.get_weight('{RAFT_WEIGHTS}').get_state_dict()\"` puts it in "
                   f"{torch_hub_checkpoint(RAFT_FILE).parent} (set TORCH_HOME to move that cache).",
    )
    model = raft_large(weights=None)
    model.load_state_dict(load_state_dict_file(path, setting))
    return model.eval().requires_grad_(False)


class WarpingError(VideoMetric):
    """Warping error of the output video with flow and occlusion from the source video (module docstring).

    Config: `weights` (torchvision / path / random), `flow_size` (RAFT's short side, None = the frames'
    own, at least 128), `num_flow_updates` (RAFT refinement steps), `batch_size` (frame pairs per RAFT
    call; memory only), `device`. The flows and masks of the last FLOW_CACHE_SIZE source videos are
    kept (on the CPU, keyed by the frames' content), so several methods on one video estimate them once.
    """

    higher_is_better = False
    compares = Compares.SOURCE_FRAMES
    pretrained = f"torchvision RAFT large {RAFT_WEIGHTS} ({RAFT_FILE})"

    def __init__(self, weights: str = TORCHVISION, flow_size: int | None = None, num_flow_updates: int = 12,
                 batch_size: int = 8, device: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.weights_source = weights
        self.flow_size = flow_size
        self.num_flow_updates = num_flow_updates
        self.batch_size = batch_size
        self.model_device = metric_device(device)
        self._flows = LRUCache(FLOW_CACHE_SIZE)
        # Built now, so that missing weights fail when the run starts, not at its first sample.
        self.raft()

    def raft(self) -> torch.nn.Module:
        """The process-wide RAFT for these weights and device (built on first use)."""
        return shared_model(
            ("raft_large", self.weights_source, self.model_device),
            lambda: load_raft_large(self.weights_source).to(self.model_device),
        )

    def source_flows(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F-1, 2, H, W) flows t -> t+1 and (F-1, H, W) valid masks of a source video, on the CPU."""
        frames = frames.cpu().contiguous()
        # Keyed by the loaded frames, not the file's hash: one file loaded at two sizes has two flows.
        key = (tuple(frames.shape), hashlib.blake2b(frames.numpy().tobytes(), digest_size=16).digest())
        return self._flows.get_or_compute(key, lambda: self._estimate_flows(frames))

    @torch.no_grad()
    def _estimate_flows(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = frames.shape[-2:]
        raft_frames = to_raft_input(frames, raft_size(height, width, self.flow_size))
        # Forward pairs (t, t+1) then backward pairs (t+1, t), batched together.
        first = torch.cat([raft_frames[:-1], raft_frames[1:]])
        second = torch.cat([raft_frames[1:], raft_frames[:-1]])
        raft = self.raft()
        flows = torch.cat([
            raft(a.to(self.model_device), b.to(self.model_device), num_flow_updates=self.num_flow_updates)[-1]
            for a, b in zip(first.split(self.batch_size), second.split(self.batch_size), strict=True)
        ])
        forward, backward = resize_flow(flows, (height, width)).chunk(2)
        return forward.cpu(), occlusion_mask(forward, backward).cpu()

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flows, valid = self.source_flows(target)
        return warping_error(output, flows, valid).to(self.device)
