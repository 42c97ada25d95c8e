"""The machinery every `semantix-prep` command shares: sampling, resumable writing, reports.

A command turns its sources into *candidates* (an id, a key and a function that builds the item's
images) in a seeded order, and asks a `Preparer` for the first N that can be prepared. The
preparer writes each item's files once (PNG, atomically) and appends a line to the output folder's
journal (`.journal.jsonl`: key, files with their sha256, metadata). On a later run an item whose
key is in the journal and whose files still have their recorded hashes is reused without touching
its source; anything else is rebuilt. Items whose source is bad are reported and skipped with the
reason; the next candidate takes their place. Manifests and `source.json` are written last, in
one piece, from the ordered selection, so an interrupted run leaves no manifest with duplicates or
holes: re-running the same command completes it.

Everything is a function of the sources, the seed and the settings: the same inputs give
byte-identical files, manifests and `source.json` (nothing records times, hosts or output paths).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features
from tqdm import tqdm

from data_prep.decode import BadItem
from semantix.data import sha256_file, write_manifest
from semantix.io import atomic_write_bytes

__all__ = [
    "JOURNAL_NAME",
    "LOCAL_SOURCE_NOTE",
    "RESIZE_POLICY",
    "Built",
    "Candidate",
    "Prepared",
    "PreparedFile",
    "Preparer",
    "PrepError",
    "Skip",
    "add_common_arguments",
    "diagonal_pairs",
    "finish",
    "item_key",
    "non_negative_int",
    "permutation",
    "png_bytes",
    "positive_int",
    "safe_id",
    "versions",
]

JOURNAL_NAME = ".journal.jsonl"
RESIZE_POLICY = (
    "every image and video frame: short side scaled to the resolution with Pillow's bicubic filter "
    "(antialiased when downsampling), then the centre resolution x resolution square "
    "(semantix.data.resize_center_crop, the harness's own policy); stored as 8-bit RGB PNG. "
    "Masks: the same geometry applied to the mask drawn at the source image's size, thresholded "
    "at 128, stored as 8-bit greyscale PNG (0 background, 255 foreground)."
)

LOCAL_SOURCE_NOTE = (
    "A local source (folder, archive, saved dataset) is taken to be a copy of the dataset named "
    "for its role; its owner's licence terms apply, and the path recorded here does not prove "
    "which copy it was: keep this file with the prepared set."
)


class PrepError(Exception):
    """A whole command cannot run (a source cannot be loaded, nothing usable in it, bad options)."""


@dataclass(frozen=True)
class PreparedFile:
    path: str  # relative to the output folder, with "/" separators (the manifest's form)
    sha256: str


@dataclass(frozen=True)
class Prepared:
    """An item whose files are on disk: its id, files by role name, and metadata (strings)."""

    id: str
    files: dict[str, PreparedFile]
    meta: dict[str, str | None]


# What a candidate's build function returns: {file role: (relative path, image)}, metadata.
Built = tuple[dict[str, tuple[str, Image.Image]], dict[str, str | None]]


@dataclass(frozen=True)
class Candidate:
    """A source item that may be prepared.

    `key` identifies the item and every setting its files depend on (source fingerprint, item,
    resolution, ...): a journal entry is reused only under the same key. `origin` says where the
    item comes from, for reports. `build` decodes and prepares it, raising `BadItem` if it cannot.
    """

    id: str
    key: str
    origin: str
    build: Callable[[], Built]


@dataclass(frozen=True)
class Skip:
    role: str
    id: str
    origin: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "id": self.id, "origin": self.origin, "reason": self.reason}


def item_key(*parts: Any) -> str:
    """A journal key: the sha256 of the parts' JSON, so any change of a part gives a new key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def safe_id(text: str) -> str:
    """An id usable in file names and sample ids: runs of other characters become one "_".

    "_" itself is folded into those runs, so an id never contains "__", the separator of
    `{content_id}__{reference_id}` sample ids.
    """
    cleaned = "".join(char if char.isascii() and (char.isalnum() or char in ".-") else "_" for char in text)
    while "__" in cleaned:
        cleaned = cleaned.replace("__", "_")
    return cleaned.strip("._-") or "item"


def permutation(seed: int, stream: str, n: int) -> list[int]:
    """A seeded permutation of range(n).

    `stream` names an independent random stream (e.g. "coco_wikiart/styles"): each pool is
    shuffled by its own generator, so changing one pool or command never changes another's order.
    """
    stream_id = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "big")
    return [int(index) for index in np.random.default_rng([seed, stream_id]).permutation(n)]


