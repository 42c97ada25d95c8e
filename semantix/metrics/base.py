"""Per-sample metric base: a torchmetrics `Metric` whose `update` takes (output, sample).

`metric(output, sample)` (torchmetrics' forward) returns that sample's value and accumulates it;
`compute()` gives the mean over everything seen since the last `reset()`. Subclasses declare:

- `higher_is_better` (torchmetrics' own attribute),
- `compares`: "output-content" or "output-reference" (video metrics: "output-frames",
  "output-source-frames"),
- `input_range`: the range `score` receives (checked in `semantix.metrics.inputs`),
- `weights`: which pretrained weights it needs, or None.

`SetMetric` is the set-level counterpart (FID, ArtFID): the runner feeds it every finished sample of
a run once the loop is over (`update(output, sample)` per sample), then stores `compute()` once per
run in `summary.json`; the leaderboard reports it beside the per-sample means.

`VideoMetric` (`video = True`) scores a whole video: the runner calls `metric(output_frames, sample)`
with the output video (F, 3, H, W) in [0, 1] and a video sample whose `frames` is the source video at
the same size. Image metrics on videos are the runner's business (per frame, averaged).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from semantix.metrics.inputs import check_same_size, check_unit_range, check_unit_range_frames
from semantix.types import Sample


class DeclaredMetric:
    """What every metric declares, and how the run records it."""

    compares: ClassVar[str]
    input_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    weights: ClassVar[str | None] = None
    video: ClassVar[bool] = False

    @classmethod
    def describe(cls) -> dict:
        """What the leaderboard and provenance record about this metric."""
        return {
            "higher_is_better": cls.higher_is_better,
            "compares": cls.compares,
            "input_range": list(cls.input_range),
            "weights": cls.weights,
            "set_level": getattr(cls, "set_level", False),
            "video": cls.video,
        }


class SampleMetric(DeclaredMetric, Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    @abstractmethod
    def score(self, output: torch.Tensor, target: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The value for one sample: `target` is the content, or the tuple of references."""

    def update(self, output: torch.Tensor, sample: Sample) -> None:
        output = check_unit_range(output, f"{type(self).__name__} output")
        if self.compares == "output-content":
            target = check_unit_range(sample.content, f"{type(self).__name__} content")
            check_same_size(output, target, type(self).__name__)
        else:
            target = tuple(
                check_unit_range(r, f"{type(self).__name__} reference") for r in sample.references
            )
        self.values.append(self.score(output, target).reshape(1).float())

    def compute(self) -> torch.Tensor:
        return dim_zero_cat(self.values).mean()


class VideoMetric(SampleMetric):
    """A per-sample metric of a whole video: `update(output_frames, sample)`, `score(output_frames, source)`.

    `compares` is "output-frames" (the output video alone; `score` gets source None) or
    "output-source-frames" (`score` gets the sample's source frames, checked to have the output's
    frame count and size). Both are (F, 3, H, W) in [0, 1], F >= 2.
    """

    video: ClassVar[bool] = True

    def update(self, output: torch.Tensor, sample: Sample) -> None:
        name = type(self).__name__
        output = check_unit_range_frames(output, f"{name} output")
        if output.shape[0] < 2:
            raise ValueError(f"{name}: needs at least 2 frames, got {output.shape[0]}")
        source = None
        if self.compares == "output-source-frames":
            if not sample.is_video:
                raise ValueError(f"{name}: sample {sample.sample_id!r} is not a video (it has no frames); "
                                 f"{name} compares an output video with its source video")
            source = check_unit_range_frames(sample.frames, f"{name} source frames")
            if source.shape[0] != output.shape[0]:
                raise ValueError(f"{name}: the output has {output.shape[0]} frames but the source video of "
                                 f"{sample.sample_id!r} has {source.shape[0]} (output {tuple(output.shape)}, "
                                 f"source {tuple(source.shape)})")
            if source.shape != output.shape:
                raise ValueError(f"{name}: frame sizes differ, output {tuple(output.shape)} vs source "
                                 f"{tuple(source.shape)} of {sample.sample_id!r}")
        self.values.append(self.score(output, source).reshape(1).float())


class SetMetric(DeclaredMetric, Metric):
    """A metric of a whole set of outputs (FID-like): accumulate with `update`, one value from `compute`.

    Subclasses implement `update(output, sample)` and `compute()`, and declare `higher_is_better`,
    `compares` (e.g. "outputs-references"), `input_range`, `weights`. Inputs pass through
    `semantix.metrics.inputs` like the per-sample metrics.
    """

    is_differentiable = False
    full_state_update = False
    set_level: ClassVar[bool] = True
