"""The data that flows through the harness.

Image convention, everywhere in the harness: float32 torch tensors, shape (3, H, W), values in
[0, 1], on the CPU. Backbones convert to their own range ([-1, 1] for the VAE) internally; metrics
convert in `semantix.metrics.inputs`. Nothing else rescales images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def reference_keys(n: int) -> list[str]:
    """Keys of `n` references in `Sample.input_sha256` and `Sample.masks`: "reference" for one,
    else "reference_0", "reference_1", ..."""
    return ["reference"] if n == 1 else [f"reference_{k}" for k in range(n)]


@dataclass(frozen=True)
class Sample:
    """One benchmark item: a content (context) image and one or more references."""

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
    """What a method returns for one sample."""

    image: torch.Tensor
    # Optional per-step diagnostics, e.g. {"energy_style": [...], "grad_norm": [...]}; JSON-serialisable.
    diagnostics: dict[str, Any] = field(default_factory=dict)


class SampleError(Exception):
    """A problem with one sample's input data; the sample fails, the run goes on."""


class ManifestError(Exception):
    """A problem with the manifest as a whole (the run cannot start)."""


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are missing; the message names the config key and the file expected."""
