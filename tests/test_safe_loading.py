"""Untrusted weights files are never unpickled (issue 17).

At every place the harness reads a weights file (metrics, backbones, methods' auxiliary models, the
inversion cache) a pickle that would run code when unpickled is planted; loading must refuse it with
a clear error naming the setting and the file, and the code must not have run (no marker file).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
from pathlib import Path

import pytest
import torch

from semantix.checkpoints import UnsafeCheckpointError, load_state_dict_file, refusing_pickled_code


class Planted:
    """Unpickling this creates the file `marker`: what a crafted checkpoint could do (or worse)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "CODE_RAN"


def plant(path: Path, marker: Path, legacy: bool = False) -> Path:
    """Write a checkpoint whose unpickling would create `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": Planted(marker), "conv.weight": torch.zeros(1)}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


def refused(marker: Path, call, key: str) -> UnsafeCheckpointError:
    with pytest.raises(UnsafeCheckpointError) as info:
        call()
    message = str(info.value)
    assert key in message and "refused" in message and "arbitrary code" in message, message
    assert "weights_only=False" not in message  # torch's advice to load it anyway is not passed on
    assert not marker.exists(), "the planted pickle ran"
    return info.value


# -- the loader itself ------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("name", ["w.pth", "w.bin", "w.safetensors"])
def test_load_state_dict_file_refuses_pickled_code(tmp_path, marker, name, legacy):
    path = plant(tmp_path / name, marker, legacy=legacy)
    if name.endswith(".safetensors"):  # a pickle named .safetensors is not read as a pickle at all
        with pytest.raises(ValueError, match="not a readable safetensors"):
            load_state_dict_file(path, "some.key")
        assert not marker.exists()
    else:
        refused(marker, lambda: load_state_dict_file(path, "some.key"), "some.key")


def test_load_state_dict_file_reads_tensors_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    state = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    torch.save(state, tmp_path / "s.pth")
    save_file(state, tmp_path / "s.safetensors")
    save_file(state, tmp_path / "s_without_suffix")
    for name in ("s.pth", "s.safetensors", "s_without_suffix"):
        loaded = load_state_dict_file(tmp_path / name, "k")
        assert set(loaded) == {"a", "b"} and torch.equal(loaded["b"], state["b"])
    (tmp_path / "junk").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk"):
        load_state_dict_file(tmp_path / "junk", "k")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_state_dict_file(tmp_path / "empty", "k")


def test_wrapped_refusals_of_libraries_become_the_same_clear_error(marker):
    def library_call():
        try:
            pickle.loads(b"")  # any failure, then a refusal raised while handling it, then a wrapper
        except Exception:  # noqa: BLE001
            try:
                raise pickle.UnpicklingError("Weights only load failed ... Unsupported global: GLOBAL builtins.open")
            except pickle.UnpicklingError as e:
                raise OSError("Unable to load weights from checkpoint file") from e

    def call():
        with refusing_pickled_code("backbone.pretrained", "/models/x"):
            library_call()

    error = refused(marker, call, "backbone.pretrained")
    assert "builtins.open" in str(error)
    with pytest.raises(KeyError), refusing_pickled_code("k", "s"):  # other errors pass unchanged
        raise KeyError("x")


# -- metrics ------------------------------------------------------------------------------------------
@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def test_fid_inception_from_the_torch_hub_folder(empty_caches, marker):
    from semantix.metrics.fid import FID, INCEPTION_FILE

    plant(empty_caches / "torch" / "hub" / "checkpoints" / INCEPTION_FILE, marker)
    refused(marker, lambda: FID(device="cpu", feature=64), "weights: refused")


def test_fid_and_artfid_inception_by_path(tmp_path, marker):
    from semantix.metrics.fid import FID, ArtFID

    path = plant(tmp_path / "inception.pth", marker)
    refused(marker, lambda: FID(weights=str(path), device="cpu", feature=64), "weights: refused")
    refused(marker, lambda: ArtFID(inception_weights=str(path), lpips_weights="random", device="cpu"),
            "inception_weights: refused")


def test_artfid_art_inception_from_its_download_folder(empty_caches, marker):
    from semantix.metrics.fid import ART_INCEPTION_FILE, ArtFID

    plant(empty_caches / "tmp" / "art_fid" / ART_INCEPTION_FILE, marker)
    refused(marker, lambda: ArtFID(inception_weights="art", lpips_weights="random", device="cpu"),
            "inception_weights: refused")


def test_fid_inception_loaded_from_a_real_state_dict_still_works(tmp_path):
    from semantix.metrics.fid import FID, random_inception
    from semantix.metrics.weights import seeded
    from semantix.types import Sample

    path = tmp_path / "inception.pth"
    network = seeded(lambda: random_inception(2048), seed=3)
    torch.save(network.state_dict(), path)
    metric = FID(weights=str(path), device="cpu", feature=64)
    loaded = metric.frechet.inception.network()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), network.state_dict().values(),
                                                    strict=True))
    image = torch.rand(3, 64, 64)
    metric.update(image, Sample("s", image, (image,)))


def test_lpips_trunk(tmp_path, marker):
    from semantix.metrics.perceptual import shared_lpips

    path = plant(tmp_path / "alexnet.pth", marker)
    refused(marker, lambda: shared_lpips("alex", str(path), "cpu", "metrics.lpips.weights"), "metrics.lpips.weights")


def test_vgg19_trunk(tmp_path, marker):
    from semantix.metrics.vgg import load_vgg19_features

    path = plant(tmp_path / "vgg19.pth", marker)
    refused(marker, lambda: load_vgg19_features(str(path), "metrics.gram.weights"), "metrics.gram.weights")


def test_raft(tmp_path, marker):
    from semantix.metrics.temporal import load_raft_large

    path = plant(tmp_path / "raft.pth", marker)
    refused(marker, lambda: load_raft_large(str(path), "metrics.warping_error.weights"),
            "metrics.warping_error.weights")


def test_clip_by_path_and_by_pretrained_tag(tmp_path, marker, monkeypatch):
    from semantix.metrics import clip

    path = plant(tmp_path / "clip.bin", marker)
    refused(marker, lambda: clip.build_embedder("RN50", str(path), "cpu", "metrics.clip_style.weights"),
            "metrics.clip_style.weights")
    # A pretrained tag reads the file open_clip would download, found in the Hugging Face cache.
    monkeypatch.setattr(clip, "_tag_source", lambda *args: str(path))
    refused(marker, lambda: clip.build_embedder("RN50", "openai", "cpu", "metrics.clip_style.weights"),
            "metrics.clip_style.weights")


def _transformers_folder(model, folder: Path, marker: Path) -> Path:
    """`save_pretrained` of a small model, its weights replaced by a planted pytorch_model.bin."""
    model.save_pretrained(folder)
    for weights in folder.glob("*.safetensors*"):
        weights.unlink()
    plant(folder / "pytorch_model.bin", marker)
    return folder


def test_dino(tmp_path, marker):
    from transformers import ViTConfig, ViTModel

    from semantix.metrics.dino import load_dino

    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=8)
    folder = _transformers_folder(ViTModel(config, add_pooling_layer=False), tmp_path / "dino", marker)
    refused(marker, lambda: load_dino(str(folder), "metrics.dino_structure.weights"), "metrics.dino_structure.weights")


def test_stylegallery_dinov2_and_depth_model(tmp_path, marker):
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        Dinov2Model,
        DPTImageProcessor,
    )

    from semantix.methods.stylegallery import _load_depth_model, _load_dinov2

    small = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 37,
             "image_size": 28, "patch_size": 14}
    folder = _transformers_folder(Dinov2Model(Dinov2Config(**small)), tmp_path / "dinov2", marker)
    refused(marker, lambda: _load_dinov2(str(folder)), "dinov2_weights")

    backbone = Dinov2Config(**small, out_indices=[1, 2, 3, 4]).to_dict()
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 8, 8, 8],
                                 fusion_hidden_size=8, head_hidden_size=8, patch_size=14)
    depth = tmp_path / "depth"
    _transformers_folder(DepthAnythingForDepthEstimation(config), depth, marker)
    DPTImageProcessor().save_pretrained(depth)
    refused(marker, lambda: _load_depth_model(str(depth), "cpu"), "depth_model")


# -- backbones ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from semantix.backbones import build_tiny, save_as_diffusers_folder

    return save_as_diffusers_folder(build_tiny(), tmp_path_factory.mktemp("sd") / "sd")


@pytest.mark.parametrize("component,planted_name", [
    ("unet", "diffusion_pytorch_model.bin"),
    ("vae", "diffusion_pytorch_model.bin"),
    ("text_encoder", "pytorch_model.bin"),
])
def test_sd15_components(sd_folder, tmp_path, marker, component, planted_name):
    import shutil

    from semantix.backbones import load_sd15

    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    for weights in (folder / component).glob("*.safetensors"):
        weights.unlink()
    plant(folder / component / planted_name, marker)
    refused(marker, lambda: load_sd15(pretrained=str(folder), resolution=64, device="cpu", dtype="float32"),
            "backbone.pretrained")


def test_animatediff_motion_adapter(sd_folder, tmp_path, marker):
    from diffusers import MotionAdapter

    from semantix.backbones import build_tiny, load_animatediff
    from semantix.backbones.tiny import motion_adapter_config

    adapter = tmp_path / "adapter"
    MotionAdapter(**motion_adapter_config(build_tiny().unet.config)).save_pretrained(adapter)
    for weights in adapter.glob("*.safetensors"):
        weights.unlink()
    plant(adapter / "diffusion_pytorch_model.bin", marker)
    refused(marker, lambda: load_animatediff(str(sd_folder), str(adapter), resolution=64, device="cpu"),
            "backbone.motion_adapter")


# -- the inversion cache ---------------------------------------------------------------------------------
def test_cache_payload_with_a_matching_sidecar_is_refused_and_recomputed(tmp_path, marker):
    from semantix.diffusion.cache import TensorCache

    cache = TensorCache(tmp_path / "cache")
    key = {"kind": "inversion", "image_sha256": "0" * 64}
    cache.save(key, {"latents": torch.ones(2)})
    payload_path, meta_path = cache._paths(key)
    plant(payload_path, marker)  # someone with write access to a shared cache swaps the payload ...
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(payload_path.read_bytes()).hexdigest()  # ... and its checksum
    meta_path.write_text(json.dumps(meta))
    value = cache.get_or_compute(key, lambda: {"latents": torch.zeros(2)})
    assert torch.equal(value["latents"], torch.zeros(2)) and cache.corrupt == 1
    assert not marker.exists()
