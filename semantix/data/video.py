"""Video files: MP4 and GIF writers for output videos, and an MP4 reader for tests and tools.

A video is its frames stacked, a float32 tensor (F, 3, H, W) in [0, 1] (`semantix.types`). The
files written here are for people to watch: the harness stores and scores the lossless PNG frames
(`semantix.store.RunStore.save_video`), never these.

- MP4: H.264 (libx264) when the PyAV build has it, else MPEG-4 Part 2 (mpeg4); pixel format
  yuv420p, which every player and browser plays. yuv420p stores colour at half resolution, so both
  sides must be even: an odd side is padded by repeating its last row or column, and the MP4 is
  then one pixel larger on that side than the frames (`read_video_frames` returns it as stored).
  x264 is run on one thread because its output depends on the thread count: the same frames give
  the same bytes on any machine with the same PyAV build.
- GIF: Pillow, looping forever, each frame reduced to its own 256-colour palette. GIF counts time
  in hundredths of a second, so a frame lasts round(100 / fps) / 100 s. Pillow merges identical
  consecutive frames into one longer frame: a still video has fewer GIF frames than video frames.

Both writers encode in memory and write with `semantix.io.atomic_write_bytes` (a temporary file
in the target folder, then `os.replace`), so a reader never sees half a file.
"""

from __future__ import annotations

import io
from fractions import Fraction
from os import PathLike
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from semantix.io import atomic_write_bytes, to_uint8

__all__ = ["check_frames", "read_video_frames", "write_gif", "write_mp4"]

# Constant-quality H.264: 18 is visually lossless for most content, and small at benchmark sizes.
_X264_OPTIONS = {"crf": "18", "preset": "medium"}
# mpeg4 has no constant-quality mode by default; a fixed quantiser (2 = best) plays that part.
_MPEG4_OPTIONS = {"qscale": "2"}


def check_frames(frames: torch.Tensor) -> None:
    """Raise ValueError unless `frames` is a video tensor (F, 3, H, W) with at least one frame."""
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"a video is a (F, 3, H, W) tensor with F >= 1, got shape {tuple(frames.shape)}")


def write_mp4(frames: torch.Tensor, path: str | PathLike[str], fps: float = 8) -> Path:
    """Write `frames` (F, 3, H, W) in [0, 1] as an MP4 at `fps` frames per second; returns the path."""
    pixels = _to_uint8(frames)
    _check_fps(fps)
    # yuv420p halves the colour planes: pad an odd side by repeating the last row/column.
    height, width = pixels.shape[1:3]
    pixels = np.pad(pixels, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = _mp4_codec()
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000),
                                      options=_X264_OPTIONS if codec == "libx264" else _MPEG4_OPTIONS)
        stream.width, stream.height = pixels.shape[2], pixels.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        for array in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_gif(frames: torch.Tensor, path: str | PathLike[str], fps: float = 8) -> Path:
    """Write `frames` (F, 3, H, W) in [0, 1] as a GIF that loops forever; returns the path."""
    pixels = _to_uint8(frames)
    _check_fps(fps)
    images = [Image.fromarray(array, mode="RGB") for array in pixels]
    buffer = io.BytesIO()
    # Durations are in milliseconds here; GIF stores hundredths, so round to those.
    duration = 10 * max(1, round(100 / fps))
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_video_frames(path: str | PathLike[str]) -> torch.Tensor:
    """Decode every frame of a video file (MP4, GIF, ...) with PyAV as (F, 3, H, W) float32 in [0, 1]."""
    with av.open(str(path)) as container:
        arrays = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not arrays:
        raise ValueError(f"video {path} has no frames")
    stacked = np.stack(arrays).astype(np.float32) / 255.0
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8, on the 8-bit grid the PNG frames use."""
    check_frames(frames)
    return to_uint8(frames)


def _check_fps(fps: float) -> None:
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")


def _mp4_codec() -> str:
    """libx264 when this PyAV build has the encoder (the PyPI wheels do), else mpeg4."""
    try:
        av.codec.Codec("libx264", "w")
    except av.codec.codec.UnknownCodecError:
        return "mpeg4"
    return "libx264"
