"""Per-sample metric base: a torchmetrics `Metric` whose `update` takes (output, sample).

`metric(output, sample)` (torchmetrics' forward) returns that sample's value and accumulates it;
`compute()` gives the mean over everything seen since the last `reset()`. Subclasses declare:

- `higher_is_better` (torchmetrics' own attribute),
- `compares`: "output-content" or "output-reference",
- `input_range`: the range `score` receives (checked in `semantix.metrics.inputs`),
- `weights`: which pretrained weights it needs, or None.

`SetMetric` is the set-level counterpart (FID, ArtFID): the runner feeds it every finished sample of
a run once the loop is over (`update(output, sample)` per sample), then stores `compute()` once per
run in `summary.json`; the leaderboard reports it beside the per-sample means.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from semantix.metrics.inputs import check_same_size, check_unit_range
from semantix.types import Sample


class DeclaredMetric:
    """What every metric declares, and how the run records it."""

    compares: ClassVar[str]
    input_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    weights: ClassVar[str | None] = None

    @classmethod
    def describe(cls) -> dict:
        """What the leaderboard and provenance record about this metric."""
        return {
            "higher_is_better": cls.higher_is_better,
            "compares": cls.compares,
            "input_range": list(cls.input_range),
            "weights": cls.weights,
            "set_level": getattr(cls, "set_level", False),
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


class SetMetric(DeclaredMetric, Metric):
    """A metric of a whole set of outputs (FID-like): accumulate with `update`, one value from `compute`.

    Subclasses implement `update(output, sample)` and `compute()`, and declare `higher_is_better`,
    `compares` (e.g. "outputs-references"), `input_range`, `weights`. Inputs pass through
    `semantix.metrics.inputs` like the per-sample metrics.
    """

    is_differentiable = False
    full_state_update = False
    set_level: ClassVar[bool] = True
