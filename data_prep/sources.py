"""Image sources: a hub dataset, a saved dataset, a folder or an archive, all in one form.

`load_image_source(spec, ...)` loads any kind of source with the `datasets` library (which
downloads and caches; nothing here re-implements that) and returns an `ImageSource`. Every command
uses only the `ImageSource` after that, so the hub and local sources share one code path:

- a folder written by `Dataset.save_to_disk` -> `datasets.load_from_disk`;
- any other folder -> the `imagefolder` builder (a label from each file's sub-folder name, captions
  and other columns from a `metadata.csv` / `metadata.jsonl`, as the `datasets` docs describe);
- an archive (`.zip`, `.tar`, `.tar.gz`, `.tgz`, e.g. the official COCO `val2017.zip`) ->
  `imagefolder` over the archive;
- anything that is not an existing path is a hub dataset id -> `datasets.load_dataset`, at the
  given revision (pin one for an exact rebuild; `source.json` records the commit it resolved to).
  With `max_rows` (the commands pass it under `--limit`), a hub dataset is streamed and only its
  first `max_rows` rows are read, so `--limit 4` fetches a few images, not the whole dataset; the
  seeded sample is then drawn from those rows (a quick set from the hub is not the prefix of the full
  set, as it is from a local source, which is read in place).

The image column is read undecoded (`datasets.Image(decode=False)`): each command decodes the
bytes itself (`data_prep.decode`), so that a bad file is a reported skip, not a crash in the
middle of `datasets`.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import fsspec
import pyarrow.compute as pc
from tqdm import tqdm

from data_prep.common import Built, Candidate, PrepError, item_key, safe_id
from data_prep.decode import BadItem, decode_image
from semantix.data import resize_center_crop
from semantix.io import stable_hash

__all__ = [
    "DEFAULT_CONTENTS",
    "DEFAULT_STYLES",
    "COCO_LICENCE",
    "HUB_DEFAULTS",
    "WIKIART_LICENCE",
    "ImageSource",
    "add_source_arguments",
    "image_candidate",
    "load_image_source",
    "streamed_rows",
]

DEFAULT_CONTENTS = "detection-datasets/coco"
DEFAULT_STYLES = "huggan/wikiart"


@dataclass(frozen=True)
class HubDefaults:
    """How to load a known hub dataset when the user names no split: its split and data files."""

    split: str
    # Load only these files (per split): the hub COCO copy's train split is 18 GB we do not need.
    data_files: dict[str, str] | None = None


HUB_DEFAULTS = {
    DEFAULT_CONTENTS: HubDefaults("val", {"val": "data/val-*.parquet"}),
    DEFAULT_STYLES: HubDefaults("train"),
}

COCO_LICENCE = (
    "COCO 2017 (https://cocodataset.org/#termsofuse): annotations CC BY 4.0; the images belong to "
    "their Flickr authors under the Creative Commons licence listed per image in COCO's annotations "
    "(some non-commercial). For research use; check each image's licence before redistributing."
)
WIKIART_LICENCE = (
    "WikiArt (https://www.wikiart.org; the hub copy huggan/wikiart, from Tan et al. 2018's ArtGAN "
    "collection): many works are still under the copyright of their artists or estates; use for "
    "non-commercial research only and do not redistribute the prepared images."
)

STREAM_MARGIN_ROWS = 8
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# Columns that give an item's id, checked in this order (COCO copies use image_id).
_ID_COLUMNS = ("image_id", "id")
# Columns that give a content image's text prompt; a list gives its first element (COCO's captions).
PROMPT_COLUMNS = ("prompt", "caption", "text", "captions", "sentences")


@dataclass
class ImageSource:
    """A loaded image source: its rows, one unique id per row, and a description for source.json.

    `fingerprint` is the `datasets` fingerprint (it changes when the files or the revision do) and
    keys the journal, so that a changed source is prepared again. `paths` are the rows' image
    paths relative to the source (None where the source stores only bytes).
    """

    spec: str
    kind: str
    dataset: datasets.Dataset
    image_column: str
    label_name: str
    description: dict[str, Any]
    paths: list[str | None] = field(init=False)
    ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.dataset = self.dataset.cast_column(self.image_column, datasets.Image(decode=False))
        root = self.description.get("path") if self.kind == "imagefolder" else None
        self.paths = _relative_paths(self.dataset, self.image_column, root)
        self.ids = _unique_ids(self.dataset, self.paths)

    @property
    def fingerprint(self) -> str:
        return self.description["fingerprint"]

    def __len__(self) -> int:
        return len(self.dataset)

    def origin(self, index: int) -> str:
        """Where row `index` comes from, for reports: its file, else its row number."""
        path = self.paths[index]
        return f"{self.spec}: {path}" if path else f"{self.spec}: row {index}"

    def read(self, index: int) -> tuple[bytes, dict[str, str | None]]:
        """Row `index`: the encoded image bytes and its metadata (see `metadata`)."""
        row = self.dataset[index]
        value = row[self.image_column]
        if value is None:
            raise BadItem("the row has no image")
        if value.get("bytes") is not None:
            return value["bytes"], self.metadata(row)
        try:
            with fsspec.open(value["path"], "rb") as handle:
                return handle.read(), self.metadata(row)
        except OSError as exc:
            raise BadItem(f"image file cannot be read ({type(exc).__name__}: {exc})") from None

    def metadata(self, row: dict[str, Any]) -> dict[str, str | None]:
        """A row's scalar columns as strings (class labels by name), and its prompt if it has one.

        The image and id columns are left out; so are list and struct columns (COCO's objects),
        except a prompt column, whose first element is the prompt. An `imagefolder` label column
        is named `label_name` (for WikiArt in `<style>/<image>` folders: `style`).
        """
        features = self.dataset.features
        meta: dict[str, str | None] = {}
        for name, feature in features.items():
            if name in (self.image_column, *_ID_COLUMNS):
                continue
            value = row[name]
            if name in PROMPT_COLUMNS:
                if "prompt" not in meta:
                    meta["prompt"] = _first_text(value)
                continue
            if isinstance(feature, datasets.ClassLabel):
                text = feature.int2str(value) if value is not None and value >= 0 else None
            elif isinstance(feature, datasets.Value) and not isinstance(value, bytes):
                text = None if value is None else str(value)
            else:
                continue
            meta[self.label_name if (name == "label" and self.kind == "imagefolder") else name] = text
        return meta


def load_image_source(
    spec: str,
    *,
    split: str | None = None,
    revision: str | None = None,
    cache_dir: Path | None = None,
    label_name: str = "label",
    max_rows: int | None = None,
) -> ImageSource:
    """Load an image source (see the module docstring for the kinds); `PrepError` if it cannot be.

    `max_rows`: read only the first rows of a hub dataset, streamed (local sources are read in place).
    """
    path = Path(spec).expanduser()
    cache = str(cache_dir) if cache_dir is not None else None
    try:
        if path.exists():
            if revision is not None:
                raise PrepError(f"a revision applies to hub datasets only; {spec} is a local path")
            if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
                kind = "saved_dataset"
                dataset = _pick_split(datasets.load_from_disk(str(path)), split, spec)
            elif path.is_dir() or path.name.lower().endswith(_ARCHIVE_SUFFIXES):
                kind = "imagefolder"
                where = {"data_dir": str(path)} if path.is_dir() else {"data_files": str(path)}
                dataset = datasets.load_dataset("imagefolder", split="train", cache_dir=cache, **where)
            else:
                raise PrepError(
                    f"{spec} is a file but not an archive ({', '.join(_ARCHIVE_SUFFIXES)}); give a folder, "
                    "an archive, a dataset saved with save_to_disk, or a hub dataset id"
                )
            description: dict[str, Any] = {"kind": kind, "path": str(path.resolve())}
        else:
            kind = "hub"
            defaults = HUB_DEFAULTS.get(spec)
            split = split or (defaults.split if defaults else "train")
            data_files = defaults.data_files if defaults and defaults.split == split else None
            if max_rows is None:
                dataset = datasets.load_dataset(
                    spec, split=split, revision=revision, data_files=data_files, cache_dir=cache
                )
            else:
                dataset = _first_rows_streamed(spec, split, revision, data_files, max_rows)
            description = {
                "kind": kind,
                "id": spec,
                "split": split,
                "data_files": data_files,
                "revision": revision or "main",
                "resolved_revision": _hub_commit(spec, revision),
            }
    except PrepError:
        raise
    except Exception as exc:  # datasets, fsspec and the hub client raise many types
        raise PrepError(
            f"cannot load the source {spec!r} ({type(exc).__name__}: {exc}); give a hub dataset id "
            "(online), a folder of images, an archive, or a dataset saved with save_to_disk"
        ) from exc
    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if not image_columns:
        raise PrepError(f"the source {spec!r} has no image column (its columns: {', '.join(dataset.features)})")
    if len(dataset) == 0:
        raise PrepError(f"the source {spec!r} has no rows")
    # A streamed prefix is a new in-memory dataset each time: its fingerprint (which keys the journal,
    # so a rerun reuses what it wrote) comes from what was asked for, not from the object.
    fingerprint = dataset._fingerprint if max_rows is None or kind != "hub" else stable_hash(
        {**description, "first_rows": max_rows}, length=16)
    description.update({"rows": len(dataset), "fingerprint": fingerprint, "columns": sorted(dataset.features)})
    if max_rows is not None and kind == "hub":
        description["streamed_first_rows"] = max_rows
    return ImageSource(spec, kind, dataset, image_columns[0], label_name, description)


def streamed_rows(limit: int | None, needed: int) -> int | None:
    """How many rows of a hub source to stream under `--limit` (None without it: the whole source).

    Twice the images needed plus a margin, so the seeded order has a choice and a few bad items
    can be skipped; the images are a few hundred kB each, so this stays a small download."""
    return None if limit is None else 2 * needed + STREAM_MARGIN_ROWS


def _first_rows_streamed(
    spec: str, split: str, revision: str | None, data_files: dict[str, str] | None, max_rows: int
) -> datasets.Dataset:
    """The first `max_rows` rows of a hub dataset, streamed: only the data they need is downloaded."""
    stream = datasets.load_dataset(spec, split=split, revision=revision, data_files=data_files, streaming=True)
    if stream.features is None:
        raise PrepError(f"{spec} does not declare its columns, so it cannot be streamed; run without --limit")
    for name, feature in stream.features.items():
        if isinstance(feature, datasets.Image):  # bytes as stored: a bad image is a reported skip later
            stream = stream.cast_column(name, datasets.Image(decode=False))
    rows = list(tqdm(stream.take(max_rows), total=max_rows, desc=f"streaming {spec}", unit="row", disable=None))
    return datasets.Dataset.from_list(rows, features=stream.features)


def _pick_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str | None, spec: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split is None and len(loaded) == 1:
        return next(iter(loaded.values()))
    if split not in loaded:
        raise PrepError(f"{spec} holds the splits {', '.join(loaded)}; pick one with the --*-split option")
    return loaded[split]


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision resolves to, for source.json; None when the hub cannot say."""
    try:
        import huggingface_hub

        return huggingface_hub.HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception:  # noqa: BLE001 - offline or no access: the requested revision is still recorded
        return None


def _relative_paths(dataset: datasets.Dataset, image_column: str, root: str | None) -> list[str | None]:
    """Each row's image path relative to the source, read from Arrow without touching the bytes.

    A folder's files are relative to the folder; a path inside an archive (``zip://a/b.jpg::x.zip``)
    and any other path are relative to the deepest folder common to all of them.
    """
    raw = pc.struct_field(dataset.data.column(image_column), "path").to_pylist()
    inner = [_inside_archive(path) if path else None for path in raw]
    if root is not None and all(path is None or "::" not in path for path in raw):
        real_root = os.path.realpath(root)
        return [
            os.path.relpath(os.path.realpath(path), real_root).replace(os.sep, "/") if path else None
            for path in inner
        ]
    parents = [posixpath.dirname(path) for path in inner if path]
    try:
        common = posixpath.commonpath(parents) if parents else ""
    except ValueError:  # absolute and relative paths mixed
        common = ""
    return [posixpath.relpath(path, common or ".") if path else None for path in inner]


def _inside_archive(path: str) -> str:
    """The file path inside an fsspec chained URL (``zip://a/b.jpg::/x/val.zip`` -> ``a/b.jpg``)."""
    if "::" in path:
        return path.split("::", 1)[0].split("://", 1)[-1]
    return path.replace(os.sep, "/")


def _unique_ids(dataset: datasets.Dataset, paths: list[str | None]) -> list[str]:
    """One id per row: an id column, else the relative path without extension, else the row number.

    Ids are made safe for file names (`safe_id`); a collision gets the row number appended, so
    every id is unique and depends only on the source.
    """
    id_column = next((name for name in _ID_COLUMNS if name in dataset.features), None)
    if id_column is not None:
        raw = [None if value is None else str(value) for value in dataset.data.column(id_column).to_pylist()]
    else:
        raw = [posixpath.splitext(path)[0].replace("/", "-") if path else None for path in paths]
    width = max(6, len(str(len(raw))))
    ids: list[str] = []
    seen: set[str] = set()
    for index, value in enumerate(raw):
        candidate = safe_id(value) if value else f"row{index:0{width}d}"
        if candidate in seen:
            candidate = f"{candidate}-{index}"
        seen.add(candidate)
        ids.append(candidate)
    return ids


def _first_text(value: Any) -> str | None:
    """A prompt from a caption cell: the string, or the first string of a list; None otherwise."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0].strip() or None
    return None


def add_source_arguments(parser: Any, role: str, default: str | None, what: str) -> None:
    """Options `--<role>`, `--<role>-split`, `--<role>-revision` naming one image source."""
    parser.add_argument(
        f"--{role}", default=default, required=default is None,
        help=f"{what}: a hub dataset id, or a local folder, archive or saved dataset"
        + (f" (default {default})" if default else ""),
    )
    parser.add_argument(f"--{role}-split", default=None, help="split of a hub or saved dataset")
    parser.add_argument(f"--{role}-revision", default=None, help="hub revision (commit, tag, branch) to pin")


def image_candidate(source: ImageSource, index: int, folder: str, resolution: int, role: str) -> Candidate:
    """A candidate for row `index` of `source`, to be stored as `<folder>/<id>.png`."""
    item_id = source.ids[index]

    def build() -> Built:
        data, meta = source.read(index)
        image, _ = decode_image(data)
        return {"image": (f"{folder}/{item_id}.png", resize_center_crop(image, resolution))}, meta

    key = item_key(role, folder, source.fingerprint, item_id, resolution)
    return Candidate(item_id, key, source.origin(index), build)
