"""The method plugin contract.

A method is built by Hydra from `conf/method/<name>.yaml` (through `semantix.registry`), gets the
shared backbone once in `prepare`, and then maps one `Sample` to one `MethodOutput`. Methods never
read dataset files, write results or compute metrics: the runner does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from semantix.types import MethodOutput, Sample

if TYPE_CHECKING:
    from semantix.backbones import Backbone


class Method(ABC):
    #: Whether `prepare` needs a diffusion backbone; the runner builds one only if some method does.
    uses_backbone: ClassVar[bool] = False
    #: Whether `call_batch` really batches (several samples per UNet call). With `runner.batch_size`
    #: > 1 the runner hands such a method groups of samples; others always get one at a time.
    supports_batch: ClassVar[bool] = False
    #: Whether the method takes video samples (`Sample.frames`) and returns videos. The runner fails a
    #: video sample for any other method (run it frame by frame: conf/method/frames_*.yaml) and refuses
    #: an image method that needs the backbone when the backbone is a video one.
    supports_video: ClassVar[bool] = False

    def prepare(self, backbone: Backbone | None, cache_dir: Path) -> None:  # noqa: B027 - optional hook
        """Called once per job before the first sample. `cache_dir` is for expensive intermediates."""

    @abstractmethod
    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        """Transfer the style/appearance of `sample.references` onto `sample.content`.

        `seed` is the runner's per-sample seed (`runner.sample_seed`): every random draw derives from
        it (`seeded_generator(seed)` for torch draws), so a sample's output depends on nothing else.
        """

    def call_batch(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[MethodOutput]:
        """Several samples at once, each with its own seed; one output per sample, in order.

        The outputs must equal those of one call per sample (to float tolerance): batching is a
        speed-up, never a change of results. This default makes one call per sample.
        """
        return [self(sample, seed) for sample, seed in zip(samples, seeds, strict=True)]


def seeded_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with `seed`: a method's torch random draws for one sample."""
    return torch.Generator().manual_seed(seed)
