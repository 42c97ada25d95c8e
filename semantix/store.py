"""Run directories, written and read back: the one module that knows their files (writes go
through `semantix.io`). The runner writes through `RunStore`; the leaderboard and the report read
through `load_run` / `find_runs`.

Layout of one run directory (one per experiment x dataset x backbone x method config)::

    config.yaml          the resolved config of this run
    identity.json        what determines its outputs (`run_identity`; its hash names the directory)
    provenance.json      code, versions, device, seeds, inputs, weights; "invocations" merged from invocations/
    invocations/<start>-<host>-<pid>-shard<i>of<n>.json   one file per invocation (shards never share one)
    metric_info/<metric>.json  each metric's config, config hash and description (direction, comparison, range)
    metrics.json         the merge of metric_info/
    summary.json         set-level metric values (FID-like: one per run), with their N and hashes
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

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
    def _read_json(self, name: str) -> dict | None:
        """A run-level JSON object; None when absent, or (with a warning) unreadable or not an object."""
        path = self.run_dir / name
        try:
            value = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("unreadable %s (%s)", path, e)
            return None
        if not isinstance(value, dict):
            log.warning("unreadable %s (not a JSON object)", path)
            return None
        return value

    def _write_json(self, name: str, obj: Any) -> None:
        with self._writing():
            atomic_write_json(self.run_dir / name, obj)

    def write_config(self, config: DictConfig) -> None:
        """config.yaml: the run's resolved config (the job's, narrowed to this run's method)."""
        self._write_bytes("config.yaml", OmegaConf.to_yaml(config, resolve=True).encode())

    def config(self) -> dict:
        """The run's config.yaml as plain data; {} when absent or (with a warning) unreadable."""
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            return {}
        try:
            config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as e:  # noqa: BLE001 - any parse error: a damaged file
            log.warning("unreadable %s (%s)", path, e)
            return {}
        return config if isinstance(config, dict) else {}

    def write_identity(self, identity: dict) -> None:
        """identity.json: what determines the run's outputs (`run_identity`; its hash names the directory)."""
        self._write_json("identity.json", identity)

    def identity(self) -> dict:
        """What determines the run's outputs, the dict whose `stable_hash` names the run directory.

        identity.json as the runner wrote it; a run written before identity.json existed gets it
        recomputed from its config.yaml by `run_identity`; {} when neither file is readable.
        """
        stored = self._read_json("identity.json")
        if stored is not None:
            return stored
        config = self.config()
        methods = config.get("method")
        if not isinstance(methods, dict) or len(methods) != 1:
            return {}
        try:
            return run_identity(config, next(iter(methods)))
        except (KeyError, TypeError, AttributeError) as e:
            log.warning("%s: no identity.json and config.yaml lacks part of the run identity (%s)", self.run_dir, e)
            return {}

    def write_metric_info(self, infos: dict[str, dict]) -> None:
        """Each metric's description, one metric_info/<name>.json per metric (no read-modify-write of a
        shared file, so concurrent shards never lose one), then metrics.json, their merge."""
        for name, info in infos.items():
            self._write_json(f"metric_info/{name}.json", info)
        self._write_json("metrics.json", self.metric_info())

    def metric_info(self) -> dict:
        """Metric descriptions: metric_info/<name>.json over metrics.json (all a run written before
        metric_info/ existed has)."""
        merged = self._read_json("metrics.json") or {}
        for path in sorted((self.run_dir / "metric_info").glob("*.json")):
            info = self._read_json(f"metric_info/{path.name}")
            if info is not None:
                merged[path.stem] = info
        return merged

    def write_invocation(self, name: str, invocation: dict) -> None:
        """invocations/<name>.json: one invocation's shard, times and counts (`name` unique per invocation)."""
        self._write_json(f"invocations/{name}.json", invocation)

    def invocations(self) -> list[dict]:
        """Every invocation of the run, oldest first."""
        found = (self._read_json(f"invocations/{path.name}")
                 for path in sorted((self.run_dir / "invocations").glob("*.json")))
        return sorted((inv for inv in found if inv is not None), key=lambda inv: str(inv.get("start")))

    def write_provenance(self, provenance: dict) -> None:
        """provenance.json: `provenance` with "invocations" set to every invocation file's content."""
        self._write_json("provenance.json", {**provenance, "invocations": self.invocations()})

    def provenance(self) -> dict:
        """provenance.json; {} when absent or (with a warning) unreadable."""
        return self._read_json("provenance.json") or {}

    def write_summary(self, summary: dict) -> None:
        """summary.json: the set-level metrics of the run ("set_metrics": name -> value, N, hashes)."""
        self._write_json("summary.json", summary)

    def summary(self) -> dict:
        """summary.json; {} when absent or (with a warning) unreadable."""
        return self._read_json("summary.json") or {}


