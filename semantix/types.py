"""The data that flows through the harness.

Image convention, everywhere in the harness: float32 torch tensors, shape (3, H, W), values in
[0, 1], on the CPU; a video is its frames stacked, (F, 3, H, W). Backbones convert to their own range ([-1, 1] for the VAE) internally; metrics
convert in `semantix.metrics.inputs`. Nothing else rescales images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch


def reference_keys(n: int) -> list[str]:
    """Keys of `n` references in `Sample.input_sha256` and `Sample.masks`: "reference" for one,
    else "reference_0", "reference_1", ..."""
    return ["reference"] if n == 1 else [f"reference_{k}" for k in range(n)]


@dataclass(frozen=True)
class Sample:
    """One benchmark item: a content (context) image or video and one or more references.

    A video sample has `frames`, the context video (F, 3, H, W) in order, and `content` is its first
    frame (so an image method still has an image to work on); an image sample has `frames` None.
    """

    sample_id: str
    content: torch.Tensor
    references: tuple[torch.Tensor, ...]
    prompt: str | None = None
    domain: str | None = None
    # sha256 of every input file, content first, as recorded in the manifest.
    input_sha256: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    # Optional foreground masks, float32 (1, H, W) of 0s and 1s, keyed like `input_sha256`'s images
    # ("content", "reference" or "reference_0", ...); only the images the manifest gives masks for.
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # The context video's frames (F, 3, H, W) for a video sample; its hash is input_sha256["frames"].
    frames: torch.Tensor | None = None
    # A reference VIDEO (F_r, 3, H, W) of a video sample with one reference (`references[0]` is its first
    # frame); its hash is input_sha256["reference_frames"].
    reference_frames: torch.Tensor | None = None

    @property
    def is_video(self) -> bool:
        return self.frames is not None

    def frame_sample(self, index: int) -> Sample:
        """Frame `index` of a video sample as an image sample (same reference images, prompt and id; a
        reference video is represented by its first frame, `references[0]`).

        Its `input_sha256["content"]` is the hash of the frame's pixels (methods key their caches on it).
        """
        if self.frames is None:
            raise ValueError(f"sample {self.sample_id} is not a video (it has no frames)")
        frame = self.frames[index]
        hashes = {k: v for k, v in self.input_sha256.items() if k not in ("frames", "reference_frames")}
        hashes["content"] = hashlib.sha256(frame.contiguous().numpy().tobytes()).hexdigest()
        return replace(self, content=frame, frames=None, reference_frames=None, input_sha256=hashes,
                       masks={k: v for k, v in self.masks.items() if k != "content"})

    @property
    def reference_keys(self) -> list[str]:
        """This sample's reference keys in `input_sha256` and `masks`, in reference order."""
        return reference_keys(len(self.references))

    @property
    def reference(self) -> torch.Tensor:
        """The first (or only) reference image."""
        return self.references[0]


@dataclass
class MethodOutput:
    """What a method returns for one sample: an image, or a video (`frames`, with `image` its first frame)."""

    image: torch.Tensor
    # Optional per-step diagnostics, e.g. {"energy_style": [...], "grad_norm": [...]}; JSON-serialisable.
    diagnostics: dict[str, Any] = field(default_factory=dict)
    # Output video (F, 3, H, W) in [0, 1] for a video sample; None for an image output.
    frames: torch.Tensor | None = None

    @classmethod
    def video(cls, frames: torch.Tensor, diagnostics: dict[str, Any] | None = None) -> MethodOutput:
        return cls(image=frames[0], diagnostics=dict(diagnostics or {}), frames=frames)


class SampleError(Exception):
    """A problem with one sample's input data; the sample fails, the run goes on."""


class ManifestError(Exception):
    """A problem with the manifest as a whole (the run cannot start)."""


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are missing; the message names the config key and the file expected."""
