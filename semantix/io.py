"""Project-wide file and hash tools: atomic writes (and the cleanup of killed writes' temporary
files), sha256 helpers, the 8-bit image convention and PNG bytes.

Below everything else in the package (it imports no other semantix module): the run store, the disk
cache, data preparation, video writers and benchmarks all write through `atomic_write_bytes`.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
(even SIGKILL) leaves either the old file or the new one, never a torn one; the temporary files a
killed write leaves behind are removed at the next start (`remove_stale_temporaries`).
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
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

# torch is imported where used: `semantix-bench` checks its results directory through this module
# before it announces the job, and torch takes seconds to import.
if TYPE_CHECKING:
    import torch

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
    return (image.clamp(0, 1) * 255.0).round() / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> (..., H, W, 3) uint8 on the 8-bit grid of `quantize`."""
    return (quantize(images.detach().float().cpu()) * 255.0).round().byte().movedim(-3, -1).numpy()


def image_to_png_bytes(image: torch.Tensor) -> bytes:
    array = to_uint8(image)
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def png_bytes_to_image(data: bytes) -> torch.Tensor:
    import torch

    with Image.open(io.BytesIO(data)) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_png(path: Path) -> torch.Tensor:
    return png_bytes_to_image(Path(path).read_bytes())
