"""Run directories: atomic writes, per-sample records, resume, provenance.

Layout of one run directory (one per experiment x dataset x backbone x method config)::

    config.yaml          the resolved config of this run
    provenance.json      code, versions, device, seeds, inputs, weights, one entry per invocation
    metrics.json         each metric's config hash and description (direction, comparison, range)
    records/<id>.json    one record per sample: status ok/failed, error, timings, metric values
    images/<id>.png      the output image (8-bit; metrics are computed on exactly these pixels)

Every file is written to a temporary name in the same folder and renamed into place, so a crash
(even SIGKILL) leaves either the old file or the new one, never a torn one. A record is written
after its image, so an existing record always has its image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a unique temporary name beside `path`, then rename it into place.

    The rename is atomic within one file system, so readers see the old file or the new one. The
    temporary file is created normally (not with mkstemp, whose owner-only mode would carry over to
    results meant to be shared), so the umask decides the permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short sha256 of the canonical JSON of `obj` (key order does not matter)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round a [0, 1] image to the 8-bit grid it will be stored on."""
    return torch.round(image.clamp(0, 1) * 255.0) / 255.0


def image_to_png_bytes(image: torch.Tensor) -> bytes:
    import io

    array = (quantize(image) * 255.0).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def load_png(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def safe_filename(sample_id: str) -> str:
    """Sample ids are human readable; keep them as file names unless they could escape the folder."""
    if not sample_id or sample_id.startswith(".") or any(c in sample_id for c in '/\\:\0'):
        return "id-" + hashlib.sha256(sample_id.encode()).hexdigest()[:16]
    return sample_id


class RunStore:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.records_dir = self.run_dir / "records"
        self.images_dir = self.run_dir / "images"

    # -- records -------------------------------------------------------------------------------
    def record_path(self, sample_id: str) -> Path:
        return self.records_dir / f"{safe_filename(sample_id)}.json"

    def read_record(self, sample_id: str) -> dict | None:
        """The stored record, or None when absent or unreadable (then the sample is redone)."""
        path = self.record_path(sample_id)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("unreadable record %s (%s): the sample will be redone", path, e)
            return None
        if record.get("sample_id") != sample_id:
            log.warning("record %s belongs to %r: the sample will be redone", path, record.get("sample_id"))
            return None
        if record.get("status") == "ok" and not (self.run_dir / record.get("image", "")).is_file():
            log.warning("record %s has no image: the sample will be redone", path)
            return None
        return record

    def write_record(self, record: dict) -> None:
        atomic_write_json(self.record_path(record["sample_id"]), record)

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
        atomic_write_bytes(self.run_dir / relative, data)
        return relative, hashlib.sha256(data).hexdigest()

    def load_image(self, record: dict) -> torch.Tensor:
        return load_png(self.run_dir / record["image"])

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
        atomic_write_json(self.run_dir / name, obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_bytes(self.run_dir / name, text.encode())