# -- run identity ----------------------------------------------------------------------------------
# Keys that choose where, how fast or how much of a run executes, not what it computes: not part of its
# identity (so `dataset.limit=2` followed by the full run resumes into the same directory).
NOT_IDENTITY = {"backbone": ("device", "channels_last", "compile_unet"), "dataset": ("limit",)}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def run_identity(config: Mapping, label: str) -> dict:
    """Everything in a config that determines method `label`'s outputs: its method section, the seed,
    and the backbone and dataset sections less `NOT_IDENTITY`. `config` is the job's config or a run's
    config.yaml; `semantix.io.stable_hash` of the result names the run directory."""
    identity = {"method": _plain(config["method"][label]), "seed": config["seed"]}
    for group, excluded in NOT_IDENTITY.items():
        identity[group] = {k: v for k, v in _plain(config[group]).items() if k not in excluded}
    return identity


# -- reading runs back -----------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a finished (or partial) run directory holds, read back for the leaderboard and the report."""

    run_dir: Path
    provenance: dict  # provenance.json, "invocations" merged from invocations/
    metric_info: dict  # metric name -> description (`RunStore.metric_info`)
    records: list[dict]  # every readable record file (a hand-copied file may repeat a sample id)
    set_metrics: dict  # name -> {"value", "n", ...} from summary.json (FID-like metrics of the whole run)
    identity: dict  # `RunStore.identity`: what determines the outputs (diff it to find swept parameters)

    def unique_records(self) -> tuple[list[dict], int]:
        """One record per sample id, and how many record files repeated an id already seen.

        Records are one file per sample, so shards writing into one run directory cannot duplicate a
        sample; a duplicate means a hand-copied or renamed file. It is counted, warned about, and only
        the first file (in path order) is kept.
        """
        seen: dict[str, dict] = {}
        duplicated = 0
        for record in self.records:
            sample_id = record.get("sample_id")
            if sample_id in seen:
                duplicated += 1
                log.warning("%s: sample %r has more than one record file; counting it once", self.run_dir, sample_id)
                continue
            seen[sample_id] = record
        return list(seen.values()), duplicated


def load_run(run_dir: Path) -> RunSummary | None:
    """A run directory read back; None (with a warning) when its provenance.json is unreadable."""
    store = RunStore(run_dir)
    provenance = store._read_json("provenance.json")
    if provenance is None:
        log.warning("skipping %s: no readable provenance.json", run_dir)
        return None
    # Shards write per-invocation and per-metric files; these merged views never lose one to a race.
    provenance["invocations"] = store.invocations()
    return RunSummary(store.run_dir, provenance, store.metric_info(), store.records(),
                      store.summary().get("set_metrics", {}), store.identity())


def find_runs(runs_root: Path) -> list[RunSummary]:
    """Every readable run directory under `runs_root` (a folder holding provenance.json), in path order."""
    runs = (load_run(path.parent) for path in sorted(Path(runs_root).rglob("provenance.json")))
    return [run for run in runs if run is not None]
