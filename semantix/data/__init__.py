"""Datasets: manifests, validated image loading, the resize policy, and the embedded demo sets.

The harness reads datasets only through manifests (`Manifest.load`, then `Manifest.load_sample`);
`data_prep/` writes them. The demo sets ship inside the package (`demo_manifest_path()`, and
`demo_video_manifest_path()` for the video one), made by `python -m data_prep.demo`. Video files
(MP4 and GIF output, reading a video back) are in `semantix.data.video`.
"""

from __future__ import annotations

from pathlib import Path

from semantix.data.images import open_image, resize_center_crop, sha256_file, to_tensor
from semantix.data.manifest import (
    OPTIONAL_COLUMNS,
    REFERENCE_SEPARATOR,
    REQUIRED_COLUMNS,
    VIDEO_COLUMNS,
    Manifest,
    write_manifest,
)

__all__ = [
    "DEMO_DIR",
    "OPTIONAL_COLUMNS",
    "REFERENCE_SEPARATOR",
    "REQUIRED_COLUMNS",
    "VIDEO_COLUMNS",
    "Manifest",
    "demo_manifest_path",
    "demo_video_manifest_path",
    "open_image",
    "resize_center_crop",
    "sha256_file",
    "to_tensor",
    "write_manifest",
]

# The demo files are package data (pyproject: "data/demo/*" and "data/demo/*/*"), installed next to this
# module; a plain path works for both a source checkout and an installed (unzipped) package.
DEMO_DIR = Path(__file__).resolve().parent / "demo"


def demo_manifest_path() -> Path:
    """Path of the embedded demo set's manifest (`semantix/data/demo/manifest.csv`)."""
    return DEMO_DIR / "manifest.csv"


def demo_video_manifest_path() -> Path:
    """Path of the embedded demo video set's manifest (`semantix/data/demo/manifest_video.csv`)."""
    return DEMO_DIR / "manifest_video.csv"
