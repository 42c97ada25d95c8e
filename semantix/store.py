"""Run directories: per-sample records, resume, provenance (file writes through `semantix.io`).

Layout of one run directory (one per experiment x dataset x backbone x method config)::

    config.yaml          the resolved config of this run
    provenance.json      code, versions, device, seeds, inputs, weights, one entry per invocation
    metrics.json         each metric's config hash and description (direction, comparison, range)
    records/<name>.json  one record per sample: status ok/failed, error, timings, metric values
    images/<name>.png    the output image (8-bit; metrics are computed on exactly these pixels)
    videos/<name>/000.png  an output video's frames, lossless 8-bit (metrics read these)
    videos/<name>.mp4    the same video for people to watch (H.264, lossy)
    videos/<name>.gif    the same video as a looping preview (256 colours per frame)

`<name>` is `safe_filename(sample_id)`: the id itself when it is short and made of safe characters,
else a readable prefix plus a hash of the whole id, so distinct ids never share a file.

Every file is written atomically (`semantix.io.atomic_write_bytes`), so a crash (even SIGKILL) leaves
either the old file or the new one, never a torn one. A record is
written after its image (and frames), and holds their sha256: a record is trusted only when they
are on disk with those hashes (`RunStore.check_record`), otherwise its sample is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semantix.data.video import check_frames, write_gif, write_mp4
from semantix.io import (
    ResultsNotWritable,
    atomic_write_bytes,
    atomic_write_json,
    clip_sha256,
    image_to_png_bytes,
    is_directory_error,
    png_bytes_to_image,
    remove_stale_temporaries,
    sha256_bytes,
)

log = logging.getLogger(__name__)


class StoredFileError(ValueError):
    """A stored output is missing, unreadable or differs from the sha256 its record holds."""


# -- sample ids -> file names ----------------------------------------------------------------------
# An id is its own file name when it is made of these characters, starts with a letter or digit and is
# at most PLAIN_ID_MAX characters; any other id gets a readable prefix and "~" plus a hash of the whole
# id. "~" never occurs in a plain name, so an escaped name cannot be another id's plain name.
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@,-]*")
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._+=@,-]+")
PLAIN_ID_MAX = 120
_PREFIX_MAX = 60
_ID_HASH_CHARS = 24  # 96 bits of sha256(id)


def safe_filename(sample_id: str) -> str:
    """The file name stem of a sample id: one-to-one, at most 120 ASCII characters, never hidden.

    Short ids of letters, digits and `._+=@,-` (starting with a letter or digit) are kept as they
    are. Any other id (a path separator, a leading dot, other characters, more than 120 characters)
    becomes `<readable prefix>~<sha256 of the id, 24 hex>`; the prefix keeps up to 60 of its safe
    characters (runs of others become "_").
    """
    if len(sample_id) <= PLAIN_ID_MAX and _PLAIN_ID.fullmatch(sample_id):
        return sample_id
    digest = hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()[:_ID_HASH_CHARS]
    prefix = _UNSAFE_CHARACTERS.sub("_", sample_id).lstrip("._")[:_PREFIX_MAX] or "id"
    return f"{prefix}~{digest}"


def legacy_filename(sample_id: str) -> str:
    """The file name stem older versions used (not one-to-one, unbounded); read, never written."""
    if not sample_id or sample_id.startswith(".") or any(c in sample_id for c in '/\\:\0'):
        return "id-" + hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return sample_id


def _read_verified(path: Path, expected_sha256: str | None, what: str) -> bytes:
    """The bytes of a stored output; `StoredFileError` if unreadable or not the expected sha256."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StoredFileError(f"{what} {path} cannot be read ({e.strerror or e})") from e
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise StoredFileError(f"{what} {path} differs from the sha256 its record holds (altered or damaged)")
    return data


@dataclass
class RecordCheck:
    """What `RunStore.check_record` found: the record if trustworthy, else why not (`problem`:
    "absent", "unreadable", "other id" or "outputs")."""

    record: dict | None
    problem: str | None = None
    detail: str = ""


