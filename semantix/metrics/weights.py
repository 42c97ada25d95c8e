"""One resolver for every metric's pretrained weights, and one cache of the models built from them.

A metric's config has a `weights` key. Its value is one of:

- `random`: the metric's architecture with seeded random weights (the `tiny` preset: offline, every
  code path real, numbers meaningless);
- a local path to the weights file (or folder, for transformers models);
- a source id that the metric's library knows (an open_clip pretrained tag, a hub id). It is used
  only if the files are already on disk (the library's cache) or the network is allowed; offline
  and absent, `WeightsNotFoundError` names the setting and the file expected.

A metric does not know where its config sits (a preset may file `clip_style` under any key), so its
weights errors (`WeightsNotFoundError`, `UnsafeCheckpointError`) begin with the constructor argument at
fault, `setting` below ("weights: ..."), and `semantix.registry.build_metric_at` puts the config path
in front ("metrics.clip_style.weights: ...").

Models are shared: `shared_model(key, build)` builds each (architecture, weights, device) once per
process, so a preset with three CLIP metrics loads one CLIP. `LRUCache` bounds what metrics keep of
their intermediate results (CLIP embeddings, optical flows).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from semantix.runtime import resolve_device
from semantix.types import WeightsNotFoundError

RANDOM = "random"
# Named source: torchvision's ImageNet checkpoint, looked up in torch hub's cache (not downloaded here:
# a job fetches its missing files first, `semantix.weights.ensure_job_weights`).
TORCHVISION = "torchvision"
RANDOM_SEED = 0

_models: dict[tuple, Any] = {}
_lock = threading.Lock()


def metric_device(device: str | None = "auto") -> str:
    """Where a metric's network runs, as the string metrics key their shared models by (`resolve_device`)."""
    return str(resolve_device(device))


def is_random(weights: str | None) -> bool:
    return weights == RANDOM


def torch_hub_checkpoint(filename: str) -> Path:
    """Where torchvision / torch.hub keep a downloaded checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def require_file(setting: str, weights: str, candidates: list[Path], expected: str, how_to_get: str) -> Path:
    """The weights file, or a clear error naming `setting` (the argument that holds `weights`).

    `candidates`: where a named source (e.g. "torchvision") keeps its file; when empty, `weights`
    itself is the path. (A named source is never read as a path, so a folder called "torchvision" in
    the working directory cannot be mistaken for the checkpoint.) `expected` describes the file;
    `how_to_get` says how to obtain it on a machine with network.
    """
    paths = candidates or [Path(weights).expanduser()]
    for path in paths:
        if path.exists():
            return path
    tried = ", ".join(str(p) for p in paths)
    raise WeightsNotFoundError(
        f"{setting}: weights not found (value {weights!r}). Expected {expected}. Tried: {tried}. "
        f"{how_to_get} Then set it to /path/to/file, or to `random` for seeded random weights "
        "(metrics=tiny: code paths only, numbers meaningless)."
    )


def seeded(build: Callable[[], torch.nn.Module], seed: int = RANDOM_SEED) -> torch.nn.Module:
    """Build a module under a fixed seed without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def shared_model(key: tuple, build: Callable[[], Any]) -> Any:
    """`build()` once per `key` per process (key: architecture, weights, device, dtype ...)."""
    with _lock:
        if key not in _models:
            _models[key] = build()
        return _models[key]


class LRUCache:
    """At most `size` computed values, the least recently used dropped first (embeddings, flows)."""

    def __init__(self, size: int):
        self.size = size
        self._values: OrderedDict[Any, Any] = OrderedDict()

    def get_or_compute(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = self._values[key] = compute()
        if len(self._values) > self.size:
            self._values.popitem(last=False)
        return value


def clear_shared_models() -> None:
    with _lock:
        _models.clear()
