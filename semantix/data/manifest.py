"""Dataset manifests: the only way the harness learns about a dataset.

A manifest is a CSV or Parquet file with one row per sample:

=================  ========  ==============================================================
column             required  meaning
=================  ========  ==============================================================
sample_id          yes       stable, human-readable id, ``{content_id}__{reference_id}``
content            yes       content (context / structure) image, relative to the root
reference          yes       reference (style / appearance) image; several files for a
                             multi-reference sample, separated by ``;``
prompt             no        text prompt of the content image
domain             no        domain label (animals, food, ...) for per-domain breakdowns
split              no        split name
content_sha256     no        sha256 of the content file
reference_sha256   no        sha256 of each reference file, ``;``-separated, same order
content_mask       no        foreground mask of the content (white = foreground)
reference_mask     no        foreground mask of each reference, ``;``-separated, same order
                             (a ``*_mask_sha256`` column checks them like the images)
frames             no        a video sample's frames in order, ``;``-separated; ``content``
                             is then its first frame
frames_sha256      no        sha256 of each frame file, ``;``-separated, same order
reference_frames   no        a reference VIDEO's frames in order (video samples with one
                             reference only); ``reference`` is then its first frame
reference_frames_sha256  no  sha256 of each reference frame file, same order
=================  ========  ==============================================================

A row with ``frames`` is a video sample (`Sample.frames`, see `Manifest.load_sample`); a row
without is an image sample. Any other column is kept and handed to the sample as ``meta``. Paths
are relative to the dataset root, which defaults to the manifest's folder; a path that resolves
(symlinks included) outside the root is refused. Every value is read as a string; empty cells
become ``None``.

Errors split in two: a manifest that cannot be used as a whole raises `ManifestError` when it is
loaded (the run cannot start); a problem with one row's files raises `SampleError` from
`Manifest.load_sample` (that sample fails, the others run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from semantix.data.images import open_image, open_mask, sha256_file, to_tensor
from semantix.io import atomic_write_bytes, clip_sha256
from semantix.types import ManifestError, Sample, SampleError, reference_keys

__all__ = [
    "Manifest",
    "write_manifest",
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "REFERENCE_SEPARATOR",
    "VIDEO_COLUMNS",
]

REQUIRED_COLUMNS = ("sample_id", "content", "reference")
VIDEO_COLUMNS = ("frames", "frames_sha256", "reference_frames", "reference_frames_sha256")
OPTIONAL_COLUMNS = ("prompt", "domain", "split", "content_sha256", "reference_sha256") + VIDEO_COLUMNS
REFERENCE_SEPARATOR = ";"
_FORMATS = {".csv": "CSV", ".parquet": "Parquet"}
# Columns that `load_sample` maps to Sample fields; every other column goes to Sample.meta.
MASK_COLUMNS = ("content_mask", "reference_mask", "content_mask_sha256", "reference_mask_sha256")
_SAMPLE_FIELDS = frozenset(
    REQUIRED_COLUMNS + ("prompt", "domain", "content_sha256", "reference_sha256") + MASK_COLUMNS
    + VIDEO_COLUMNS
)

Row = dict[str, str | None]


class Manifest:
    """A validated manifest: its rows by sample id, where it came from, and its hash.

    Build it with `Manifest.load`. Attributes: `path` (the manifest file, absolute), `root` (the
    dataset root, absolute, symlinks resolved), `sha256` (of the manifest file's bytes, for
    provenance), `columns` (in file order).
    """

    def __init__(self, path: Path, root: Path, sha256: str, columns: tuple[str, ...], rows: dict[str, Row]):
        self.path = path
        self.root = root
        self.sha256 = sha256
        self.columns = columns
        self._rows = rows
        self._file_hashes: dict[tuple[str, int, int], str] = {}

    @classmethod
    def load(cls, path: str | PathLike[str], root: str | PathLike[str] | None = None) -> Manifest:
        """Read and validate a manifest (`.csv` or `.parquet`); `root` defaults to its folder.

        Raises `ManifestError` for a missing file, an unknown extension, an unreadable file,
        missing required columns, no rows, empty sample ids, or duplicate sample ids.
        """
        path = Path(path).absolute()
        if not path.is_file():
            raise ManifestError(f"manifest {path} does not exist (or is not a file).")
        suffix = path.suffix.lower()
        if suffix not in _FORMATS:
            raise ManifestError(
                f"manifest {path} has the unknown extension {path.suffix!r}; use .csv or .parquet."
            )
        root_path = Path(root) if root is not None else path.parent
        if not root_path.is_dir():
            raise ManifestError(f"dataset root {root_path} of manifest {path} is not a directory.")
        frame = _read_frame(path, suffix)
        columns = tuple(str(column).strip() for column in frame.columns)
        missing = [column for column in REQUIRED_COLUMNS if column not in columns]
        if missing:
            raise ManifestError(
                f"manifest {path} lacks the required column(s) {', '.join(missing)}; "
                f"it has {', '.join(columns) or 'no columns'}."
            )
        if len(frame) == 0:
            raise ManifestError(f"manifest {path} has no rows; a dataset needs at least one sample.")
        records = [
            {column: _cell(value) for column, value in zip(columns, values, strict=True)}
            for values in frame.itertuples(index=False, name=None)
        ]
        # Line numbers as a user sees them in a CSV file: the header is line 1.
        empty_ids = [index + 2 for index, record in enumerate(records) if record["sample_id"] is None]
        if empty_ids:
            raise ManifestError(
                f"manifest {path} has rows with an empty sample_id (data rows at lines "
                f"{', '.join(map(str, empty_ids))}, counting the header as line 1)."
            )
        counts = Counter(record["sample_id"] for record in records)
        duplicates = sorted(sample_id for sample_id, count in counts.items() if count > 1)
        if duplicates:
            raise ManifestError(
                f"manifest {path} has duplicate sample ids: {', '.join(duplicates)}; sample ids must be unique."
            )
        rows = {record["sample_id"]: record for record in records}
        return cls(path, root_path.resolve(), sha256_file(path), columns, rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._rows

    @property
    def sample_ids(self) -> list[str]:
        """Sample ids in manifest order."""
        return list(self._rows)

    def row(self, sample_id: str) -> Row:
        """A copy of one row's raw values (strings or None). Raises KeyError for an unknown id."""
        return dict(self._row(sample_id))

    def load_sample(self, sample_id: str, resolution: int, *, min_frames: int = 2) -> Sample:
        """Load, verify and prepare one sample at `resolution` x `resolution`.

        Each file is checked in this order: its path must stay inside the root; it must decode
        as a valid image (`open_image`); its sha256 must equal the manifest's when the manifest
        records one. Hashes the manifest lacks are computed, so `Sample.input_sha256` always holds
        every input file's hash: key ``content`` and ``reference`` (one reference) or
        ``reference_0``, ``reference_1``, ... (several). Columns other than the Sample fields and
        hashes go to `Sample.meta`.

        A row with ``frames`` is a video sample: it needs at least `min_frames` frames, each frame
        is checked like an image, all must have the same size as decoded (before resizing), and
        each is then resized like every image; `Sample.frames` is the (F, 3, R, R) stack, in
        order. ``content`` is loaded from its own column as for an image sample (data_prep writes
        the first frame there). ``input_sha256["frames"]`` is one hash for the ordered clip:
        `semantix.io.clip_sha256` of the frames' sha256s.

        Raises `SampleError` for any problem with this row's files and KeyError for an unknown
        sample id.
        """
        row = self._row(sample_id)
        content_path = row["content"]
        if content_path is None:
            raise SampleError(f"sample {sample_id}: the manifest row has no content path.")
        reference_paths = _split(row["reference"])
        if not reference_paths or any(part == "" for part in reference_paths):
            raise SampleError(
                f"sample {sample_id}: the reference cell {row['reference']!r} is empty or has an empty "
                f"path between {REFERENCE_SEPARATOR!r} separators."
            )
        reference_hashes = _split(row.get("reference_sha256"))
        if reference_hashes and len(reference_hashes) != len(reference_paths):
            raise SampleError(
                f"sample {sample_id}: {len(reference_paths)} reference file(s) but {len(reference_hashes)} "
                "reference_sha256 value(s); give one hash per file, in the same order."
            )
        keys = reference_keys(len(reference_paths))

        input_sha256: dict[str, str] = {}
        content, input_sha256["content"] = self._load_file(
            sample_id, "content", content_path, row.get("content_sha256"), resolution
        )
        references = []
        for index, (key, relative) in enumerate(zip(keys, reference_paths, strict=True)):
            expected = reference_hashes[index] if reference_hashes else None
            image, input_sha256[key] = self._load_file(sample_id, key, relative, expected, resolution)
            references.append(image)
        masks = self._load_masks(sample_id, row, keys, resolution, input_sha256)
        frames = reference_frames = None
        if row.get("frames") is not None:
            frames, input_sha256["frames"] = self._load_frames(sample_id, row, resolution, min_frames)
        if row.get("reference_frames") is not None:
            if frames is None or len(references) != 1:
                raise SampleError(
                    f"sample {sample_id}: reference_frames (a reference video) needs a video sample (a frames "
                    "column) with exactly one reference."
                )
            reference_frames, input_sha256["reference_frames"] = self._load_frames(
                sample_id, row, resolution, 1, column="reference_frames")
        meta: dict[str, Any] = {
            column: value for column, value in row.items() if column not in _SAMPLE_FIELDS
        }
        return Sample(
            sample_id=sample_id,
            content=content,
            references=tuple(references),
            prompt=row.get("prompt"),
            domain=row.get("domain"),
            input_sha256=input_sha256,
            meta=meta,
            masks=masks,
            frames=frames,
            reference_frames=reference_frames,
        )

    def input_sha256(self, sample_id: str) -> dict[str, str]:
        """What `load_sample(sample_id).input_sha256` holds when the sample loads, without decoding
        anything: the manifest's hash of each input file, else the file's own (hashed once per file
        version and kept). The runner compares it with a stored record's inputs, so that a record
        made from files that have changed since is redone.

        Raises `SampleError` (or OSError) when a file cannot be found; loading the sample then fails
        with the full reason.
        """
        row = self._row(sample_id)
        if row["content"] is None:
            raise SampleError(f"sample {sample_id}: the manifest row has no content path.")

        def hash_of(path_column: str, hash_column: str) -> str:  # a one-file column, as `load_sample` reads it
            declared = row.get(hash_column)
            return declared.lower() if declared else self._file_sha256(self.resolve(row[path_column]))

        def hashes_of(paths_column: str, hashes_column: str) -> list[str]:
            paths, declared = _split(row.get(paths_column)), _split(row.get(hashes_column))
            if declared and len(declared) != len(paths):
                raise SampleError(f"sample {sample_id}: {len(paths)} {paths_column} file(s) but {len(declared)} "
                                  f"{hashes_column} value(s)")
            return [declared[i].lower() if declared else self._file_sha256(self.resolve(relative))
                    for i, relative in enumerate(paths)]

        hashes = {"content": hash_of("content", "content_sha256")}
        references = hashes_of("reference", "reference_sha256")
        keys = reference_keys(len(references))
        hashes.update(zip(keys, references, strict=True))
        if row.get("content_mask"):
            hashes["content_mask"] = hash_of("content_mask", "content_mask_sha256")
        if row.get("reference_mask"):
            masks = hashes_of("reference_mask", "reference_mask_sha256")
            if len(masks) != len(keys):
                raise SampleError(f"sample {sample_id}: {len(keys)} reference file(s) but {len(masks)} masks")
            hashes.update({f"{key}_mask": value for key, value in zip(keys, masks, strict=True)})
        for column in ("frames", "reference_frames"):
            if row.get(column) is not None:
                hashes[column] = clip_sha256(hashes_of(column, f"{column}_sha256"))
        return hashes

    def _file_sha256(self, path: Path) -> str:
        """sha256 of an input file, computed once per (path, size, modification time)."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._file_hashes:
            self._file_hashes[key] = sha256_file(path)
        return self._file_hashes[key]

    def _load_frames(
        self, sample_id: str, row: Mapping[str, Any], resolution: int, min_frames: int, column: str = "frames"
    ) -> tuple[torch.Tensor, str]:
        """The frames of the row's `column` ("frames" or "reference_frames") as (F, 3, R, R), and
        `clip_sha256` of their files."""
        paths = _split(row[column])
        video, frame = ("video", "frame") if column == "frames" else ("reference video", "reference frame")
        if any(part == "" for part in paths):
            raise SampleError(
                f"sample {sample_id}: the {column} cell has an empty path between {REFERENCE_SEPARATOR!r} "
                "separators."
            )
        if len(paths) < min_frames:
            raise SampleError(
                f"sample {sample_id}: {video} has {len(paths)} frame(s); at least {min_frames} needed "
                "(dataset.min_frames)."
            )
        hashes = _split(row.get(f"{column}_sha256"))
        if hashes and len(hashes) != len(paths):
            raise SampleError(
                f"sample {sample_id}: {len(paths)} {frame} file(s) but {len(hashes)} {column}_sha256 value(s); "
                "give one hash per frame, in the same order."
            )
        tensors, frame_hashes = [], []
        for index, relative in enumerate(paths):
            role = f"{frame} {index}"
            try:
                path = self.resolve(relative)
                image = open_image(path)
            except SampleError as exc:
                raise SampleError(f"sample {sample_id}, {role}: {exc}") from exc
            frame_hashes.append(self._check_sha256(sample_id, role, path, hashes[index] if hashes else None))
            # Frames of different sizes would be scaled and cropped differently: the clip would jump.
            if index == 0:
                first_size = image.size
            elif image.size != first_size:
                raise SampleError(
                    f"sample {sample_id}: {role} is {image.width}x{image.height}, {frame} 0 is "
                    f"{first_size[0]}x{first_size[1]} ({path}); every frame of a video must have the same "
                    "size."
                )
            tensors.append(to_tensor(image, resolution))
        return torch.stack(tensors), clip_sha256(frame_hashes)

    def _load_masks(
        self, sample_id: str, row: Mapping[str, Any], keys: list[str], resolution: int,
        input_sha256: dict[str, str],
    ) -> dict[str, torch.Tensor]:
        """The row's optional masks, keyed like the images; their hashes go to `input_sha256` as `<key>_mask`."""
        wanted = []
        if row.get("content_mask"):
            wanted.append(("content", row["content_mask"], row.get("content_mask_sha256")))
        paths = _split(row.get("reference_mask"))
        if paths:
            hashes = _split(row.get("reference_mask_sha256")) or [None] * len(paths)
            if len(paths) != len(keys) or len(hashes) != len(paths):
                raise SampleError(
                    f"sample {sample_id}: {len(keys)} reference file(s) but {len(paths)} reference_mask "
                    f"path(s) and {len(hashes)} hash(es); give one mask per reference, in the same order."
                )
            wanted.extend(zip(keys, paths, hashes, strict=True))
        masks = {}
        for key, relative, expected in wanted:
            try:
                path = self.resolve(relative)
                masks[key] = open_mask(path, resolution)
            except SampleError as exc:
                raise SampleError(f"sample {sample_id}, {key} mask: {exc}") from exc
            input_sha256[f"{key}_mask"] = self._check_sha256(sample_id, f"{key} mask", path, expected)
        return masks

    def resolve(self, relative: str) -> Path:
        """Absolute path of a manifest path, symlinks resolved; `SampleError` if it leaves the root."""
        candidate = Path(relative)
        resolved = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        if not resolved.is_relative_to(self.root):
            raise SampleError(
                f"path {relative!r} resolves to {resolved}, outside the dataset root {self.root}; "
                "manifest paths must stay inside the root (no '..', no absolute paths or symlinks "
                "leading elsewhere)."
            )
        return resolved

    def _row(self, sample_id: str) -> Row:
        try:
            return self._rows[sample_id]
        except KeyError:
            raise KeyError(f"sample id {sample_id!r} is not in manifest {self.path}") from None

    def _load_file(
        self, sample_id: str, role: str, relative: str, expected_sha256: str | None, resolution: int
    ) -> tuple[torch.Tensor, str]:
        """Resolve, decode, hash-check and prepare one file; returns (tensor, sha256)."""
        try:
            path = self.resolve(relative)
            image = open_image(path)
        except SampleError as exc:
            raise SampleError(f"sample {sample_id}, {role}: {exc}") from exc
        return to_tensor(image, resolution), self._check_sha256(sample_id, role, path, expected_sha256)

    @staticmethod
    def _check_sha256(sample_id: str, role: str, path: Path, expected_sha256: str | None) -> str:
        actual = sha256_file(path)
        if expected_sha256 is not None and expected_sha256.lower() != actual:
            raise SampleError(
                f"sample {sample_id}, {role}: sha256 mismatch for {path}: the manifest expects "
                f"{expected_sha256[:12]}..., the file has {actual[:12]}...; the file changed since the "
                "manifest was written; restore it or re-run the data_prep script."
            )
        return actual


