"""The one place where images are checked and converted at the metric boundary.

Harness images are float32 (3, H, W) in [0, 1] (see `semantix.types`), videos (F, 3, H, W) of such
frames. A metric declares the range it expects; `check_unit_range` (`check_unit_range_frames` for
videos) refuses anything else instead of silently scoring a wrongly scaled image (a [-1, 1] or 0..255
image passed as [0, 1] is the classic silent bug of public metric code).
"""

from __future__ import annotations

import math

import torch

# Values a hair outside [0, 1] come from float round-off in colour conversions, not from a range bug.
RANGE_TOLERANCE = 1e-3


def check_unit_range(image: torch.Tensor, what: str) -> torch.Tensor:
    """Return `image` as float32 if it is a (3, H, W) image in [0, 1]; raise ValueError otherwise."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{what}: expected a (3, H, W) image, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"{what}: expected a float image in [0, 1], got dtype {image.dtype}")
    low, high = float(image.min()), float(image.max())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"{what}: values in [{low:.3g}, {high:.3g}] but the metric expects [0, 1] "
            "(a [-1, 1] or 0..255 image must be converted first)"
        )
    return image.float().clamp(0.0, 1.0)


def check_unit_range_frames(frames: torch.Tensor, what: str) -> torch.Tensor:
    """Return `frames` as float32 if they are (F, 3, H, W) frames in [0, 1]; raise ValueError otherwise
    (each frame is checked as an image, so the message names the offending frame)."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"{what}: expected (F, 3, H, W) frames, got shape {tuple(frames.shape)}")
    for index, frame in enumerate(frames):
        check_unit_range(frame, f"{what}, frame {index}")
    return frames.float().clamp(0.0, 1.0)


def check_same_size(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"{what}: image sizes differ, {tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}")


def to_hwc_numpy(image: torch.Tensor):
    """(3, H, W) in [0, 1] -> (H, W, 3) float64 numpy, for scikit-image."""
    return image.permute(1, 2, 0).double().numpy()


# -- per-family converters: (3, H, W) in [0, 1] -> what each network expects ------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalise(batch: torch.Tensor, mean, std) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def _resize(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return torch.nn.functional.interpolate(batch, size=size, mode="bicubic", align_corners=False,
                                           antialias=True).clamp(0.0, 1.0)


def to_clip_input(image: torch.Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """CLIP: the WHOLE image resized to size x size (no centre crop, which would drop the borders
    that style lives in too; a deliberate departure from open_clip's preprocessing), CLIP-normalised."""
    batch = check_unit_range(image, "CLIP input").unsqueeze(0)
    return _normalise(_resize(batch, (size, size)), mean, std)


def to_lpips_input(image: torch.Tensor) -> torch.Tensor:
    """LPIPS: (1, 3, H, W) in [-1, 1], the range the lpips package expects without normalize=True.

    The lpips network accepts a [0, 1] tensor without complaint and silently scores it lower (the
    pitfall of docs/metrics.md). So nothing calls the network with a raw tensor: the one LPIPS
    wrapper (`perceptual.LPIPSNetwork`) takes harness images, checked to be in [0, 1], and converts
    them here.
    """
    return check_unit_range(image, "LPIPS input").unsqueeze(0) * 2.0 - 1.0


def to_vgg_input(image: torch.Tensor, size: int | None = 512) -> torch.Tensor:
    """VGG (CFSD, Gram): resized to size x size (fixed, because CFSD scales with resolution),
    ImageNet-normalised. size=None keeps the image's own size."""
    batch = check_unit_range(image, "VGG input").unsqueeze(0)
    if size is not None:
        batch = _resize(batch, (size, size))
    return _normalise(batch, IMAGENET_MEAN, IMAGENET_STD)


def dino_size(height: int, width: int, short_side: int = 224, max_side: int = 480, patch: int = 8) -> tuple[int, int]:
    """Short side to `short_side`, long side capped at `max_side`, both multiples of the patch size."""
    scale = short_side / min(height, width)
    scale = min(scale, max_side / max(height, width))
    return (max(patch, round(height * scale / patch) * patch), max(patch, round(width * scale / patch) * patch))


def to_dino_input(image: torch.Tensor, short_side: int = 224, max_side: int = 480, patch: int = 8) -> torch.Tensor:
    """DINO (structure distance): [0, 1], resized per `dino_size`, ImageNet-normalised (not 0..255:
    PIE-Bench's structure distance feeds 0..255 and is not comparable with ours)."""
    batch = check_unit_range(image, "DINO input").unsqueeze(0)
    return _normalise(_resize(batch, dino_size(*batch.shape[-2:], short_side, max_side, patch)),
                      IMAGENET_MEAN, IMAGENET_STD)


# torchvision's RAFT builds a 4-level correlation pyramid on 1/8-resolution features and needs those
# features at least 16 wide and high, hence inputs of at least 128 px; both sides must divide by 8.
RAFT_MIN_SIDE = 128
RAFT_MULTIPLE = 8


def raft_size(height: int, width: int, short_side: int | None = None) -> tuple[int, int]:
    """RAFT's input size for frames of height x width: scaled (aspect ratio kept) so that the short side
    is `short_side` (None: the frames' own size), then up to at least RAFT_MIN_SIDE, each side rounded
    up to a multiple of RAFT_MULTIPLE."""
    scale = max(short_side or min(height, width), RAFT_MIN_SIDE) / min(height, width)
    # Rounded before the ceiling so that float fuzz (128.00000000000003) does not add a block of 8.
    return tuple(math.ceil(round(side * scale, 6) / RAFT_MULTIPLE) * RAFT_MULTIPLE for side in (height, width))


def to_raft_input(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RAFT (torchvision optical flow): (F, 3, H, W) frames in [0, 1] resized to `size` (see `raft_size`)
    and mapped to [-1, 1], as torchvision's `Raft_Large_Weights.transforms()` does."""
    return _resize(check_unit_range_frames(frames, "RAFT input"), size) * 2.0 - 1.0


def to_inception_uint8(image: torch.Tensor) -> torch.Tensor:
    """Inception (FID): (1, 3, H, W) uint8 in 0..255, what torchmetrics' FID takes with normalize=False
    (its normalize=True path truncates instead of rounding)."""
    batch = check_unit_range(image, "Inception input").unsqueeze(0)
    return (batch * 255.0).round().to(torch.uint8)
