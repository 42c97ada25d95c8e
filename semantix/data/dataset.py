"""The harness's view of a dataset: a validated manifest, a resolution and an optional limit.

Built by `semantix.registry.build_dataset` from `conf/dataset/*.yaml`. The manifest is validated as
a whole when the dataset is built (a broken manifest stops the job with a clear error); each sample
is validated when loaded (a bad sample fails alone, see `Manifest.load_sample`). `prepared_dataset`
serves the sets `semantix-prep` builds (docs/datasets.md) and says how to build an absent one.
`min_frames` (config key `dataset.min_frames`) is the fewest frames a video sample may have; a
shorter clip fails alone. Image samples ignore it.
"""

from __future__ import annotations

from pathlib import Path

from semantix.data import demo_manifest_path, demo_video_manifest_path
from semantix.data.manifest import Manifest
from semantix.types import ManifestError, Sample

# How each prepared set is built: the `semantix-prep` command (without --out; <...> is for the user
# to fill in) and the manifest file it writes. The harness never runs data_prep; it only names the
# command when a manifest is absent.
PREPARED_SETS = {
    "coco_wikiart": ("semantix-prep coco_wikiart", "manifest.csv"),
    "coco_wikiart_styleid": ("semantix-prep coco_wikiart", "manifest_styleid.csv"),
    "appearance": ("semantix-prep appearance --coco-annotations <instances_val2017.json>", "manifest.csv"),
    "videos": ("semantix-prep videos --videos <DAVIS 2017 folder, or a folder of videos>", "manifest.csv"),
}


class ManifestDataset:
    def __init__(
        self,
        manifest: str | Path,
        resolution: int,
        root: str | Path | None = None,
        limit: int | None = None,
        min_frames: int = 2,
    ):
        if min_frames < 1:
            raise ValueError(f"dataset.min_frames must be at least 1, got {min_frames}")
        self.manifest = Manifest.load(manifest, root)
        self.resolution = resolution
        self.limit = limit
        self.min_frames = min_frames
        ids = self.manifest.sample_ids
        self.sample_ids: list[str] = ids[:limit] if limit is not None else ids

    def __len__(self) -> int:
        return len(self.sample_ids)

    def load_sample(self, sample_id: str) -> Sample:
        return self.manifest.load_sample(sample_id, self.resolution, min_frames=self.min_frames)

    def input_sha256(self, sample_id: str) -> dict[str, str]:
        """The sha256 of each input file of a sample as the manifest now gives it (`Manifest.input_sha256`)."""
        return self.manifest.input_sha256(sample_id)

    def provenance(self) -> dict:
        return {
            "manifest": str(self.manifest.path),
            "manifest_sha256": self.manifest.sha256,
            "root": str(self.manifest.root),
            "n_samples": len(self.sample_ids),
            "limit": self.limit,
            "resolution": self.resolution,
            "min_frames": self.min_frames,
        }


def prepared_dataset(
    set_name: str,
    manifest: str | Path,
    resolution: int,
    root: str | Path | None = None,
    limit: int | None = None,
    min_frames: int = 2,
) -> ManifestDataset:
    """A set made by `semantix-prep` (`PREPARED_SETS`): a `ManifestDataset` over its manifest.

    `set_name` picks the set (the config key `name` already picks this builder in the registry).
    When the manifest file is absent, raises `ManifestError` naming the exact `semantix-prep`
    command that writes it, and the config key `dataset.manifest` to point at a manifest elsewhere.
    A relative `manifest` is relative to the working directory (the configs use `data/<set>/`,
    where `semantix-prep` writes by default).
    """
    if set_name not in PREPARED_SETS:
        raise ValueError(f"unknown prepared set {set_name!r}; known: {', '.join(sorted(PREPARED_SETS))}")
    path = Path(manifest)
    if not path.is_file():
        command, file_name = PREPARED_SETS[set_name]
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise ManifestError(
            f"the {set_name} manifest {path} does not exist{where}. Build it with\n"
            f"    {command} --out {path.parent}\n"
            f"(it writes {path.parent / file_name}), or set dataset.manifest=/path/to/{file_name} to use "
            "a set prepared elsewhere (see docs/datasets.md)."
        )
    return ManifestDataset(path, resolution, root=root, limit=limit, min_frames=min_frames)


def demo_dataset(resolution: int, limit: int | None = None) -> ManifestDataset:
    """The embedded demo set shipped in the package (see semantix/data/demo/LICENSES.md)."""
    return ManifestDataset(demo_manifest_path(), resolution, limit=limit)


def demo_video_dataset(resolution: int, limit: int | None = None, min_frames: int = 2) -> ManifestDataset:
    """The embedded demo video set: one synthetic 16-frame camera pan x two styles (`manifest_video.csv`)."""
    return ManifestDataset(demo_video_manifest_path(), resolution, limit=limit, min_frames=min_frames)
