"""The harness's view of a dataset: a validated manifest, a resolution and an optional limit.

Built by `semantix.registry.build_dataset` from `conf/dataset/*.yaml`. The manifest is validated as
a whole when the dataset is built (a broken manifest stops the job with a clear error); each sample
is validated when loaded (a bad sample fails alone, see `Manifest.load_sample`).
"""

from __future__ import annotations

from pathlib import Path

from semantix.data import demo_manifest_path
from semantix.data.manifest import Manifest
from semantix.types import Sample


class ManifestDataset:
    def __init__(
        self, manifest: str | Path, resolution: int, root: str | Path | None = None, limit: int | None = None
    ):
        self.manifest = Manifest.load(manifest, root)
        self.resolution = resolution
        self.limit = limit
        ids = self.manifest.sample_ids
        self.sample_ids: list[str] = ids[:limit] if limit is not None else ids

    def __len__(self) -> int:
        return len(self.sample_ids)

    def load_sample(self, sample_id: str) -> Sample:
        return self.manifest.load_sample(sample_id, self.resolution)

    def provenance(self) -> dict:
        return {
            "manifest": str(self.manifest.path),
            "manifest_sha256": self.manifest.sha256,
            "root": str(self.manifest.root),
            "n_samples": len(self.sample_ids),
            "limit": self.limit,
            "resolution": self.resolution,
        }


def demo_dataset(resolution: int, limit: int | None = None) -> ManifestDataset:
    """The embedded demo set shipped in the package (see semantix/data/demo/LICENSES.md)."""
    return ManifestDataset(demo_manifest_path(), resolution, limit=limit)
