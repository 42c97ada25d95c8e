"""Build the embedded demo set shipped in `semantix/data/demo/`.

    python -m data_prep.demo [--out DIR]

Content images are scikit-image's bundled sample photographs (public domain or CC0, no download);
style references are painted procedurally here from a fixed seed (CC0, made for this project).
Every image is 256x256, made with the harness's resize policy (`semantix.data.resize_center_crop`).

The demo clip is a synthetic camera pan over one of those photos: the photo is scaled so that its
short side is `VIDEO_SIZE` (the policy's bicubic scaling, without its crop), and a `VIDEO_SIZE`
square window moves right by `PAN_PX_PER_FRAME` whole pixels per frame over `VIDEO_FRAMES` frames.
No frame is resampled on its own, so the true motion is exact: the scene moves left by
`PAN_PX_PER_FRAME` px per frame (optical flow (-PAN_PX_PER_FRAME, 0) everywhere but the strip
entering at the right edge), recorded in `manifest_video.csv`'s meta columns.

The script writes the PNGs (the clip's in `video_<photo>/000.png ...`), `manifest.csv` (images,
with sha256 columns), `manifest_video.csv` (the clip x `VIDEO_STYLES`), `LICENSES.md` and
`source.json`, then loads every sample of both manifests back through `semantix.data.Manifest` as a
self-check.

Deterministic: the same library versions give byte-identical files (PNG bytes depend on Pillow's
zlib, pixels on scikit-image's sample files and numpy; `source.json` records all three).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import skimage
import skimage.data
from PIL import Image, features

from semantix.data import DEMO_DIR, Manifest, resize_center_crop, write_manifest
from semantix.io import atomic_write_bytes

SEED = 20240611
SIZE = 256
# The demo clip: AnimateDiff's 16-frame window, small enough that the whole demo set stays under 2 MB.
VIDEO_CONTENT = "chelsea"
VIDEO_FRAMES = 16
VIDEO_SIZE = 128
PAN_PX_PER_FRAME = 4
VIDEO_STYLES = ("sunset_strokes", "teal_mosaic")
# Resolution of the self-check load: small, it only proves every sample decodes and verifies.
CHECK_RESOLUTION = 64


@dataclass(frozen=True)
class Content:
    """A scikit-image sample photograph used as a content image."""

    name: str
    prompt: str
    domain: str
    credit: str
    licence: str


# Credits and licences as stated in each function's docstring in skimage.data.
CONTENTS = (
    Content(
        "astronaut",
        "a photo of an astronaut",
        "people",
        "Eileen Collins, NASA Great Images database (https://flic.kr/p/r9qvLn)",
        "public domain (no known copyright restrictions)",
    ),
    Content(
        "coffee",
        "a photo of a cup of coffee",
        "food",
        "Rachel Michetti, courtesy of Pikolo Espresso Bar",
        "CC0 (no copyright restrictions)",
    ),
    Content(
        "chelsea",
        "a photo of a cat",
        "animals",
        "Stefan van der Walt",
        "CC0 (no copyright restrictions)",
    ),
    Content(
        "rocket",
        "a photo of a rocket launch",
        "vehicles",
        "SpaceX, launch of DSCOVR on Falcon 9 (https://www.flickr.com/photos/spacexphotos/16511594820/)",
        "public domain (released by SpaceX)",
    ),
)

# (content, style names): each content with one or two styles; the last row is multi-reference.
PAIRS = (
    ("astronaut", ("sunset_strokes",)),
    ("astronaut", ("teal_mosaic",)),
    ("coffee", ("pastel_dots",)),
    ("coffee", ("red_black_stripes",)),
    ("chelsea", ("sunset_strokes",)),
    ("chelsea", ("pastel_dots",)),
    ("rocket", ("red_black_stripes",)),
    ("rocket", ("sunset_strokes", "teal_mosaic")),
)


def _gradient(stops: list[tuple[float, tuple[int, int, int]]], positions: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour ramp: `positions` in [0, 1] -> float RGB in [0, 255], shape (..., 3)."""
    where = [stop for stop, _ in stops]
    colours = np.array([colour for _, colour in stops], dtype=np.float64)
    return np.stack([np.interp(positions, where, colours[:, channel]) for channel in range(3)], axis=-1)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency value noise (SIZE x SIZE, roughly in [-1, 1]): a coarse grid upsampled bilinearly."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    coords = np.linspace(0.0, cells, SIZE)
    low = np.minimum(np.floor(coords).astype(int), cells - 1)
    frac = coords - low
    rows = grid[low] * (1 - frac)[:, None] + grid[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def sunset_strokes(rng: np.random.Generator) -> np.ndarray:
    """A warm sunset (violet sky, orange glow, a sun, dark sea) painted with short brush strokes."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    sky = [
        (0.0, (58, 28, 92)),
        (0.3, (176, 62, 96)),
        (0.55, (244, 128, 52)),
        (0.66, (255, 206, 112)),
        (0.7, (150, 60, 62)),
        (1.0, (42, 20, 44)),
    ]
    canvas = _gradient(sky, y)
    sun = np.exp(-(((x - 0.62) ** 2 + (y - 0.6) ** 2) / 0.006))
    canvas += sun[..., None] * (np.array([255.0, 236.0, 170.0]) - canvas)
    # Strokes sample the colour beneath them, jittered, so the picture dissolves into brush marks.
    for _ in range(2600):
        cy, cx = rng.uniform(0, SIZE, size=2)
        angle = rng.normal(0.0, 0.22)
        half_length = rng.uniform(6.0, 20.0)
        half_width = rng.uniform(1.5, 4.0)
        base = canvas[int(cy), int(cx)]
        colour = np.clip(base + rng.normal(0.0, 16.0, size=3), 0, 255)
        reach = int(half_length + half_width) + 1
        top, bottom = max(0, int(cy) - reach), min(SIZE, int(cy) + reach + 1)
        left, right = max(0, int(cx) - reach), min(SIZE, int(cx) + reach + 1)
        py, px = np.mgrid[top:bottom, left:right]
        along = (px - cx) * np.cos(angle) + (py - cy) * np.sin(angle)
        across = -(px - cx) * np.sin(angle) + (py - cy) * np.cos(angle)
        body = np.clip(1.0 - np.abs(across) / half_width, 0.0, 1.0)
        ends = np.clip((half_length - np.abs(along)) / 3.0, 0.0, 1.0)
        # Bristle streaks: paint thins along lines parallel to the stroke.
        bristles = 0.75 + 0.25 * np.sin(across * 3.1 + rng.uniform(0, 2 * np.pi))
        alpha = (0.85 * body * ends * bristles)[..., None]
        region = canvas[top:bottom, left:right]
        canvas[top:bottom, left:right] = region * (1.0 - alpha) + colour * alpha
    return _to_uint8(canvas)


def teal_mosaic(rng: np.random.Generator) -> np.ndarray:
    """A blue and teal Voronoi mosaic: shaded tiles separated by dark grout."""
    points = rng.uniform(0, SIZE, size=(150, 2))
    palette = np.array(
        [(18, 52, 104), (26, 104, 140), (40, 146, 150), (88, 186, 188), (14, 36, 76), (150, 214, 210)],
        dtype=np.float64,
    )
    colours = palette[rng.integers(0, len(palette), size=len(points))] + rng.normal(0, 10, (len(points), 3))
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    distances = np.sqrt((y[..., None] - points[:, 0]) ** 2 + (x[..., None] - points[:, 1]) ** 2)
    order = np.argsort(distances, axis=-1)
    nearest = order[..., 0]
    first = np.take_along_axis(distances, order[..., :1], axis=-1)[..., 0]
    second = np.take_along_axis(distances, order[..., 1:2], axis=-1)[..., 0]
    # Tiles are lighter at their centre, like glazed ceramic.
    shade = 1.12 - 0.25 * np.clip(first / 18.0, 0.0, 1.0)
    canvas = colours[nearest] * shade[..., None]
    grout = np.clip((second - first - 1.0) / 1.5, 0.0, 1.0)[..., None]
    canvas = canvas * grout + np.array([16.0, 24.0, 32.0]) * (1.0 - grout)
    canvas += 10.0 * _smooth_noise(rng, 16)[..., None]
    return _to_uint8(canvas)


def red_black_stripes(rng: np.random.Generator) -> np.ndarray:
    """High-contrast wavy diagonal stripes in red and black, with uneven paint."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    phase = (x + y) / 14.0 + 1.4 * np.sin(y / 23.0) + 0.8 * np.sin(x / 37.0 + 1.0)
    band = np.clip(np.sin(phase) * 6.0, -1.0, 1.0) * 0.5 + 0.5
    red = np.array([206.0, 24.0, 30.0]) * (1.0 + 0.12 * _smooth_noise(rng, 12))[..., None]
    black = np.array([14.0, 10.0, 12.0]) + 8.0 * _smooth_noise(rng, 24)[..., None]
    canvas = red * band[..., None] + black * (1.0 - band[..., None])
    return _to_uint8(canvas)


def pastel_dots(rng: np.random.Generator) -> np.ndarray:
    """Pointillist pastel dots on a cream ground."""
    canvas = np.empty((SIZE, SIZE, 3))
    canvas[:] = (248.0, 240.0, 226.0)
    canvas += 6.0 * _smooth_noise(rng, 8)[..., None]
    palette = np.array(
        [
            (246, 184, 196),
            (176, 226, 200),
            (198, 184, 236),
            (250, 226, 150),
            (170, 208, 240),
            (250, 200, 160),
        ],
        dtype=np.float64,
    )
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    spacing = 11
    for row in range(-1, SIZE // spacing + 2):
        for column in range(-1, SIZE // spacing + 2):
            cy = row * spacing + (spacing / 2 if column % 2 else 0.0) + rng.normal(0, 1.5)
            cx = column * spacing + rng.normal(0, 1.5)
            radius = rng.uniform(2.5, 5.0)
            colour = palette[rng.integers(0, len(palette))]
            top, bottom = max(0, int(cy - radius) - 1), min(SIZE, int(cy + radius) + 2)
            left, right = max(0, int(cx - radius) - 1), min(SIZE, int(cx + radius) + 2)
            if top >= bottom or left >= right:
                continue
            patch_y, patch_x = y[top:bottom, left:right], x[top:bottom, left:right]
            # One pixel of antialiased edge, so the dots are round rather than jagged.
            inside = np.clip(radius - np.hypot(patch_y - cy, patch_x - cx) + 0.5, 0.0, 1.0)[..., None]
            canvas[top:bottom, left:right] = canvas[top:bottom, left:right] * (1 - inside) + colour * inside
    return _to_uint8(canvas)


STYLES: dict[str, tuple[Callable[[np.random.Generator], np.ndarray], str]] = {
    "sunset_strokes": (sunset_strokes, "warm sunset gradient painted with brush strokes"),
    "teal_mosaic": (teal_mosaic, "blue/teal Voronoi mosaic with dark grout"),
    "red_black_stripes": (red_black_stripes, "high-contrast wavy red/black stripes"),
    "pastel_dots": (pastel_dots, "pastel pointillist dots on cream"),
}


def content_file(name: str) -> str:
    return f"content_{name}.png"


def style_file(name: str) -> str:
    return f"style_{name}.png"


def video_folder(name: str) -> str:
    return f"video_{name}"


def video_frame_file(name: str, index: int) -> str:
    return f"{video_folder(name)}/{index:03d}.png"


def pan_frames(photo: Image.Image) -> list[np.ndarray]:
    """The demo clip: `VIDEO_FRAMES` square windows of `photo` (landscape), moving right in whole pixels.

    The photo is scaled once (short side to `VIDEO_SIZE`, bicubic, as in `resize_center_crop`) and
    the pan is centred on its width; every frame is an exact crop of that one image.
    """
    width, height = photo.size
    strip_width = round(width * VIDEO_SIZE / height)
    travel = PAN_PX_PER_FRAME * (VIDEO_FRAMES - 1)
    if height > width or strip_width < VIDEO_SIZE + travel:
        raise ValueError(f"a {width}x{height} photo is too narrow for a {travel} px pan")
    strip = np.asarray(photo.resize((strip_width, VIDEO_SIZE), resample=Image.Resampling.BICUBIC))
    start = (strip_width - VIDEO_SIZE - travel) // 2
    return [
        strip[:, start + index * PAN_PX_PER_FRAME: start + index * PAN_PX_PER_FRAME + VIDEO_SIZE]
        for index in range(VIDEO_FRAMES)
    ]


def _png_bytes(pixels: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit RGB array; Pillow writes no timestamp, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _licenses_markdown() -> str:
    lines = [
        "# Licences of the embedded demo set",
        "",
        "Generated by `python -m data_prep.demo`; do not edit by hand.",
        "",
        "| file | source | licence |",
        "| --- | --- | --- |",
    ]
    for content in CONTENTS:
        source = f"`skimage.data.{content.name}()` (scikit-image sample data); {content.credit}"
        lines.append(f"| {content_file(content.name)} | {source} | {content.licence} |")
    for name, (_, description) in STYLES.items():
        source = f"procedural, `data_prep/demo.py:{name}` ({description}), seed {SEED}"
        lines.append(f"| {style_file(name)} | {source} | CC0 1.0 (made for semantix) |")
    video = next(content for content in CONTENTS if content.name == VIDEO_CONTENT)
    frames = f"{video_frame_file(video.name, 0)} to {video_frame_file(video.name, VIDEO_FRAMES - 1)}"
    source = (
        f"{VIDEO_SIZE} px windows of `skimage.data.{video.name}()` panning {PAN_PX_PER_FRAME} px per frame "
        f"(`data_prep/demo.py:pan_frames`); {video.credit}"
    )
    lines.append(f"| {frames} | {source} | {video.licence} |")
    for generated in ("manifest.csv", "manifest_video.csv", "source.json", "LICENSES.md"):
        lines.append(f"| {generated} | generated by `data_prep/demo.py` | CC0 1.0 |")
    return "\n".join(lines) + "\n"


def build(out: Path) -> dict[str, str]:
    """Write the demo set into `out`; returns {file name: sha256} of the images."""
    out.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}

    def emit(file_name: str, pixels: np.ndarray) -> None:
        data = _png_bytes(pixels)
        atomic_write_bytes(out / file_name, data)
        hashes[file_name] = hashlib.sha256(data).hexdigest()

    photos = {
        content.name: Image.fromarray(getattr(skimage.data, content.name)()).convert("RGB")
        for content in CONTENTS
    }
    for content in CONTENTS:
        emit(content_file(content.name), np.asarray(resize_center_crop(photos[content.name], SIZE)))
    for index, (name, (paint, _)) in enumerate(STYLES.items()):
        # One independent stream per style, so adding a style never changes the others.
        emit(style_file(name), paint(np.random.default_rng([SEED, index])))

    by_name = {content.name: content for content in CONTENTS}
    rows = []
    for content_name, style_names in PAIRS:
        content = by_name[content_name]
        references = [style_file(style) for style in style_names]
        rows.append(
            {
                "sample_id": f"{content_name}__{'+'.join(style_names)}",
                "content": content_file(content_name),
                "reference": ";".join(references),
                "prompt": content.prompt,
                "domain": content.domain,
                "split": "test",
                "content_sha256": hashes[content_file(content_name)],
                "reference_sha256": ";".join(hashes[reference] for reference in references),
            }
        )
    write_manifest(rows, out / "manifest.csv")

    frame_files = [video_frame_file(VIDEO_CONTENT, index) for index in range(VIDEO_FRAMES)]
    for file_name, pixels in zip(frame_files, pan_frames(photos[VIDEO_CONTENT]), strict=True):
        emit(file_name, pixels)
    video_content = by_name[VIDEO_CONTENT]
    video_rows = [
        {
            "sample_id": f"{video_folder(VIDEO_CONTENT)}__{style}",
            "content": frame_files[0],
            "reference": style_file(style),
            "prompt": video_content.prompt,
            "domain": video_content.domain,
            "split": "test",
            "content_sha256": hashes[frame_files[0]],
            "reference_sha256": hashes[style_file(style)],
            "frames": ";".join(frame_files),
            "frames_sha256": ";".join(hashes[file_name] for file_name in frame_files),
            "n_frames": VIDEO_FRAMES,
            # The known motion, in pixels of the stored frames (frame_size); it scales with the
            # resolution a run loads them at.
            "frame_size": VIDEO_SIZE,
            "pan_px_per_frame": PAN_PX_PER_FRAME,
            "flow_x_px_per_frame": -PAN_PX_PER_FRAME,
            "flow_y_px_per_frame": 0,
        }
        for style in VIDEO_STYLES
    ]
    write_manifest(video_rows, out / "manifest_video.csv")
    atomic_write_bytes(out / "LICENSES.md", _licenses_markdown().encode())
    source = {
        "generator": "data_prep/demo.py (python -m data_prep.demo)",
        "seed": SEED,
        "size": SIZE,
        "resize_policy": "short side to size with PIL bicubic (antialiased), centre crop",
        "versions": {
            "scikit-image": skimage.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "pillow_zlib": features.version("zlib"),
            # Recent Pillow wheels compress with zlib-ng, whose bytes differ from zlib's.
            "pillow_zlib_ng": features.version("zlib_ng") if "zlib_ng" in features.features else None,
        },
        "counts": {"contents": len(CONTENTS), "styles": len(STYLES), "samples": len(rows)},
        "video": {
            "content": VIDEO_CONTENT,
            "frames": VIDEO_FRAMES,
            "size": VIDEO_SIZE,
            "pan_px_per_frame": PAN_PX_PER_FRAME,
            "styles": list(VIDEO_STYLES),
            "samples": len(video_rows),
        },
        "files": dict(sorted(hashes.items())),
    }
    atomic_write_bytes(out / "source.json", (json.dumps(source, indent=2, sort_keys=True) + "\n").encode())
    return hashes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help=f"output folder (default {DEMO_DIR})")
    args = parser.parse_args(argv)
    build(args.out)
    counts = []
    for manifest_name in ("manifest.csv", "manifest_video.csv"):
        manifest = Manifest.load(args.out / manifest_name)
        for sample_id in manifest.sample_ids:
            manifest.load_sample(sample_id, CHECK_RESOLUTION, min_frames=VIDEO_FRAMES)
        counts.append(f"{len(manifest)} samples in {manifest_name}")
    total = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    print(f"demo set: {', '.join(counts)}, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
