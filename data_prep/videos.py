"""`semantix-prep videos`: clips of N frames (default 16), each paired with a WikiArt style reference.

Clips come from `--videos`, a local folder or a hub dataset repository (downloaded once with
`huggingface_hub.snapshot_download`, then read as a local folder: one code path; with `--limit`,
the repository's file list picks `hub_clips_to_fetch` clips in a seeded order and only their files
are downloaded). In the folder:

- the DAVIS 2017 layout `JPEGImages/<--davis-resolution>/<clip>/*.jpg` (found at the top or one
  level down, e.g. `DAVIS/JPEGImages/480p`): each clip folder is a clip;
- otherwise each sub-folder of images is a clip (frames in natural name order: 2.jpg before
  10.jpg) and each video file (`VIDEO_SUFFIXES`) is a clip, decoded with PyAV.

Frames are sampled uniformly over the whole clip (first and last included), or every
`--stride`-th frame from the first when given. A clip with fewer frames than that needs, frames of
different sizes, a bad frame or an undecodable video is reported and skipped; the next clip in
the seeded order takes its place. Styles: the first usable images of the seeded WikiArt order, one
per clip (reused evenly only when there are fewer styles than clips).

Output in `--out` (default `data/videos`): `clips/<clip>/000.png ...`, `styles/<id>.png`,
`manifest.csv`, `source.json`, the journal. Manifest columns: `content` is the first frame (so an
image method can run on it); `frames` lists every frame file in order, `;`-separated, with
`frames_sha256` in the same order; `n_frames`; `content_source_frames` (`;`-separated frame
indices in the source clip), `content_source_frame_count`, `content_source_fps` (video files
only); the style's columns prefixed `reference_` as in `coco_wikiart`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from data_prep.common import (
    LOCAL_SOURCE_NOTE,
    Built,
    Candidate,
    Prepared,
    Preparer,
    PrepError,
    add_common_arguments,
    diagonal_pairs,
    finish,
    item_key,
    permutation,
    positive_int,
    safe_id,
)
from data_prep.decode import BadItem, check_size, decode_image
from data_prep.sources import (
    DEFAULT_STYLES,
    WIKIART_LICENCE,
    add_source_arguments,
    image_candidate,
    load_image_source,
    streamed_rows,
)
from semantix.data import REFERENCE_SEPARATOR, resize_center_crop

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DAVIS_LICENCE = (
    "DAVIS 2017 (https://davischallenge.org): videos collected for research on video object "
    "segmentation; see the DAVIS site for its terms of use before redistributing frames."
)


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path  # a video file, or a folder of frames


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--videos", required=True,
        help="folder of videos or frame folders (DAVIS 2017 layout included), or a hub dataset repo id",
    )
    parser.add_argument("--videos-revision", default=None, help="hub revision of --videos to pin")
    parser.add_argument("--davis-resolution", default="480p", help="DAVIS JPEGImages sub-folder (default 480p)")
    parser.add_argument("--clips", type=positive_int, default=100, help="clips in the manifest (default 100)")
    parser.add_argument("--frames", type=positive_int, default=16, help="frames per clip (default 16)")
    parser.add_argument(
        "--stride", type=positive_int, default=None,
        help="take every STRIDE-th frame from the first (default: spread the frames over the whole clip)",
    )
    add_source_arguments(parser, "styles", DEFAULT_STYLES, "WikiArt paintings (one per clip)")
    add_common_arguments(parser, "data/videos")


def run(args: argparse.Namespace) -> None:
    wanted = min(args.clips, args.limit) if args.limit else args.clips
    fetch = hub_clips_to_fetch(args.limit, wanted)
    root, videos_description = _videos_root(args.videos, args.videos_revision, args.davis_resolution, fetch, args.seed)
    clips = discover_clips(root, args.davis_resolution)
    if not clips:
        raise PrepError(f"{root} holds no clips (no frame folders, no {'/'.join(VIDEO_SUFFIXES)} files)")
    if any(clip.path.is_file() for clip in clips) and importlib.util.find_spec("av") is None:
        raise PrepError("decoding video files needs PyAV: pip install av (frame folders do not)")
    styles = load_image_source(
        args.styles, split=args.styles_split, revision=args.styles_revision, cache_dir=args.cache_dir,
        label_name="style", max_rows=streamed_rows(args.limit, wanted),
    )
    preparer = Preparer(args.out)
    clip_order = permutation(args.seed, "videos/clips", len(clips))
    prepared_clips = preparer.take(
        "clips", (_clip_candidate(clips[i], args.frames, args.stride, args.resolution) for i in clip_order), wanted
    )
    style_order = permutation(args.seed, "videos/styles", len(styles))
    prepared_styles = preparer.take(
        "styles", (image_candidate(styles, i, "styles", args.resolution, "style") for i in style_order),
        len(prepared_clips),
    )
    pairs = diagonal_pairs(len(prepared_clips), len(prepared_styles), len(prepared_clips))
    rows = [_row(prepared_clips[c], prepared_styles[s]) for c, s in pairs]
    document = {
        "settings": {
            "seed": args.seed,
            "limit": args.limit,
            "resolution": args.resolution,
            "clips": args.clips,
            "frames": args.frames,
            "stride": args.stride,
            "davis_resolution": args.davis_resolution,
            "frame_sampling": "every STRIDE-th frame from the first" if args.stride else
            "uniform over the clip: index i * (count - 1) // (frames - 1)",
        },
        "sources": {"videos": videos_description, "styles": styles.description},
        "licence_notes": {"videos": DAVIS_LICENCE, "styles": WIKIART_LICENCE, "local_sources": LOCAL_SOURCE_NOTE},
        "counts": {"clips": len(prepared_clips), "styles": len(prepared_styles), "clips_in_source": len(clips)},
    }
    finish(args.out, "videos", {"manifest.csv": rows}, document, preparer)


def discover_clips(root: Path, davis_resolution: str) -> list[Clip]:
    """The clips under `root` (DAVIS layout first), in name order, with unique safe ids."""
    davis = [root / "JPEGImages" / davis_resolution, *sorted(root.glob(f"*/JPEGImages/{davis_resolution}"))]
    base = next((folder for folder in davis if folder.is_dir()), root)
    clips: list[Clip] = []
    seen: set[str] = set()
    for entry in sorted(base.iterdir()):
        is_video = entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES
        if is_video or (entry.is_dir() and any(_frame_files(entry))):
            clip_id = safe_id(entry.stem if entry.is_file() else entry.name)
            if clip_id in seen:
                clip_id = f"{clip_id}-{entry.suffix.lstrip('.').lower() or 'frames'}"
            seen.add(clip_id)
            clips.append(Clip(clip_id, entry))
    return clips


def sample_indices(count: int, frames: int, stride: int | None) -> list[int]:
    """Which of a clip's `count` frames to keep; `BadItem` if it has too few."""
    needed = (frames - 1) * stride + 1 if stride else frames
    if count < needed:
        how = f"{frames} frames at stride {stride}" if stride else f"{frames} frames"
        raise BadItem(f"clip has {count} frames, fewer than the {needed} that {how} need")
    if stride:
        return [index * stride for index in range(frames)]
    if frames == 1:
        return [0]
    return [index * (count - 1) // (frames - 1) for index in range(frames)]


def hub_clips_to_fetch(limit: int | None, wanted: int) -> int | None:
    """How many clips of a hub repository to download under `--limit` (None without it: all of them):
    twice the clips wanted plus one, so a bad clip or two can be skipped."""
    return None if limit is None else 2 * wanted + 1


def hub_clip_patterns(files: list[str], davis_resolution: str, count: int, seed: int) -> list[str]:
    """`snapshot_download` patterns for `count` clips of a repository's file list, in a seeded order.

    The clips are found in the listing as `discover_clips` finds them on disk: under the DAVIS
    layout's frame folder when there is one, else at the top, each video file or folder of frames.
    """
    marker = f"JPEGImages/{davis_resolution}/"
    davis = sorted({path[: path.index(marker) + len(marker)] for path in files if marker in path},
                   key=lambda base: (base.count("/"), base))
    base = davis[0] if davis else ""  # the shallowest DAVIS frame folder, as on disk
    entries: set[str] = set()
    for path in files:
        if not path.startswith(base):
            continue
        parts = path[len(base):].split("/")
        suffix = Path(path).suffix.lower()
        if len(parts) == 1 and suffix in VIDEO_SUFFIXES:
            entries.add(parts[0])
        elif len(parts) == 2 and suffix in FRAME_SUFFIXES:
            entries.add(parts[0] + "/")
    ordered = sorted(entries)
    chosen = [ordered[i] for i in permutation(seed, "videos/hub_clips", len(ordered))[:count]]
    return [f"{base}{entry}*" if entry.endswith("/") else f"{base}{entry}" for entry in chosen]


def _videos_root(spec: str, revision: str | None, davis_resolution: str, max_clips: int | None,
                 seed: int) -> tuple[Path, dict[str, Any]]:
    """The local folder of clips, downloading a hub dataset repository first if `spec` names one
    (only `max_clips` of its clips when given)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PrepError(f"--videos {spec} is not a folder")
        return path, {"kind": "folder", "path": str(path.resolve())}
    patterns = None
    try:
        from huggingface_hub import HfApi, snapshot_download

        if max_clips is not None:
            files = HfApi().list_repo_files(spec, repo_type="dataset", revision=revision)
            patterns = hub_clip_patterns(files, davis_resolution, max_clips, seed)
        local = Path(snapshot_download(repo_id=spec, repo_type="dataset", revision=revision, allow_patterns=patterns))
    except Exception as exc:  # the hub client raises many types
        raise PrepError(
            f"--videos {spec!r} is neither a local folder nor a hub dataset that could be downloaded "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    # A snapshot folder is named after the commit it holds.
    return local, {"kind": "hub", "id": spec, "revision": revision or "main", "resolved_revision": local.name,
                   "downloaded_clips": patterns}


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _frame_files(folder: Path) -> list[Path]:
    files = [entry for entry in folder.iterdir() if entry.is_file() and entry.suffix.lower() in FRAME_SUFFIXES]
    return sorted(files, key=_natural_key)


def _clip_candidate(clip: Clip, frames: int, stride: int | None, resolution: int) -> Candidate:
    if clip.path.is_dir():
        stamp: Any = [(file.name, *_stat(file)) for file in _frame_files(clip.path)]
    else:
        stamp = _stat(clip.path)

    def build() -> Built:
        images, meta = _read_frames(clip.path, frames, stride)
        squares = {
            f"frame_{position:03d}": (f"clips/{clip.id}/{position:03d}.png", resize_center_crop(image, resolution))
            for position, image in enumerate(images)
        }
        return squares, meta

    key = item_key("clip", str(clip.path.resolve()), stamp, frames, stride, resolution)
    return Candidate(clip.id, key, str(clip.path), build)


def _stat(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def _read_frames(path: Path, frames: int, stride: int | None) -> tuple[list[Image.Image], dict[str, str | None]]:
    """The sampled frames of a clip as 8-bit RGB images, and the clip's metadata."""
    if path.is_dir():
        files = _frame_files(path)
        sizes = {}
        for file in files:
            try:
                with Image.open(file) as image:
                    sizes[file.name] = image.size
            except (OSError, SyntaxError, ValueError) as exc:
                raise BadItem(f"frame {file.name}: file is not an image Pillow can read ({type(exc).__name__})") from None
        distinct = sorted(set(sizes.values()))
        if len(distinct) > 1:
            first = files[0].name
            other = next(name for name, size in sizes.items() if size != sizes[first])
            raise BadItem(
                f"frame sizes differ: {first} is {sizes[first][0]}x{sizes[first][1]} px, "
                f"{other} is {sizes[other][0]}x{sizes[other][1]} px"
            )
        count = len(files)
        indices = sample_indices(count, frames, stride)
        images = []
        for index in indices:
            try:
                images.append(decode_image(files[index].read_bytes())[0])
            except BadItem as exc:
                raise BadItem(f"frame {files[index].name}: {exc}") from None
        fps = None
    else:
        images, indices, count, fps = _decode_video(path, frames, stride)
    meta = {
        "source_frames": REFERENCE_SEPARATOR.join(str(index) for index in indices),
        "source_frame_count": str(count),
        "source_fps": fps,
    }
    return images, meta


def _decode_video(path: Path, frames: int, stride: int | None) -> tuple[list[Image.Image], list[int], int, str | None]:
    """Decode the sampled frames of a video file with PyAV: (images, indices, frame count, fps)."""
    import av  # only video files need PyAV (checked in `run`); frame folders do not

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadItem("file has no video stream")
            stream = container.streams.video[0]
            fps = str(stream.average_rate) if stream.average_rate else None
            count = sum(1 for packet in container.demux(stream) if packet.size)
        indices = sample_indices(count, frames, stride)
        wanted = set(indices)
        decoded: dict[int, Image.Image] = {}
        with av.open(str(path)) as container:
            for ordinal, frame in enumerate(container.decode(video=0)):
                if ordinal in wanted:
                    decoded[ordinal] = frame.to_image()
                if ordinal >= indices[-1]:
                    break
    except (av.FFmpegError, OSError) as exc:
        raise BadItem(f"video cannot be decoded ({type(exc).__name__}: {exc})") from None
    if len(decoded) < len(indices):
        raise BadItem(f"video decoded to fewer frames than its {count} packets; frame {indices[-1]} is missing")
    images = [decoded[index] for index in indices]
    check_size(*images[0].size)
    sizes = sorted({image.size for image in images})
    if len(sizes) > 1:
        raise BadItem(f"frame sizes differ within the video: {', '.join(f'{w}x{h}' for w, h in sizes)} px")
    return [image.convert("RGB") for image in images], indices, count, fps


def _row(clip: Prepared, style: Prepared) -> dict[str, Any]:
    frames = [clip.files[name] for name in sorted(clip.files)]
    style_file = style.files["image"]
    row: dict[str, Any] = {
        "sample_id": f"{clip.id}__{style.id}",
        "content": frames[0].path,
        "reference": style_file.path,
        "split": "test",
        "content_sha256": frames[0].sha256,
        "reference_sha256": style_file.sha256,
        "frames": REFERENCE_SEPARATOR.join(frame.path for frame in frames),
        "frames_sha256": REFERENCE_SEPARATOR.join(frame.sha256 for frame in frames),
        "n_frames": str(len(frames)),
    }
    for name, value in clip.meta.items():
        row[f"content_{name}"] = value
    for name, value in style.meta.items():
        row.setdefault(f"reference_{name}", value)
    return row