def diagonal_pairs(n_a: int, n_b: int, count: int) -> list[tuple[int, int]]:
    """Up to `count` distinct (a, b) index pairs that reuse no index more than necessary.

    Pair k is (k mod n_a, (k + j) mod n_b) with j = k // lcm(n_a, n_b): both indices cycle, so at
    every prefix each a and each b is used as evenly as possible (counts differ by at most one),
    and the shift j after every lcm pairs starts a new, disjoint set of cells (by the Chinese
    remainder theorem the gcd(n_a, n_b) shifts partition the n_a x n_b grid). With two pools at
    least `count` long the pairs are simply (0, 0), (1, 1), ...: a smaller `count` gives a prefix of
    a larger one.
    """
    period = math.lcm(n_a, n_b) if n_a and n_b else 0
    total = min(count, n_a * n_b)
    return [(k % n_a, (k + k // period) % n_b) for k in range(total)]


def png_bytes(image: Image.Image) -> bytes:
    """PNG bytes of an image; Pillow writes no timestamp, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Journal:
    """The append-only record of prepared items in an output folder; what makes a run resumable.

    One JSON object per line. A line torn by a killed run is ignored (and ended, so that the next
    entry starts on a line of its own), and a key written twice (an item rebuilt after its files
    were deleted) counts once, with its last entry.
    """

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        text = path.read_text() if path.is_file() else ""
        self._torn = bool(text) and not text.endswith("\n")
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                self._entries[entry["key"]] = entry
            except (ValueError, KeyError, TypeError):
                continue

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def add(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(("\n" if self._torn else "") + json.dumps(entry, sort_keys=True) + "\n")
            self._torn = False
            handle.flush()
            os.fsync(handle.fileno())
        self._entries[entry["key"]] = entry


class Preparer:
    """Prepares candidates into an output folder, resuming from its journal; collects skips.

    `written` and `reused` count items built now and items taken from an earlier run.
    """

    def __init__(self, out: Path):
        self.out = out
        self.journal = Journal(out / JOURNAL_NAME)
        self.skipped: list[Skip] = []
        self.written = 0
        self.reused = 0

    def take(self, role: str, candidates: Iterable[Candidate], count: int) -> list[Prepared]:
        """The first `count` candidates, in order, that can be prepared (fewer if they run out)."""
        prepared: list[Prepared] = []
        if count <= 0:
            return prepared
        with tqdm(total=count, desc=role, unit="item", disable=None) as bar:
            for candidate in candidates:
                item = self._reuse(candidate)
                if item is None:
                    try:
                        item = self._build(candidate)
                    except BadItem as exc:
                        skip = Skip(role, candidate.id, candidate.origin, str(exc))
                        self.skipped.append(skip)
                        tqdm.write(f"skipped {role} {skip.id} ({skip.origin}): {skip.reason}", file=sys.stderr)
                        bar.set_postfix(skipped=sum(s.role == role for s in self.skipped))
                        continue
                prepared.append(item)
                bar.update()
                if len(prepared) == count:
                    break
        return prepared

    def _reuse(self, candidate: Candidate) -> Prepared | None:
        """The journal's entry for this candidate if every file it lists is intact, else None."""
        entry = self.journal.get(candidate.key)
        if entry is None:
            return None
        files = {name: PreparedFile(path, sha) for name, (path, sha) in entry["files"].items()}
        for file in files.values():
            target = self.out / file.path
            if not target.is_file() or sha256_file(target) != file.sha256:
                return None
        self.reused += 1
        return Prepared(candidate.id, files, entry["meta"])

    def _build(self, candidate: Candidate) -> Prepared:
        images, meta = candidate.build()
        files = {}
        for name, (relative, image) in images.items():
            data = png_bytes(image)
            atomic_write_bytes(self.out / relative, data)
            files[name] = PreparedFile(relative, hashlib.sha256(data).hexdigest())
        self.journal.add(
            {
                "key": candidate.key,
                "id": candidate.id,
                "files": {name: [file.path, file.sha256] for name, file in files.items()},
                "meta": meta,
            }
        )
        self.written += 1
        return Prepared(candidate.id, files, meta)


def versions(*packages: str) -> dict[str, str | None]:
    """Versions of the libraries whose behaviour decides the output bytes and the sample."""
    found: dict[str, str | None] = {}
    for package in ("datasets", "numpy", "pillow", *packages):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["pillow_zlib"] = features.version("zlib")
    # Recent Pillow wheels compress with zlib-ng, whose bytes differ from zlib's.
    found["pillow_zlib_ng"] = features.version("zlib_ng") if "zlib_ng" in features.features else None
    return found


def finish(
    out: Path,
    command: str,
    manifests: Mapping[str, list[dict[str, Any]]],
    source: dict[str, Any],
    preparer: Preparer,
) -> None:
    """Write the manifests and `source.json`, then print a summary.

    `source` holds the command's own description (settings, sources, licence notes, counts); this
    adds the resize policy, the manifests' row counts and sha256, the skipped items and the
    library versions. Raises `PrepError` if a manifest would have no rows.
    """
    manifest_hashes = {}
    for name, rows in manifests.items():
        if not rows:
            raise PrepError(
                f"{command}: no sample could be prepared for {name} (see the skipped items above); "
                "nothing was written."
            )
        manifest_hashes[name] = {"rows": len(rows), "sha256": sha256_file(write_manifest(rows, out / name))}
    document = {
        "generator": f"semantix-prep {command} (data_prep/)",
        **source,
        "resize_policy": RESIZE_POLICY,
        "manifests": manifest_hashes,
        "skipped": [skip.as_dict() for skip in preparer.skipped],
        "versions": versions(*(["av"] if command == "videos" else [])),
    }
    atomic_write_bytes(out / "source.json", (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    for name, info in manifest_hashes.items():
        print(f"{out / name}: {info['rows']} samples")
    print(
        f"{preparer.written} item(s) written, {preparer.reused} reused from an earlier run, "
        f"{len(preparer.skipped)} skipped (reasons in {out / 'source.json'})"
    )


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The options every building command takes: --out, --seed, --limit, --resolution, --cache-dir."""
    parser.add_argument("--out", type=Path, default=Path(default_out), help=f"output folder (default {default_out})")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--limit", type=positive_int, default=None,
        help="write at most this many samples per manifest (a quick subset; the first rows of the full set)",
    )
    parser.add_argument(
        "--resolution", type=positive_int, default=512, help="side of the stored square images (default 512)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="cache folder of the `datasets` library (default: its own, $HF_DATASETS_CACHE)",
    )

