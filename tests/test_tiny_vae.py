"""The trained tiny VAE: its shipped file and record, what it does to a demo image, and the labels of
the tiny backbones it sits in (`tiny`, `tiny_video`) next to the all-random `tiny_random`."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from semantix.backbones import build_tiny, build_tiny_random
from semantix.backbones.tiny import (
    TINY_VAE_RECORD,
    TINY_VAE_WEIGHTS,
    WEIGHTS_DIR,
    DamagedWeightsError,
    load_tiny_vae,
    tiny_vae_record,
)
from semantix.config import CONF_DIR
from semantix.leaderboard import is_quality_result, weights_label
from semantix.methods.semantix import Semantix

TINY_LABEL = "tiny: trained 64 px VAE, random UNet: not a quality result"


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / torch.mean((image - target) ** 2).item())


@pytest.fixture(scope="module")
def content(demo):
    """The demo's astronaut photo at 64 px, (1, 3, 64, 64) in [0, 1]: held out of the VAE's training."""
    sample = next(s for s in demo.values() if s.sample_id.startswith("astronaut"))
    return sample, sample.content.unsqueeze(0)


def test_record_names_the_shipped_file_and_its_training():
    record = tiny_vae_record()
    assert record["weights_file"] == TINY_VAE_WEIGHTS and (WEIGHTS_DIR / TINY_VAE_WEIGHTS).is_file()
    # Measured after 3000 steps: 26.0 dB mean, 23.4 dB worst (astronaut) on the held-out demo photos.
    assert record["demo_content_psnr_db_mean"] >= 25.0 and record["demo_content_psnr_db_min"] > 23.0
    assert record["seed"] and record["steps"] and record["torch"]
    assert {entry["image"] for entry in record["data"]} >= {"skimage.data.camera()",
                                                           "semantix/data/demo/style_pastel_dots.png"}
    assert all(len(entry["sha256"]) == 64 for entry in record["data"])
    # The demo's content photos are held out of training, so their PSNR measures unseen images.
    assert not {entry["image"] for entry in record["data"]} & set(record["held_out"])


def test_trained_vae_reconstructs_a_demo_image_with_latents_at_unit_scale(backbone, content):
    _, image = content
    latents = backbone.encode_images(image)
    # SD1.5's scale after the scaling factor: 1 over the training images by construction, 1.43 on this photo.
    assert 0.6 < float(latents.std()) < 1.6
    reconstruction = psnr(backbone.decode_latents(latents), image)
    # The training record's figure for this held-out photo, measured the same way at training time.
    assert reconstruction == pytest.approx(tiny_vae_record()["demo_psnr_db"]["content_astronaut.png"]["psnr_db"],
                                           abs=0.05)
    assert reconstruction > 23.0
    random_vae = build_tiny_random()
    assert psnr(random_vae.decode_latents(random_vae.encode_images(image)), image) < 12.0
    assert float(random_vae.encode_images(image).std()) < 0.1  # the random VAE's latents: far below unit


def test_zero_guidance_semantix_returns_the_content(backbone, content, tmp_path):
    sample, image = content
    method = Semantix(num_steps=8, gamma_ref=0.0, gamma_c=0.0, gamma_reg=0.0, adain_start_step=None)
    method.prepare(backbone, tmp_path / "cache")
    output = method(sample, seed=1).image.unsqueeze(0)  # (3, H, W) -> (1, 3, H, W)
    reconstruction = backbone.decode_latents(backbone.encode_images(image))
    assert psnr(output, image) > 23.0
    # Inversion and sampling retrace the context's latent, so the output is the VAE's reconstruction.
    assert psnr(output, reconstruction) > 40.0

def test_damaged_weights_fail_with_a_clear_error(tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, folder)
    data = bytearray((folder / TINY_VAE_WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (folder / TINY_VAE_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(DamagedWeightsError, match="damaged or was replaced.*train_tiny_vae"):
        load_tiny_vae(build_tiny_random(), folder)


def test_the_configs_name_the_shipped_vae_and_another_one_is_refused():
    from omegaconf import OmegaConf

    shipped = tiny_vae_record()["weights_sha256"]
    for name in ("tiny", "tiny_video"):
        named = str(OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml").vae_sha256)
        assert len(named) >= 12 and shipped.startswith(named), name  # retrained? update the configs
    with pytest.raises(ValueError, match="backbone.vae_sha256=0123456789ab names another tiny VAE"):
        build_tiny(vae_sha256="0123456789ab")


def test_loading_sets_the_scaling_factor_and_labels_the_backbone(backbone):
    record = json.loads((WEIGHTS_DIR / TINY_VAE_RECORD).read_text())
    assert backbone.name == "tiny" and backbone.random_weights  # the UNet stays random
    assert backbone.vae.config.scaling_factor == record["scaling_factor"]
    assert backbone.provenance["vae_weights"]["sha256"] == record["weights_sha256"]
    label = weights_label({"backbone_weights": json.loads(json.dumps(backbone.provenance))})
    assert label == TINY_LABEL and not is_quality_result(label)


def test_tiny_random_keeps_every_weight_random_and_its_label():
    random = build_tiny_random()
    assert random.name == "tiny_random" and random.vae.config.scaling_factor == 0.18215
    assert "vae_weights" not in random.provenance and random.provenance["weights"] == "random (seed 0)"
    assert weights_label({"backbone_weights": random.provenance}) == "RANDOM weights: not a quality result"
