"""Overlapping frame windows: a clip longer than the video UNet's window, processed window by window.

AnimateDiff's motion modules were trained on 16-frame clips. A longer clip is cut into windows of
`size` frames that overlap by `overlap` frames; a per-frame quantity computed on each window (the
noise prediction, the guidance, the captured features) is blended across the windows that cover a
frame, at every denoising step, so the whole clip moves through one diffusion trajectory. This is
the context-window scheme of long-video AnimateDiff samplers (e.g. FreeNoise, Qiu et al., ICLR 2024,
as in diffusers' `AnimateDiffFreeNoiseMixin`) with their "pyramid" weights: a frame's weight in a
window grows linearly from the window's edges to its centre, and the weights of the windows covering
a frame are normalised to sum to 1. Our reading for Semantix: the paper does not say how it handles
clips longer than 16 frames (its clips are 16 frames, one window).

Frames are axis 1 everywhere here: latents ``(B, F, C, h, w)``, features ``(B, F, C, h, w)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["blend_windows", "frame_windows", "in_windows", "window_weights"]


def frame_windows(num_frames: int, size: int, overlap: int) -> list[range]:
    """Windows of `size` frames, consecutive ones sharing `overlap` frames, covering `num_frames`.

    The last window ends at the last frame (it may overlap its neighbour by more than `overlap`).
    A clip of at most `size` frames is one window.
    """
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"window overlap must be in [0, window size {size}), got {overlap}")
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    if num_frames <= size:
        return [range(num_frames)]
    starts = list(range(0, num_frames - size + 1, size - overlap))
    if starts[-1] + size < num_frames:
        starts.append(num_frames - size)
    return [range(start, start + size) for start in starts]


def window_weights(windows: Sequence[range], num_frames: int) -> list[torch.Tensor]:
    """Each window's per-frame blending weights ``(len(window),)``; per frame they sum to 1 over windows."""
    raw = [torch.tensor([min(j + 1, len(w) - j) for j in range(len(w))], dtype=torch.float64) for w in windows]
    total = torch.zeros(num_frames, dtype=torch.float64)
    for window, weights in zip(windows, raw, strict=True):
        total[window.start:window.stop] += weights
    if bool((total == 0).any()):
        raise ValueError(f"windows {list(windows)} do not cover all {num_frames} frames")
    return [weights / total[window.start:window.stop] for window, weights in zip(windows, raw, strict=True)]


def blend_windows(parts: Sequence[torch.Tensor], windows: Sequence[range], num_frames: int) -> torch.Tensor:
    """One ``(B, F, ...)`` tensor from per-window ``(B, len(window), ...)`` parts, weighted per frame."""
    if len(parts) == 1 and len(windows[0]) == num_frames:
        return parts[0]
    first = parts[0]
    out = torch.zeros((first.shape[0], num_frames, *first.shape[2:]), dtype=torch.float32, device=first.device)
    for part, window, weights in zip(parts, windows, window_weights(windows, num_frames), strict=True):
        shape = (1, len(window)) + (1,) * (part.ndim - 2)
        out[:, window.start:window.stop] += part.float() * weights.to(device=part.device, dtype=torch.float32).view(shape)
    return out.to(first.dtype)


def in_windows(fn: Callable[[torch.Tensor, range], Any], x: torch.Tensor, windows: Sequence[range]) -> Any:
    """``fn(x[:, window], window)`` for each window, blended into whole-clip results.

    `fn` returns a tensor, a dict of tensors, or a tuple of those (None entries pass through), each
    with frames on axis 1; tensors without a frame axis (per-sample scalars ``(B,)``) are averaged
    over the windows.
    """
    num_frames = x.shape[1]
    results = [fn(x[:, window.start:window.stop], window) for window in windows]
    return _blend_structure(results, windows, num_frames)


def _blend_structure(results: list[Any], windows: Sequence[range], num_frames: int) -> Any:
    first = results[0]
    if first is None:
        return None
    if isinstance(first, tuple):
        return tuple(_blend_structure([r[k] for r in results], windows, num_frames) for k in range(len(first)))
    if isinstance(first, dict):
        return {key: _blend_structure([r[key] for r in results], windows, num_frames) for key in first}
    if first.ndim < 2:
        return torch.stack(list(results)).mean(dim=0)
    return blend_windows(results, windows, num_frames)
