"""The method plugin contract.

A method is built by Hydra from `conf/method/<name>.yaml` (through `semantix.registry`), gets the
shared backbone once in `prepare`, and then maps one `Sample` to one `MethodOutput`. Methods never
read dataset files, write results or compute metrics: the runner does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from semantix.types import MethodOutput, Sample

if TYPE_CHECKING:
    from semantix.backbones import Backbone


class Method(ABC):
    #: Whether `prepare` needs a diffusion backbone; the runner builds one only if some method does.
    uses_backbone: ClassVar[bool] = False

    def prepare(self, backbone: Backbone | None, cache_dir: Path) -> None:  # noqa: B027 - optional hook
        """Called once per job before the first sample. `cache_dir` is for expensive intermediates."""

    @abstractmethod
    def __call__(self, sample: Sample, generator: torch.Generator) -> MethodOutput:
        """Transfer the style/appearance of `sample.references` onto `sample.content`.

        `generator` is seeded per sample by the runner; use it for every random draw.
        """
