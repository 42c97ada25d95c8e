"""Run directories: atomic writes, per-sample records, resume, provenance.

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

Every file is written to a temporary name in the same folder and renamed into place, so a crash
(even SIGKILL) leaves either the old file or the new one, never a torn one; the temporary files a
killed write leaves behind are removed at the next start (`remove_stale_temporaries`). A record is
written after its image (and frames), and holds their sha256: a record is trusted only when they
are on disk with those hashes (`RunStore.check_record`), otherwise its sample is redone.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# Errors that mean a whole directory cannot take writes (not one file): the job stops.
DIRECTORY_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})
# A temporary file from another machine (whose writer this process cannot see) is removed once it is
# this old: far longer than any single write takes (a write renames its file as soon as it is done).
STALE_TEMPORARY_AGE_S = 3600.0


class ResultsNotWritable(OSError):
    """A results (run) directory cannot be written at all (read-only, no permission, full): the job stops."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class StoredFileError(ValueError):
    """A stored output is missing, unreadable or differs from the sha256 its record holds."""


def is_directory_error(error: BaseException) -> bool:
    """Whether an OSError is about the directory or file system as a whole (read-only, full, no
    permission) rather than about one file name."""
    return isinstance(error, OSError) and error.errno in DIRECTORY_ERRNOS


# -- temporary files -------------------------------------------------------------------------------
def _machine_token() -> str:
    """This machine, as it appears in temporary file names: host name and boot id (pids are only
    meaningful on the machine and boot that issued them)."""
    host = re.sub(r"[^A-Za-z0-9]+", "", socket.gethostname())[:24] or "host"
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        boot = ""
    return f"{host}_{boot}" if boot else host


_MACHINE = _machine_token()
_TEMPORARY = re.compile(r"^\..*\.(?P<machine>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[0-9a-f]{16}\.tmp$")
_LEGACY_TEMPORARY = re.compile(r"^\..*\.\d+\.[0-9a-f]{32}\.tmp$")  # before the machine was in the name
# A target's name is cut to this many UTF-8 bytes in its temporary name, which so stays well within
# the usual 255-byte limit of a file name whatever the target's name.
_TEMPORARY_PREFIX_BYTES = 100


def temporary_path(path: Path) -> Path:
    """A unique temporary name beside `path`: `.<name, cut to 100 bytes>.<machine>-<pid>.<random>.tmp`
    (at most 170 bytes)."""
    prefix = path.name.encode("utf-8", "surrogateescape")[:_TEMPORARY_PREFIX_BYTES].decode("utf-8", "ignore")
    return path.with_name(f".{prefix}.{_MACHINE}-{os.getpid()}.{uuid.uuid4().hex[:16]}.tmp")


def _process_start(pid: int) -> float | None:
    """When process `pid` started (epoch seconds; Linux /proc), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_gone(pid: int, mtime: float) -> bool:
    """Whether the process of this machine that wrote a temporary file (last modified at `mtime`)
    cannot still be writing it: it is not running, or the pid now belongs to a later process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # running, as another user
    started = _process_start(pid)
    return started is not None and started > mtime + 1.0


def is_stale_temporary(path: Path, now: float | None = None, max_age_s: float = STALE_TEMPORARY_AGE_S) -> bool:
    """Whether `path` is a temporary file of `atomic_write_bytes` whose write can no longer finish.

    One written on this machine (same host and boot) is stale as soon as its writer process is gone
    (or its pid was reused by a process started after the file's last change); one from another
    machine, an earlier boot or an older version of this code once it is `max_age_s` old (longer than
    any write: a writer renames its temporary file as soon as the write is complete).
    """
    name = path.name
    match = _TEMPORARY.match(name)
    if match is None and not _LEGACY_TEMPORARY.match(name):
        return False
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return False
    if match is not None and match["machine"] == _MACHINE:
        return _writer_gone(int(match["pid"]), mtime)
    return (time.time() if now is None else now) - mtime > max_age_s


def remove_stale_temporaries(folder: Path, max_age_s: float = STALE_TEMPORARY_AGE_S, recursive: bool = True) -> int:
    """Delete the temporary files of killed writes under `folder` (recursively, or in `folder` only);
    returns how many.

    Never raises: a folder that cannot be listed or a file that cannot be removed is left alone.
    """
    removed = 0
    now = time.time()
    for directory, subfolders, files in os.walk(folder):
        if not recursive:
            subfolders.clear()
        for name in files:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            path = Path(directory) / name
            if is_stale_temporary(path, now, max_age_s):
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    pass
    if removed:
        log.info("removed %d temporary file(s) of interrupted writes under %s", removed, folder)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a unique temporary name beside `path`, then rename it into place.

    The rename is atomic within one file system, so readers see the old file or the new one. The
    temporary file is created normally (not with mkstemp, whose owner-only mode would carry over to
    results meant to be shared), so the umask decides the permissions. Its name (`temporary_path`)
    stays within 255 bytes whatever the target's name, and says which process wrote it, so that the
    next start can remove it if the write was killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def check_writable_directory(directory: Path, what: str = "results directory") -> None:
    """Create `directory` if needed and write (then remove) a file in it; `ResultsNotWritable` naming
    it when that fails."""
    directory = Path(directory)
    probe = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = temporary_path(directory / "write-check")
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as e:
        if probe is not None:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
        raise ResultsNotWritable(
            e.errno, f"the {what} {directory.absolute()} cannot be written ({e.strerror or e}); make it writable "
            "or choose another with paths.results_dir=/path"
        ) from e


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clip_sha256(frame_sha256s: Iterable[str]) -> str:
    """One hash for an ordered clip: sha256 of its frames' sha256 hex strings joined by ";".

    It changes when any frame changes, or when frames are added, removed or reordered.
    """
    return hashlib.sha256(";".join(frame_sha256s).encode()).hexdigest()


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short sha256 of the canonical JSON of `obj` (key order does not matter)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round a [0, 1] image to the 8-bit grid it will be stored on."""
    return torch.round(image.clamp(0, 1) * 255.0) / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> (..., H, W, 3) uint8 on the 8-bit grid of `quantize`."""
    return (quantize(images.detach().float().cpu()) * 255.0).round().byte().movedim(-3, -1).numpy()


def image_to_png_bytes(image: torch.Tensor) -> bytes:
    array = to_uint8(image)
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def png_bytes_to_image(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_png(path: Path) -> torch.Tensor:
    return png_bytes_to_image(Path(path).read_bytes())


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
        # semantix.data imports this module, so its video writers are imported when first needed.
        from semantix.data.video import check_frames, write_gif, write_mp4

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