class RunStore:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.records_dir = self.run_dir / "records"
        self.images_dir = self.run_dir / "images"

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn an error that no file of this run could escape (read-only, full, no permission) into
        `ResultsNotWritable` naming the run directory; other errors (one file) pass unchanged."""
        try:
            yield
        except ResultsNotWritable:
            raise
        except OSError as e:
            if not is_directory_error(e):
                raise
            raise ResultsNotWritable(
                e.errno, f"the run directory {self.run_dir.absolute()} cannot be written ({e.strerror or e}: "
                f"{e.filename}); free space or make it writable (paths.results_dir), then run the same command "
                "again to resume"
            ) from e

    def _write_bytes(self, relative: str, data: bytes) -> None:
        with self._writing():
            atomic_write_bytes(self.run_dir / relative, data)

    def remove_stale_temporaries(self) -> int:
        """Remove the temporary files of killed writes in this run directory (see `is_stale_temporary`)."""
        return remove_stale_temporaries(self.run_dir) if self.run_dir.is_dir() else 0

    # -- records -------------------------------------------------------------------------------
    def record_path(self, sample_id: str) -> Path:
        return self.records_dir / f"{safe_filename(sample_id)}.json"

    def _legacy_record_path(self, sample_id: str) -> Path | None:
        """Where an older version stored this id's record, when that differs from `record_path`."""
        legacy = self.records_dir / f"{legacy_filename(sample_id)}.json"
        return None if legacy == self.record_path(sample_id) else legacy

    def read_record(self, sample_id: str, verify: bool = True) -> dict | None:
        """The stored record, or None when absent or not trustworthy (then the sample is redone)."""
        return self.check_record(sample_id, verify).record

    def check_record(self, sample_id: str, verify: bool = True) -> RecordCheck:
        """The stored record if it can be trusted, else why not.

        Trusted: it parses, belongs to `sample_id`, and (status ok) its outputs are on disk; with
        `verify`, the image and every video frame also hash to the sha256 the record holds (one
        hash per stored file). Anything else is reported (and logged) so that the sample is redone.
        """
        path = self.record_path(sample_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            legacy = self._legacy_record_path(sample_id)
            if legacy is None or not legacy.is_file():
                return RecordCheck(None, "absent")
            path = legacy
            try:
                text = path.read_text()
            except OSError as e:
                return RecordCheck(None, "unreadable", str(e))
        except OSError as e:
            log.warning("unreadable record %s (%s): the sample will be redone", path, e)
            return RecordCheck(None, "unreadable", str(e))
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            log.warning("unreadable record %s (%s): the sample will be redone", path, e)
            return RecordCheck(None, "unreadable", str(e))
        if record.get("sample_id") != sample_id:
            if path == self.record_path(sample_id):
                log.warning("record %s belongs to %r: the sample will be redone", path, record.get("sample_id"))
            return RecordCheck(None, "other id", str(record.get("sample_id")))
        if record.get("status") == "ok":
            problem = self.output_problem(record, verify)
            if problem:
                log.warning("record %s: %s: the sample will be redone", path, problem)
                return RecordCheck(None, "outputs", problem)
        return RecordCheck(record)

    def output_problem(self, record: dict, verify: bool = True) -> str | None:
        """What is wrong with the stored outputs of an ok record, or None when they are intact.

        An image record needs its image; a video record every frame of its "frames" list (and its
        image too when it names one). With `verify`, the image must hash to "image_sha256" and the
        frames, together, to "frames_sha256" (`clip_sha256`), where the record holds them.
        """
        frames = record.get("frames")
        try:
            if "image" in record or frames is None:
                image = record.get("image")
                if not isinstance(image, str) or not image:
                    return "the record names no image"
                path = self.run_dir / image
                if not verify or record.get("image_sha256") is None:
                    if not path.is_file():
                        return f"image {image} is missing"
                else:
                    _read_verified(path, record["image_sha256"], "image")
            if frames is not None:
                if not isinstance(frames, list):
                    return "the record's frames are not a list"
                expected = record.get("frames_sha256") if verify else None
                hashes = []
                for relative in frames:
                    path = self.run_dir / relative
                    if expected is None:
                        if not path.is_file():
                            return f"frame {relative} is missing"
                    else:
                        hashes.append(sha256_bytes(_read_verified(path, None, "frame")))
                if expected is not None and clip_sha256(hashes) != expected:
                    return "the video frames differ from the sha256 their record holds (altered or damaged)"
        except StoredFileError as e:
            return str(e)
        return None

    def write_record(self, record: dict) -> None:
        sample_id = record["sample_id"]
        with self._writing():
            atomic_write_json(self.record_path(sample_id), record)
        legacy = self._legacy_record_path(sample_id)
        if legacy is not None and legacy.is_file():
            # Moved to its one-to-one name: drop the old-name copy (only if it is this id's).
            try:
                if json.loads(legacy.read_text()).get("sample_id") == sample_id:
                    legacy.unlink()
            except (OSError, ValueError, AttributeError):
                pass

    def records(self) -> list[dict]:
        """Every readable record of the run."""
        out = []
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                log.warning("skipping unreadable record %s (%s)", path, e)
        return out

    # -- images --------------------------------------------------------------------------------
    def save_image(self, sample_id: str, image: torch.Tensor) -> tuple[str, str]:
        """Write the output PNG; return its path relative to the run and its sha256."""
        data = image_to_png_bytes(image)
        relative = f"images/{safe_filename(sample_id)}.png"
        self._write_bytes(relative, data)
        return relative, sha256_bytes(data)

    def load_image(self, record: dict) -> torch.Tensor:
        """A record's stored image; `StoredFileError` when it is unreadable or differs from the
        record's "image_sha256"."""
        path = self.run_dir / record["image"]
        data = _read_verified(path, record.get("image_sha256"), "image")
        try:
            return png_bytes_to_image(data)
        except Exception as e:  # noqa: BLE001 - any decoding error: a damaged file
            raise StoredFileError(f"image {path} cannot be decoded ({type(e).__name__}: {e})") from e

    # -- videos --------------------------------------------------------------------------------
    def save_video(self, sample_id: str, frames: torch.Tensor, fps: float = 8) -> dict[str, Any]:
        """Write an output video (F, 3, H, W) in [0, 1]: its frames as PNGs, an MP4 and a GIF preview.

        Returns the record's video fields: "frames" (the PNG paths relative to the run, in order),
        "frames_sha256" (`clip_sha256` of the PNGs' sha256s), "video" (the MP4) and "preview" (the
        GIF). The PNGs hold exactly the pixels metrics see (quantized to 8 bits like `save_image`);
        the MP4 and GIF are lossy, for viewing only.
        """

        check_frames(frames)
        frames = frames.detach().float().cpu()
        name = safe_filename(sample_id)
        frame_paths, frame_hashes = [], []
        for index, frame in enumerate(frames):
            data = image_to_png_bytes(frame)
            relative = f"videos/{name}/{index:03d}.png"
            self._write_bytes(relative, data)
            frame_paths.append(relative)
            frame_hashes.append(sha256_bytes(data))
        video, preview = f"videos/{name}.mp4", f"videos/{name}.gif"
        with self._writing():
            write_mp4(frames, self.run_dir / video, fps=fps)  # the writers quantize like the PNGs
            write_gif(frames, self.run_dir / preview, fps=fps)
        return {"frames": frame_paths, "frames_sha256": clip_sha256(frame_hashes), "video": video,
                "preview": preview}

    def load_frames(self, record: dict) -> torch.Tensor:
        """The stored output video (F, 3, H, W) of a record, from its lossless PNG frames;
        `StoredFileError` when one is unreadable or they differ from the record's "frames_sha256"."""
        datas = [_read_verified(self.run_dir / relative, None, "frame") for relative in record["frames"]]
        expected = record.get("frames_sha256")
        if expected is not None and clip_sha256(sha256_bytes(d) for d in datas) != expected:
            raise StoredFileError(f"the video frames of {record['sample_id']!r} differ from the sha256 their record "
                                  "holds (altered or damaged)")
        try:
            return torch.stack([png_bytes_to_image(d) for d in datas])
        except Exception as e:  # noqa: BLE001 - any decoding error: a damaged file
            raise StoredFileError(f"a video frame of {record['sample_id']!r} cannot be decoded ({e})") from e

    # -- run-level files -----------------------------------------------------------------------
    def read_json(self, name: str) -> dict:
        path = self.run_dir / name
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("unreadable %s (%s): starting it afresh", path, e)
            return {}

    def write_json(self, name: str, obj: Any) -> None:
        """Write `name` (a path relative to the run directory) atomically."""
        with self._writing():
            atomic_write_json(self.run_dir / name, obj)

    def write_text(self, name: str, text: str) -> None:
        self._write_bytes(name, text.encode())
