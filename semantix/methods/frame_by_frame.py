"""The naive video baseline: an image method applied to every frame on its own.

The reference a video method must beat on temporal consistency (the Semantix paper compares its
video results with per-frame stylisation). Every frame is called with the SAME seed, so each
frame's random draws (inversion noise, sampling noise) are identical: what flickers between
frames comes from the frames, not from different noise. On a video backbone (AnimateDiff) the image
method runs on the backbone's image layers alone, i.e. plain SD1.5 (`Backbone.image_backbone`).
Settings: those of the wrapped method's own config (`method:` in conf/method/frames_*.yaml);
`frames_per_call` > 1 hands a method that batches (Semantix) that many frames per call: the same
results to float tolerance (the `call_batch` contract), faster on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from semantix.methods.base import Method
from semantix.types import MethodOutput, Sample


class FrameByFrame(Method):
    supports_video = True

    def __init__(self, method: Method, frames_per_call: int = 1):
        if not isinstance(method, Method):
            raise TypeError(f"frame_by_frame wraps a method, got {type(method).__name__}")
        if frames_per_call < 1:
            raise ValueError(f"frames_per_call must be >= 1, got {frames_per_call}")
        self.method = method
        self.frames_per_call = frames_per_call
        self.uses_backbone = method.uses_backbone

    def prepare(self, backbone, cache_dir: Path) -> None:
        image_backbone = backbone.image_backbone if backbone is not None and backbone.is_video else backbone
        self.method.prepare(image_backbone, cache_dir)

    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        if not sample.is_video:
            raise ValueError(f"frame_by_frame needs a video sample; {sample.sample_id} is an image")
        frames = [sample.frame_sample(f) for f in range(sample.frames.shape[0])]
        outputs = []
        for start in range(0, len(frames), self.frames_per_call):
            chunk = frames[start:start + self.frames_per_call]
            outputs += self.method.call_batch(chunk, [seed] * len(chunk))
        diagnostics = {key: [o.diagnostics.get(key) for o in outputs] for key in outputs[0].diagnostics}
        return MethodOutput.video(torch.stack([o.image for o in outputs]), diagnostics)
