"""Method plugins used only by tests (importable in subprocesses through PYTHONPATH)."""

from __future__ import annotations

import time

import torch

from semantix.methods.base import Method, seeded_generator
from semantix.metrics.base import SetMetric
from semantix.types import MethodOutput, Sample

CALLS: list[str] = []


class SlowNoisyIdentity(Method):
    """Content plus seeded noise, slowly: makes resume and determinism observable."""

    def __init__(self, delay_s: float = 0.0, noise: float = 0.05):
        self.delay_s = delay_s
        self.noise = noise

    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        CALLS.append(sample.sample_id)
        time.sleep(self.delay_s)
        noise = torch.randn(sample.content.shape, generator=seeded_generator(seed)) * self.noise
        return MethodOutput(image=(sample.content + noise).clamp(0, 1), diagnostics={"calls": 1})


class FailsOn(Method):
    """Raises on the listed samples, returns the content otherwise."""

    def __init__(self, sample_ids: list[str]):
        self.sample_ids = set(sample_ids)

    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        if sample.sample_id in self.sample_ids:
            raise RuntimeError(f"deliberate failure on {sample.sample_id}")
        return MethodOutput(image=sample.content)


class BatchingFailsOn(FailsOn):
    """FailsOn with a batched call that fails as a whole when any of its samples fails."""

    supports_batch = True
    BATCHES: list[list[str]] = []

    def call_batch(self, samples, seeds):
        BatchingFailsOn.BATCHES.append([s.sample_id for s in samples])
        return [self(s, seed) for s, seed in zip(samples, seeds, strict=True)]


class WrongShape(Method):
    def __call__(self, sample: Sample, seed: int) -> MethodOutput:
        return MethodOutput(image=torch.zeros(3, 8, 8))


class MeanBrightnessGap(SetMetric):
    """|mean brightness of all outputs - mean brightness of all references|: a set metric with a known answer."""

    higher_is_better = False
    compares = "outputs-references"
    UPDATES: list[str] = []

    def __init__(self):
        super().__init__()
        self.add_state("outputs", default=[], dist_reduce_fx="cat")
        self.add_state("references", default=[], dist_reduce_fx="cat")

    def update(self, output, sample):
        MeanBrightnessGap.UPDATES.append(sample.sample_id)
        self.outputs.append(output.mean().reshape(1))
        self.references.append(torch.stack([r.mean() for r in sample.references]))

    def compute(self):
        return (torch.cat(self.outputs).mean() - torch.cat(self.references).mean()).abs()

    def details(self):
        return {"n_references": int(sum(r.numel() for r in self.references))}
