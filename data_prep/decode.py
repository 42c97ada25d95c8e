"""Decoding source images for preparation: convert what can be converted, refuse the rest.

The harness's `open_image` refuses every file that is not plain 8-bit RGB, because a prepared set
must hold nothing else. Making the prepared files plain 8-bit RGB is this module's job: CMYK,
greyscale, palette, 16-bit and alpha sources are converted (alpha flattened onto white); files that
cannot give a faithful image (not an image, corrupt, truncated, floating-point samples, smaller than
`MIN_SIDE` or larger than `MAX_SIDE`) raise `BadItem` with the reason, and the caller skips them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["BadItem", "MIN_SIDE", "MAX_SIDE", "decode_image", "check_size", "orient"]

# The limits of the harness (`semantix.data.open_image` defaults and docs/datasets.md).
MIN_SIDE = 64
MAX_SIDE = 8192

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class BadItem(Exception):
    """A source item that cannot be prepared; the message is the reason recorded for the skip."""


def check_size(width: int, height: int) -> None:
    """Refuse an image outside [MIN_SIDE, MAX_SIDE] from its size alone (before decoding pixels)."""
    if max(width, height) > MAX_SIDE:
        raise BadItem(f"image is {width}x{height} px, larger than {MAX_SIDE} px on the long side")
    if min(width, height) < MIN_SIDE:
        raise BadItem(f"image is {width}x{height} px, smaller than {MIN_SIDE} px on the short side")


def decode_image(data: bytes) -> tuple[Image.Image, int]:
    """Decode encoded image bytes into an upright 8-bit RGB image.

    Returns the image and the EXIF orientation that was applied (1 when none), so that a mask drawn
    in the file's stored pixel grid (COCO annotations are) can be turned the same way with `orient`.
    Raises `BadItem` with a reason that names the problem; never includes object reprs, so the same
    bad file always gives the same reason (it is written into `source.json`).
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (some imported code set it); data_prep refuses "
            "to decode with it because truncated files would be silently padded. Set it back to False."
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_size(*image.size)
            if image.mode == "F":
                raise BadItem("image has floating-point samples (Pillow mode F); export it as 8- or 16-bit")
            image.load()
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
            upright = ImageOps.exif_transpose(image)
    except BadItem:
        raise
    except UnidentifiedImageError:
        raise BadItem("file is not an image Pillow can read, or its header is corrupt") from None
    except Image.DecompressionBombError:
        raise BadItem(f"image has too many pixels to decode safely (more than {MAX_SIDE} px a side)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if "truncated" in str(exc).lower():
            raise BadItem(f"image is truncated, the data ends before the image does ({exc})") from None
        raise BadItem(f"image is corrupt and cannot be decoded ({type(exc).__name__}: {exc})") from None
    return _to_rgb(upright), orientation


def orient(image: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation value to an image that carries none (a mask in stored-pixel space)."""
    if orientation == 1:
        return image
    image = image.copy()
    image.getexif()[_EXIF_ORIENTATION] = orientation
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any decoded mode: 16-bit scaled to 8 bits, alpha flattened onto white."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling; scale 0..65535 to 0..255.
        samples = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")
