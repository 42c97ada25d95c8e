"""A sample's inputs as the methods saw them, and the image files of the report folder.

Inputs are found through each run's provenance (`data.manifest`, `data.root`) and its manifest;
`Thumbnails` writes each distinct input once (`images/inputs/<sha>-<px>.png`, the harness's resize and
centre crop) and each output shrunk to the thumbnail size. The wandb logger uses the same thumbnails.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from semantix.data.images import resize_center_crop, sha256_file
from semantix.data.manifest import REFERENCE_SEPARATOR, Manifest

log = logging.getLogger(__name__)

# Manifest columns that name a sample's style, in order; otherwise the reference file names.
STYLE_COLUMNS = ("style", "reference_style")


@dataclass
class SampleInputs:
    """Where a sample's inputs are, and its labels, from the run's manifest."""

    content: Path | None
    references: list[Path]
    domain: str | None
    style: str
    prompt: str | None


@dataclass
class InputIndex:
    """Manifests named by runs' provenance, each loaded once; `warnings` say what could not be used."""

    manifests: dict[tuple[str, str], Manifest | None] = field(default_factory=dict)
    warnings: dict[tuple[str, str], str] = field(default_factory=dict)

    def manifest(self, data: dict) -> Manifest | None:
        key = (str(data.get("manifest")), str(data.get("root")))
        if key not in self.manifests:
            try:
                manifest = Manifest.load(data["manifest"], data.get("root"))
            except Exception as e:  # noqa: BLE001 - a moved or broken manifest leaves the outputs usable
                self.warnings[key] = f"inputs not shown: manifest {key[0]} cannot be loaded ({e})"
                manifest = None
            if manifest is not None and data.get("manifest_sha256") not in (None, manifest.sha256):
                self.warnings[key] = (f"manifest {key[0]} changed since the runs (sha256 differs): "
                                      "inputs shown are today's files")
            self.manifests[key] = manifest
        return self.manifests[key]

    def inputs(self, data: dict, sample_id: str) -> SampleInputs | None:
        manifest = self.manifest(data) if data.get("manifest") else None
        if manifest is None or sample_id not in manifest:
            return None
        row = manifest.row(sample_id)
        references = [r.strip() for r in (row.get("reference") or "").split(REFERENCE_SEPARATOR) if r.strip()]
        style = next((row[c] for c in STYLE_COLUMNS if row.get(c)), None)
        return SampleInputs(
            content=_resolve(manifest, row.get("content")),
            references=[p for p in (_resolve(manifest, r) for r in references) if p is not None],
            domain=row.get("domain"),
            style=style or "+".join(Path(r).stem for r in references),
            prompt=row.get("prompt"),
        )


def _resolve(manifest: Manifest, relative: str | None) -> Path | None:
    if not relative:
        return None
    try:
        path = manifest.resolve(relative)
    except Exception:  # noqa: BLE001 - a path outside the root is shown as missing
        return None
    return path if path.is_file() else None


def input_thumbnail(path: Path, size: int) -> Image.Image:
    """An input as the methods saw it: the harness's resize and centre crop, at most `size` px."""
    with Image.open(path) as image:
        return resize_center_crop(image.convert("RGB"), size)


def output_thumbnail(path: Path, size: int) -> Image.Image:
    """A stored output, shrunk to at most `size` px on its long side (never enlarged)."""
    with Image.open(path) as image:
        thumbnail = image.convert("RGB")
        thumbnail.thumbnail((size, size), Image.Resampling.LANCZOS)
        return thumbnail


def input_strip(paths: list[Path], size: int) -> Image.Image:
    """Several inputs (a multi-reference sample) side by side, each as `input_thumbnail` makes it."""
    images = [input_thumbnail(p, size) for p in paths]
    strip = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        strip.paste(image, (x, 0))
        x += image.width
    return strip


@dataclass
class Thumbnails:
    """Writes images into the report folder and returns their paths relative to it."""

    root: Path
    size: int
    _inputs: dict[tuple[Path, int], tuple[str, int, int]] = field(default_factory=dict)

    def input(self, path: Path, resolution: int) -> tuple[str, int, int] | None:
        side = min(self.size, resolution)
        if (path, side) not in self._inputs:
            try:
                image = input_thumbnail(path, side)
                relative = f"images/inputs/{sha256_file(path)[:16]}-{side}.png"
            except Exception as e:  # noqa: BLE001 - an unreadable input is shown as missing
                log.warning("cannot read input %s: %s", path, e)
                return None
            self._inputs[(path, side)] = self._save(image, relative)
        return self._inputs[(path, side)]

    def output(self, path: Path, relative: str) -> tuple[str, int, int] | None:
        try:
            image = output_thumbnail(path, self.size)
        except Exception as e:  # noqa: BLE001
            log.warning("cannot read output %s: %s", path, e)
            return None
        return self._save(image, relative)

    def copy(self, path: Path, relative: str) -> tuple[str, int, int] | None:
        """A file (a video's GIF preview) copied as it is, with display sizes fitting the thumbnail size."""
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as e:  # noqa: BLE001
            log.warning("cannot read output %s: %s", path, e)
            return None
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        scale = min(1.0, self.size / max(width, height))
        return relative, round(width * scale), round(height * scale)

    def _save(self, image: Image.Image, relative: str) -> tuple[str, int, int]:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            image.save(target, format="PNG")
        return relative, image.width, image.height

