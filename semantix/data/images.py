"""Image files: hashing, validated decoding, and THE resize policy of the harness.

Every image the harness reads goes through `open_image` (which rejects the bad-data classes of
docs/datasets.md with one specific `SampleError` each) and then `to_tensor` (which applies
the single resize policy: bicubic resize of the short side, then a centre crop to a square).
`data_prep` scripts use `resize_center_crop` so that stored images follow the same policy.
"""

from __future__ import annotations

import hashlib
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from semantix.types import SampleError

__all__ = ["open_image", "open_mask", "resize_center_crop", "sha256_file", "to_tensor"]

# What to tell the user for every rejected colour format: the data_prep scripts store 8-bit RGB.
_FIX = "convert it to 8-bit RGB (the data_prep scripts do this)"

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_GREY_MODES = frozenset({"L", "1"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def sha256_file(path: str | PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so that large files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def open_image(path: str | PathLike[str], *, min_side: int = 64, max_side: int = 8192) -> Image.Image:
    """Open, fully decode and validate an image file; return it as an 8-bit RGB image.

    Raises `SampleError` with a message that names the file, the problem and the fix for each
    bad-data class: missing file, not an image or corrupt, truncated, CMYK, 16-bit, greyscale,
    alpha channel or transparency, short side below `min_side`, long side above `max_side`.
    Size and colour format are checked from the header before any pixel is decoded, so that a
    huge image (a decompression bomb) is refused without allocating it. An EXIF orientation tag
    is applied, so that the pixels are the image as a viewer shows it.

    Raises `RuntimeError` when `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is set: with it, Pillow pads
    truncated files with grey instead of failing, and truncation could not be detected.
    """
    upright = _decode(Path(path), lambda image, path: _check_header(image, path, min_side=min_side,
                                                                     max_side=max_side))
    # A palette image without transparency holds 8-bit RGB colours: converting it loses nothing.
    return upright.convert("RGB") if upright.mode == "P" else upright


def open_mask(path: str | PathLike[str], resolution: int) -> torch.Tensor:
    """Open a foreground mask (white = foreground) as a float32 ``(1, R, R)`` tensor of 0s and 1s.

    The same checks as `open_image` where they apply (missing, corrupt, truncated, too large),
    any 8-bit mode accepted (greyscale or colour, converted to greyscale), and THE geometry of
    the images (`resize_center_crop`), then thresholded at half intensity, so a mask stays
    aligned with the image it belongs to.
    """
    def check(image: Image.Image, path: Path) -> None:
        width, height = image.size
        if max(width, height) > 8192:
            raise SampleError(f"mask {path} is {width}x{height} px, larger than 8192 px on the long side.")
        if image.mode in _SIXTEEN_BIT_MODES or image.mode == "CMYK":
            raise SampleError(f"mask {path} has the unsupported mode {image.mode}; save it as an 8-bit "
                              "greyscale PNG (0 = background, 255 = foreground).")

    grey = _decode(Path(path), check).convert("L")
    array = np.asarray(resize_center_crop(grey, resolution), dtype=np.uint8) >= 128
    return torch.from_numpy(array[None].astype(np.float32))


def _decode(path: Path, check_header) -> Image.Image:
    """Fully decode `path` after `check_header(image, path)`; every failure as a `SampleError`."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (some imported code set it); semantix refuses "
            "to decode images with it because truncated files would be silently padded with grey. "
            "Set it back to False."
        )
    if not path.is_file():
        what = "is a directory, not an image file" if path.is_dir() else "does not exist"
        raise SampleError(f"image {path} {what}; check the path in the manifest and the dataset root.")
    try:
        with Image.open(path) as image:
            check_header(image, path)
            image.load()
            upright = ImageOps.exif_transpose(image)  # a transposed copy, or a plain copy
    except SampleError:
        raise
    except PermissionError as exc:
        raise SampleError(f"image {path} cannot be read ({exc}); fix its permissions.") from exc
    except Image.DecompressionBombError as exc:
        raise SampleError(
            f"image {path} has too many pixels to decode safely ({exc}); resize it (at most 8192 px "
            "on the long side)."
        ) from exc
    except UnidentifiedImageError as exc:
        raise SampleError(
            f"image {path} is not an image Pillow can read, or its header is corrupt; "
            "replace the file or re-run the data_prep script that made it."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports a file that ends early as "image file is truncated" or "Truncated File Read".
        if "truncated" in str(exc).lower():
            raise SampleError(
                f"image {path} is truncated (the file ends before the image data does: {exc}); "
                "re-download or re-create it."
            ) from exc
        raise SampleError(
            f"image {path} is corrupt and cannot be decoded ({type(exc).__name__}: {exc}); "
            "replace the file or re-run the data_prep script that made it."
        ) from exc
    return upright


def _check_header(image: Image.Image, path: Path, *, min_side: int, max_side: int) -> None:
    """Reject an image from its header alone (size, colour mode, bit depth, transparency)."""
    width, height = image.size
    if max(width, height) > max_side:
        raise SampleError(
            f"image {path} is {width}x{height} px, larger than the limit of {max_side} px on the long "
            f"side; resize it (the benchmark stores images at their benchmark resolution)."
        )
    if min(width, height) < min_side:
        raise SampleError(
            f"image {path} is {width}x{height} px, smaller than {min_side} px on the short side; "
            "use a larger image."
        )
    mode = image.mode
    if mode == "CMYK":
        raise SampleError(f"image {path} is CMYK; {_FIX}.")
    if mode in _SIXTEEN_BIT_MODES or _is_16_bit_rgb(image):
        raise SampleError(
            f"image {path} has 16-bit or floating-point samples (more than 8 bits per channel; "
            f"Pillow mode {mode}); {_FIX}."
        )
    if mode in _ALPHA_MODES or image.has_transparency_data:
        raise SampleError(
            f"image {path} has an alpha channel or transparency (mode {mode}); flatten it onto a "
            f"background and {_FIX}."
        )
    if mode in _GREY_MODES:
        raise SampleError(f"image {path} is greyscale (mode {mode}); {_FIX}.")
    if mode not in ("RGB", "P"):
        raise SampleError(f"image {path} has the unsupported colour mode {mode}; {_FIX}.")


def _is_16_bit_rgb(image: Image.Image) -> bool:
    """Whether Pillow will decode 16-bit samples into an 8-bit mode (16-bit RGB PNG or TIFF).

    Pillow exposes a 48-bit PNG as mode "RGB" and only its decoder's raw mode ("RGB;16B") tells.
    """
    for tile in image.tile:
        args = tile.args
        rawmode = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")
        if ";16" in rawmode:
            return True
    return False


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """THE resize policy: scale the short side to `size`, then crop the centre `size` x `size` square.

    Resampling is Pillow's bicubic filter. Pillow widens the filter support by the scale factor
    when it downsamples, so the resize is antialiased (no aliasing from high-frequency texture,
    which would otherwise bias style and colour metrics); it is also deterministic and the filter
    most diffusion pipelines use. The long side is rounded to the nearest pixel; the crop offset
    rounds down, so an odd surplus leaves one pixel more on the right or bottom.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    width, height = image.size
    scale = size / min(width, height)
    new_width = max(size, round(width * scale))
    new_height = max(size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), resample=Image.Resampling.BICUBIC)
    left = (new_width - size) // 2
    top = (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Apply the resize policy (`resize_center_crop`) and return a float32 (3, R, R) tensor in [0, 1].

    `image` must be 8-bit RGB, as `open_image` returns it. This is the only place where the
    harness turns files into tensors, so every method and metric sees identically prepared pixels.
    """
    if image.mode != "RGB":
        raise ValueError(f"to_tensor expects an 8-bit RGB image, got mode {image.mode}")
    square = resize_center_crop(image, resolution)
    array = np.asarray(square, dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())
