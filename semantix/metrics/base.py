"""The metric contract: what every metric declares, and the base class that hands `score` its target.

Three kinds, each a torchmetrics `Metric` whose `update` takes (output, sample):

- `SampleMetric`: one value per output. `metric(output, sample)` (torchmetrics' forward) returns that
  sample's value and accumulates it; `compute()` gives the mean since the last `reset()`. Subclasses
  implement `score(output, target)`; the base class checks the output and picks the target from
  `compares` (the content image, the tuple of references, or the prompt).
- `VideoMetric` (`video = True`): a `SampleMetric` of a whole video: the output is (F, 3, H, W) in
  [0, 1], F >= 2, and the target nothing or the sample's source frames. An IMAGE metric scores a video
  through `FrameAveraged` (every frame against the same source frame, then the mean).
- `SetMetric` (`set_level = True`, FID-like): the runner feeds it every finished sample of a run once
  the loop is over (`update(output, sample)` per sample), then stores `compute()` and `details()` once
  per run in `summary.json`; the leaderboard reports it beside the per-sample means.

Every metric declares `higher_is_better` (torchmetrics' own attribute), `compares` (a `Compares`
member that its kind accepts: checked when the class is defined), `input_range` (checked in
`semantix.metrics.inputs`) and `pretrained`, a description of the pretrained networks it uses by
default (None for none); the config's `weights` key(s) choose the weights actually loaded
(`semantix.metrics.weights`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, ClassVar

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from semantix.metrics.inputs import check_same_size, check_unit_range, check_unit_range_frames
from semantix.types import Sample


class Compares(StrEnum):
    """What a metric compares its output with (the values are what metric_info/*.json records)."""

    CONTENT = "output-content"                 # the sample's content image, the output's size
    REFERENCES = "output-reference"            # the sample's references, a tuple of images
    PROMPT = "output-prompt"                   # the sample's prompt
    OUTPUT_FRAMES = "output-frames"            # nothing: the output video with itself (frame to frame)
    SOURCE_FRAMES = "output-source-frames"     # the sample's source video, frame for frame
    REFERENCE_SET = "outputs-references"       # set level: all outputs vs all references
    REFERENCE_SET_AND_CONTENT = "outputs-references+output-content"  # ArtFID: the above, and each content


def pretrained_in_use(pretrained: str | None, config: Mapping[str, Any]) -> str | None:
    """The networks a configured metric scores with: `pretrained` (the published ones), or seeded random
    weights when any `*weights` setting of its config is `random`."""
    random_settings = sorted(k for k, v in config.items() if k.endswith("weights") and v == "random")
    if pretrained is not None and random_settings:
        return f"seeded RANDOM weights ({', '.join(f'{key}=random' for key in random_settings)}), not {pretrained}"
    return pretrained


class DeclaredMetric:
    """What every metric declares, and how the run records it."""

    compares: ClassVar[Compares]
    # The `compares` values this kind of metric knows how to feed; set by each kind below.
    accepts: ClassVar[frozenset[Compares]] = frozenset()
    input_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    pretrained: ClassVar[str | None] = None
    video: ClassVar[bool] = False
    set_level: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "compares" in cls.__dict__:
            # A plain string of a known value is accepted (third-party plugins); an unknown one raises here.
            cls.compares = Compares(cls.compares)
            if cls.compares not in cls.accepts:
                raise TypeError(f"{cls.__qualname__}: its base class cannot feed compares {cls.compares.name}; "
                                f"it feeds {sorted(c.name for c in cls.accepts)}")

    @classmethod
    def describe(cls, config: Mapping[str, Any] | None = None) -> dict:
        """What the leaderboard and provenance record about this metric, configured by `config` (its
        resolved config node): `pretrained` names the published networks unless a weights setting of
        the config says `random`, so a random-weight run never claims the preset's networks."""
        return {
            "higher_is_better": cls.higher_is_better,
            "compares": cls.compares.value,
            "input_range": list(cls.input_range),
            "pretrained": pretrained_in_use(cls.pretrained, config or {}),
            "set_level": cls.set_level,
            "video": cls.video,
        }


# -- targets: what `score` receives, by `compares` -----------------------------------------------------
def _content(name: str, output: torch.Tensor, sample: Sample) -> torch.Tensor:
    content = check_unit_range(sample.content, f"{name} content")
    check_same_size(output, content, name)
    return content


def _references(name: str, output: torch.Tensor, sample: Sample) -> tuple[torch.Tensor, ...]:
    return tuple(check_unit_range(r, f"{name} reference") for r in sample.references)


def _prompt(name: str, output: torch.Tensor, sample: Sample) -> str:
    if not (sample.prompt and sample.prompt.strip()):
        raise ValueError(f"{name}: sample {sample.sample_id!r} has no prompt; this metric compares the output "
                         "with the sample's prompt (a `prompt` column in the manifest), or drop it from the metrics")
    return sample.prompt


def _nothing(name: str, output: torch.Tensor, sample: Sample) -> None:
    return None


def _source_frames(name: str, output: torch.Tensor, sample: Sample) -> torch.Tensor:
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
    return source


Target = Callable[[str, torch.Tensor, Sample], Any]
IMAGE_TARGETS: dict[Compares, Target] = {
    Compares.CONTENT: _content, Compares.REFERENCES: _references, Compares.PROMPT: _prompt,
}
VIDEO_TARGETS: dict[Compares, Target] = {Compares.OUTPUT_FRAMES: _nothing, Compares.SOURCE_FRAMES: _source_frames}


class SampleMetric(DeclaredMetric, Metric):
    """One value per output image: `score(output, target)` with the target `compares` names."""

    is_differentiable = False
    full_state_update = False
    targets: ClassVar[dict[Compares, Target]] = IMAGE_TARGETS
    accepts = frozenset(IMAGE_TARGETS)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    @abstractmethod
    def score(self, output: torch.Tensor, target: Any) -> torch.Tensor:
        """The value for one sample: `target` is the content image, the tuple of references, or the
        prompt (images: (3, H, W) in [0, 1])."""

    def check_output(self, output: torch.Tensor) -> torch.Tensor:
        return check_unit_range(output, f"{type(self).__name__} output")

    def update(self, output: torch.Tensor, sample: Sample) -> None:
        output = self.check_output(output)
        target = self.targets[self.compares](type(self).__name__, output, sample)
        self.values.append(self.score(output, target).reshape(1).float())

    def compute(self) -> torch.Tensor:
        return dim_zero_cat(self.values).mean()


class VideoMetric(SampleMetric):
    """A per-sample metric of a whole video: `update(output_frames, sample)`, `score(output_frames, source)`.

    `compares` is OUTPUT_FRAMES (the output video alone; `score` gets None) or SOURCE_FRAMES (`score`
    gets the sample's source frames, checked to have the output's frame count and size). Both are
    (F, 3, H, W) in [0, 1], F >= 2.
    """

    video: ClassVar[bool] = True
    targets = VIDEO_TARGETS
    accepts = frozenset(VIDEO_TARGETS)

    def check_output(self, output: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        output = check_unit_range_frames(output, f"{name} output")
        if output.shape[0] < 2:
            raise ValueError(f"{name}: needs at least 2 frames, got {output.shape[0]}")
        return output


class FrameAveraged:
    """An image metric on a video: each output frame against the same frame of the source video
    (`Sample.frame_sample`), the video's value the mean over frames. Each frame goes through the
    metric's own forward, so the checks and the accumulated values are those of the image path."""

    def __init__(self, metric: SampleMetric):
        if metric.video:
            raise TypeError(f"{type(metric).__name__} scores whole videos; FrameAveraged is for image metrics")
        self.metric = metric

    def __call__(self, frames: torch.Tensor, sample: Sample) -> torch.Tensor:
        return torch.stack([
            torch.as_tensor(self.metric(frame, sample.frame_sample(index))).float()
            for index, frame in enumerate(frames)
        ]).mean()


class SetMetric(DeclaredMetric, Metric):
    """A metric of a whole set of outputs (FID-like): `update(output, sample)` per finished sample, then
    one value from `compute()`, and what to store beside it from `details()`.

    Inputs pass through `semantix.metrics.inputs` like the per-sample metrics.
    """

    is_differentiable = False
    full_state_update = False
    set_level: ClassVar[bool] = True
    accepts = frozenset({Compares.REFERENCE_SET, Compares.REFERENCE_SET_AND_CONTENT})

    @abstractmethod
    def update(self, output: torch.Tensor, sample: Sample) -> None:
        """Add one finished sample's output to the set."""

    @abstractmethod
    def compute(self) -> torch.Tensor:
        """The set's value."""

    def details(self) -> dict:
        """What `summary.json` stores beside the value: set sizes, protocol knobs; a `min_n` entry is the
        protocol's minimum N, below which the runner marks the value not comparable."""
        return {}
