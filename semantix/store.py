"""Run directories: atomic writes, per-sample records, resume, provenance.

Layout of one run directory (one per experiment x dataset x backbone x method config)::

    config.yaml          the resolved config of this run
    provenance.json      code, versions, device, seeds, inputs, weights, one entry per invocation
    metrics.json         each metric's config hash and description (direction, comparison, range)
    records/<id>.json    one record per sample: status ok/failed, error, timings, metric values
    images/<id>.png      the output image (8-bit; metrics are computed on exactly these pixels)
    videos/<id>/000.png  an output video's frames, lossless 8-bit (metrics read these)
    videos/<id>.mp4      the same video for people to watch (H.264, lossy)
    videos/<id>.gif      the same video as a looping preview (256 colours per frame)

Every file is written to a temporary name in the same folder and renamed into place, so a crash
(even SIGKILL) leaves either the old file or the new one, never a torn one. A record is written
after its image (and frames), so an existing record always has them; one whose files went
missing is treated as absent and its sample is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable
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
    import io

    array = to_uint8(image)
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
        if record.get("status") == "ok":
            missing = self._missing_outputs(record)
            if missing:
                log.warning("record %s lacks its output %s: the sample will be redone", path, missing)
                return None
        return record

    def _missing_outputs(self, record: dict) -> str | None:
        """Which output of an ok record is not on disk, or None when all are.

        An image record needs its image; a video record needs every frame of its "frames" list (and
        its image too when it names one).
        """
        frames = record.get("frames")
        if "image" in record or frames is None:
            if not (self.run_dir / record.get("image", "")).is_file():
                return "image"
        for relative in frames or []:
            if not (self.run_dir / relative).is_file():
                return f"frame {relative}"
        return None

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
            atomic_write_bytes(self.run_dir / relative, data)
            frame_paths.append(relative)
            frame_hashes.append(hashlib.sha256(data).hexdigest())
        video, preview = f"videos/{name}.mp4", f"videos/{name}.gif"
        write_mp4(frames, self.run_dir / video, fps=fps)  # the writers quantize like the PNGs
        write_gif(frames, self.run_dir / preview, fps=fps)
        return {"frames": frame_paths, "frames_sha256": clip_sha256(frame_hashes), "video": video,
                "preview": preview}

    def load_frames(self, record: dict) -> torch.Tensor:
        """The stored output video (F, 3, H, W) of a record, from its lossless PNG frames."""
        return torch.stack([load_png(self.run_dir / relative) for relative in record["frames"]])

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