def write_manifest(rows: Iterable[Mapping[str, Any]], path: str | PathLike[str]) -> Path:
    """Write rows (mappings of column -> value) as a CSV or Parquet manifest, atomically.

    Columns come in a fixed order (required, then optional, then any others in first-seen order)
    and every value is written as a string (None as an empty cell), so the same rows always give
    the same bytes. The file is written to a temporary file in the target folder and moved into
    place with `os.replace`, so a reader never sees half a manifest. This writes what it is given;
    `Manifest.load` is the validator. Returns the path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"manifest path {path} must end in .csv or .parquet")
    rows = [dict(row) for row in rows]
    seen = list(dict.fromkeys(column for row in rows for column in row))
    known = [
        column
        for column in REQUIRED_COLUMNS + OPTIONAL_COLUMNS
        if column in seen or column in REQUIRED_COLUMNS
    ]
    columns = known + [column for column in seen if column not in known]
    frame = pd.DataFrame(
        [[_text(row.get(column)) for column in columns] for row in rows], columns=columns, dtype="string"
    )
    if suffix == ".csv":
        data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    else:
        data = frame.to_parquet(None, index=False)
    atomic_write_bytes(path, data)
    return path


def _read_frame(path: Path, suffix: str) -> pd.DataFrame:
    """Read a manifest file with every value as a string (or missing)."""
    try:
        if suffix == ".csv":
            # keep_default_na=False: a cell reading "NA" or "null" is data, not a missing value.
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise ManifestError(f"manifest {path} is empty (no header, no rows).") from exc
    except Exception as exc:  # pandas and pyarrow raise many types for a malformed file
        raise ManifestError(
            f"manifest {path} cannot be read as {_FORMATS[suffix]} ({type(exc).__name__}: {exc})."
        ) from exc


def _cell(value: Any) -> str | None:
    """A manifest cell as a stripped string; empty or missing (None, NaN, NA) becomes None."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _text(value: Any) -> str | None:
    """A value to write: None stays missing, everything else becomes its string."""
    return None if value is None else str(value)


def _split(cell: str | None) -> list[str]:
    """Split a multi-file cell on the separator; an empty cell gives an empty list."""
    if cell is None:
        return []
    return [part.strip() for part in cell.split(REFERENCE_SEPARATOR)]
