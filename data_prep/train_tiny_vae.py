"""Train the `tiny` backbone's VAE on public-domain images, deterministically, on one CPU thread.

    python -m data_prep.train_tiny_vae --out semantix/backbones/weights [--steps N] [--seed S]

The VAE has the tiny architecture (`semantix.backbones.tiny.TINY`: 64 px -> a 4x32x32 latent). Its
training images are scikit-image's public-domain/CC0 sample photographs other than the demo's four
content photos, plus the demo's four procedural style images (CC0, `data_prep/demo.py`); the demo's
content photos are held out, so the demo-content PSNR in the record measures unseen images. Each
step draws random 32 px crops of the images scaled so that their short side is 64 to 256 px (a 64 px
image's detail, as the harness resizes), with random horizontal flips and colour-channel permutations.

Loss: mean squared error on pixels in [-1, 1] of the decoded posterior MEAN (the latent the backbone
encodes to; decoding a posterior sample instead, as SD's VAE was trained, converges far slower on a
CPU budget), plus a small KL term (SD's weight, `KL_WEIGHT`, on the per-image KL sum) that keeps the
latent means near the origin. The posterior variance is therefore untrained: only the mean is used.
After training, the scaling factor is set to 1 / (std of the posterior means over the training images
at 64 px), SD1.5's convention, so scaled latents have about unit standard deviation.

Writes `tiny_vae.safetensors` (the VAE's state dict) and `tiny_vae.json` (the record: images and
their sha256, seed, steps, losses, PSNRs, latent std, scaling factor, weights sha256, versions).
The tiny configs name the shipped file by a sha256 prefix (`vae_sha256`), so a retrained VAE shipped
in `semantix/backbones/weights/` needs that prefix updated there too (the script prints it).
Deterministic for a given torch version (torch.use_deterministic_algorithms, one thread, seeded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semantix.backbones.tiny import TINY, TINY_VAE_RECORD, TINY_VAE_WEIGHTS, make_vae
from semantix.data import DEMO_DIR, resize_center_crop
from semantix.io import atomic_write_bytes

SEED = 20261128
RESOLUTION = 64
STEPS = 3000  # the shipped file: 8.7 min on one core
BATCH = 8
# Training crops are smaller than the 64 px the VAE serves (it is convolutional but for one attention
# layer): a quarter of the pixels per image keeps a CPU step cheap.
CROP = 32
LEARNING_RATE = 1e-3
KL_WEIGHT = 1e-6
# Short sides the images are scaled to before cropping (the detail of a 64 px image up to a 4x closer view).
SCALES = (64, 80, 96, 128, 160, 192, 256)


@dataclass(frozen=True)
class Source:
    """A training image: a scikit-image sample or a demo style, with its credit and licence."""

    name: str
    credit: str
    licence: str


# Credits and licences as each function's docstring in skimage.data states them.
SKIMAGE_SOURCES = (
    Source("camera", "Lav Varshney", "CC0"),
    Source("coins", "Brooklyn Museum Collection", "no known copyright restrictions"),
    Source("hubble_deep_field", "NASA, HubbleSite", "public domain"),
    Source("immunohistochemistry", "Center for Microscopy And Molecular Imaging (CMMI)",
           "no known copyright restrictions"),
    Source("brick", "CC0Textures (Bricks25)", "CC0"),
    Source("grass", "linolafett on DeviantArt (Grass-01)", "CC0"),
    Source("gravel", "CC0Textures (Gravel04)", "CC0"),
    Source("clock", "Stefan van der Walt", "public domain"),
    Source("text", "Wikipedia (File:Corner.png)", "public domain"),
)
DEMO_STYLES = ("sunset_strokes", "teal_mosaic", "red_black_stripes", "pastel_dots")
DEMO_CONTENTS = ("astronaut", "coffee", "chelsea", "rocket")  # held out: the PSNR check


def _rgb(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(array)
    return image.convert("RGB")


def training_images() -> list[tuple[dict, Image.Image]]:
    """(record entry, RGB image) for every training image, in a fixed order."""
    import skimage.data

    out = []
    for source in SKIMAGE_SOURCES:
        array = np.ascontiguousarray(getattr(skimage.data, source.name)())
        entry = {"image": f"skimage.data.{source.name}()", "credit": source.credit, "licence": source.licence,
                 "sha256": hashlib.sha256(array.tobytes()).hexdigest(), "sha256_of": "uint8 pixel array"}
        out.append((entry, _rgb(array)))
    for style in DEMO_STYLES:
        path = DEMO_DIR / f"style_{style}.png"
        entry = {"image": f"semantix/data/demo/{path.name}", "credit": "procedural, data_prep/demo.py",
                 "licence": "CC0 1.0", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                 "sha256_of": "file"}
        out.append((entry, Image.open(path).convert("RGB")))
    return out


def demo_images() -> dict[str, torch.Tensor]:
    """The demo set's images at 64 px under the harness's resize policy, (1, 3, 64, 64) in [-1, 1]."""
    names = [f"content_{c}.png" for c in DEMO_CONTENTS] + [f"style_{s}.png" for s in DEMO_STYLES]
    return {name: _to_pixels(resize_center_crop(Image.open(DEMO_DIR / name).convert("RGB"), RESOLUTION))
            for name in names}


def _to_pixels(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def pyramid(images: list[Image.Image]) -> list[np.ndarray]:
    """Each image scaled (bicubic, antialiased) so its short side is each of SCALES, as float arrays."""
    out = []
    for image in images:
        for short in SCALES:
            width, height = image.size
            scale = short / min(width, height)
            size = (max(short, round(width * scale)), max(short, round(height * scale)))
            out.append(np.asarray(image.resize(size, resample=Image.Resampling.BICUBIC), dtype=np.float32))
    return out


def sample_batch(rng: np.random.Generator, levels: list[np.ndarray]) -> torch.Tensor:
    """BATCH random CROP px crops with random flips and channel permutations, (B, 3, CROP, CROP) in [-1, 1]."""
    crops = []
    for _ in range(BATCH):
        level = levels[rng.integers(len(levels))]
        top = rng.integers(level.shape[0] - CROP + 1)
        left = rng.integers(level.shape[1] - CROP + 1)
        crop = level[top:top + CROP, left:left + CROP]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(crop[:, :, rng.permutation(3)])
    batch = np.stack(crops) / 127.5 - 1.0
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().float()


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], measured in [0, 1] after clamping (as the backbone decodes)."""
    mse = torch.mean(((reconstruction.clamp(-1, 1) - target) / 2) ** 2).item()
    return 10 * math.log10(1.0 / mse)


@torch.no_grad()
def evaluate(vae, images: dict[str, torch.Tensor], scaling_factor: float) -> dict:
    """Reconstruction PSNR from the posterior mean (the backbone's encode) and scaled-latent std per image."""
    out = {}
    for name, pixels in images.items():
        mean = vae.encode(pixels).latent_dist.mean
        out[name] = {"psnr_db": round(psnr(vae.decode(mean).sample, pixels), 3),
                     "scaled_latent_std": round(float(mean.std() * scaling_factor), 4)}
    return out


def train(steps: int, seed: int, log_every: int = 100) -> tuple[dict[str, torch.Tensor], dict]:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    entries, images = zip(*training_images(), strict=True)
    levels = pyramid(list(images))
    vae = make_vae(TINY, RESOLUTION).train()
    optimiser = torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=steps,
                                                   pct_start=max(0.05, 2 / steps))  # >= 2 warm-up steps
    losses, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        pixels = sample_batch(rng, levels)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.mean).sample
        mse = torch.mean((reconstruction - pixels) ** 2)
        kl = posterior.kl().mean()
        loss = mse + KL_WEIGHT * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append((mse.item(), kl.item()))
        if step % log_every == 0 or step == steps:
            recent = np.mean([m for m, _ in losses[-log_every:]])
            print(f"step {step}/{steps}  mse {recent:.5f} (~{10 * math.log10(4 / recent):.2f} dB)  "
                  f"kl {kl.item():.1f}  {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    vae.eval()
    with torch.no_grad():
        train_means = torch.cat([vae.encode(_to_pixels(resize_center_crop(image, RESOLUTION))).latent_dist.mean
                                 for image in images])
    latent_std = float(train_means.std())
    scaling_factor = 1.0 / latent_std
    demo = evaluate(vae, demo_images(), scaling_factor)
    contents = [v["psnr_db"] for k, v in demo.items() if k.startswith("content_")]
    record = {
        "what": "the tiny backbone's VAE (semantix.backbones.tiny.TINY), trained by data_prep/train_tiny_vae.py",
        "seed": seed,
        "steps": steps,
        "batch": BATCH,
        "learning_rate": LEARNING_RATE,
        "kl_weight": KL_WEIGHT,
        "resolution": RESOLUTION,
        "augmentation": f"random {CROP} px crops of the images scaled to short side {list(SCALES)}, "
                        "horizontal flips, colour-channel permutations",
        "training_seconds": round(seconds, 1),
        "final_mse_last_100_steps": round(float(np.mean([m for m, _ in losses[-100:]])), 6),
        "final_kl_last_100_steps": round(float(np.mean([k for _, k in losses[-100:]])), 2),
        "data": list(entries),
        "held_out": [f"semantix/data/demo/content_{c}.png" for c in DEMO_CONTENTS],
        "latent_std_unscaled": round(latent_std, 6),
        "latent_std_measured_on": "posterior means of the training images at 64 px (resize policy)",
        "scaling_factor": scaling_factor,
        "demo_psnr_db": demo,
        "demo_content_psnr_db_mean": round(float(np.mean(contents)), 3),
        "demo_content_psnr_db_min": round(float(np.min(contents)), 3),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    return {k: v.detach().contiguous() for k, v in vae.state_dict().items()}, record


def write(out: Path, state: dict[str, torch.Tensor], record: dict) -> dict:
    """The weights file, then the record with its sha256 (the loader checks it); returns that record."""
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    weights = save(state, metadata={"format": "pt"})
    atomic_write_bytes(out / TINY_VAE_WEIGHTS, weights)
    record = {**record, "weights_file": TINY_VAE_WEIGHTS, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    atomic_write_bytes(out / TINY_VAE_RECORD, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for tiny_vae.safetensors and .json")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    state, record = train(args.steps, args.seed)
    record = write(args.out, state, record)
    print(f"demo content PSNR {record['demo_content_psnr_db_mean']:.2f} dB (min "
          f"{record['demo_content_psnr_db_min']:.2f}); scaling factor {record['scaling_factor']:.4f}; "
          f"wrote {args.out / TINY_VAE_WEIGHTS}; to ship it, set vae_sha256: \"{record['weights_sha256'][:12]}\" "
          "in conf/backbone/tiny.yaml and tiny_video.yaml")


if __name__ == "__main__":
    main()
