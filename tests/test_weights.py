"""The runtime switches (offline, reachability, device, dtype, configs) and the weights of a job."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from semantix import runtime
from semantix.config import compose_job
from semantix.types import WeightsNotFoundError
from semantix.weights import WeightFile, ensure_job_weights, fetch, job_weights, verify


@pytest.mark.parametrize("variable", runtime.OFFLINE_VARIABLES)
@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("", False)])
def test_offline_reads_either_variable(monkeypatch, variable, value, expected):
    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert runtime.offline() is expected
    if expected:
        assert not runtime.downloads_allowed("https://example.invalid/file")  # no connection attempted


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connecting is refused


def test_unreachable_host_is_asked_once_and_logged_once(monkeypatch, caplog):
    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    runtime.host_reachable.cache_clear()
    url = f"https://127.0.0.1:{_closed_port()}/some/file"
    with caplog.at_level(logging.WARNING, logger="semantix.runtime"):
        assert not runtime.downloads_allowed(url)
        assert not runtime.downloads_allowed(url)
    assert [r.message.count("unreachable") for r in caplog.records] == [1]
    runtime.host_reachable.cache_clear()


def test_reachable_host(monkeypatch):
    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        runtime.host_reachable.cache_clear()
        assert runtime.downloads_allowed(f"http://127.0.0.1:{port}/x")
    runtime.host_reachable.cache_clear()


def test_device_and_dtype():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(None) == runtime.resolve_device("auto")
    assert runtime.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert runtime.resolve_dtype("torch.bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        runtime.resolve_dtype("float64")


def test_config_dir_is_the_checkout_conf():
    folder = runtime.config_dir()
    assert (folder / "config.yaml").is_file() and folder.name == "conf"
    assert folder.parent == Path(runtime.__file__).resolve().parents[1]


# --- the weights of a job ---------------------------------------------------------------------------

IMAGE_STYLE_SD15 = ["metrics=image_style", "backbone=sd15", "method=stylegallery"]


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches of this test."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _hub_cache_file(cache: Path, repo: str, filename: str, content: bytes, commit: str = "c" * 40) -> Path:
    """A file laid out as huggingface_hub caches it: blobs named by the hub's hash, snapshots linking to them."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    blob = folder / "blobs" / hashlib.sha256(content).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    link = folder / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(blob)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return link


def test_list_names_every_file_of_a_job_at_once(empty_caches):
    cfg, _ = compose_job(IMAGE_STYLE_SD15)
    files = job_weights(cfg)
    settings = {file.setting for file in files}
    assert settings == {
        "backbone.pretrained", "metrics.artfid.inception_weights", "metrics.artfid.lpips_weights",
        "metrics.fid.weights", "metrics.lpips.weights", "metrics.cfsd.weights", "metrics.fid_imagenet.weights",
        "metrics.clip_style.weights", "metrics.clip_content.weights", "metrics.gram.weights",
        "method.stylegallery.depth_model", "method.stylegallery.dinov2_weights",
    }
    assert all(file.found is None for file in files)
    names = {file.locations[0].name for file in files}
    assert {"alexnet-owt-7be5be79.pth", "vgg19-dcbb9e9d.pth", "weights-inception-2015-12-05-6726825d.pth",
            "art_inception.pth", "open_clip_model.safetensors", "diffusion_pytorch_model.safetensors"} <= names
    assert job_weights(compose_job(["metrics=tiny", "backbone=tiny"])[0]) == []  # random weights: none


def test_offline_one_error_lists_every_missing_file(empty_caches, monkeypatch):
    monkeypatch.setenv("SEMANTIX_OFFLINE", "1")
    cfg, _ = compose_job(IMAGE_STYLE_SD15)
    with pytest.raises(WeightsNotFoundError) as info:
        ensure_job_weights(cfg)
    message = str(info.value)
    assert message.startswith(f"{len(job_weights(cfg))} weight file(s) of this job are missing:")
    for setting in ("backbone.pretrained", "metrics.gram.weights", "metrics.clip_style.weights",
                    "metrics.fid_imagenet.weights", "method.stylegallery.depth_model"):
        assert f"  - {setting}: " in message
    assert "copy it to " + str(empty_caches / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message


def test_cached_hub_files_are_found_and_verified_by_the_hubs_hash(empty_caches):
    cache = empty_caches / "hf"
    _hub_cache_file(cache, "facebook/dinov2-base", "config.json", b'{"model_type": "dinov2"}')
    weights = _hub_cache_file(cache, "facebook/dinov2-base", "model.safetensors", b"not really weights")
    cfg, _ = compose_job(["method=stylegallery", "method.stylegallery.depth_model=random"])
    files = {file.locations[0].name: file for file in job_weights(cfg)}
    assert set(files) == {"config.json", "model.safetensors"}
    assert files["model.safetensors"].found == weights
    assert verify(files["model.safetensors"])[0] is True
    weights.resolve().write_bytes(b"corrupted")  # the blob no longer has the hash it is named by
    assert verify(files["model.safetensors"])[0] is False


def test_a_file_by_path_is_checked_by_its_key_layout(tmp_path):
    import torchvision

    from semantix.metrics.weights import seeded

    good, bad = tmp_path / "alexnet.pth", tmp_path / "vgg.pth"
    torch.save(seeded(torchvision.models.alexnet).state_dict(), good)
    torch.save({"features.0.weight": torch.zeros(2, 3, 3, 3)}, bad)
    for path, expected in ((good, True), (bad, False)):
        file = WeightFile("metrics.lpips.weights", "AlexNet", (path,), architecture="torchvision.models.alexnet")
        assert verify(file)[0] is expected


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass


def test_fetch_downloads_through_torch_hub_and_checks_the_published_prefix(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    content = b"weights published with their hash prefix"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    (served / f"net-{prefix}.pth").write_bytes(content)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Files(*a, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/net-{prefix}.pth"
        target = tmp_path / "checkpoints" / f"net-{prefix}.pth"
        file = WeightFile("metrics.x.weights", "a net", (target,), url=url, sha256_prefix=prefix)
        assert fetch(file) == target and target.read_bytes() == content
        assert verify(file)[0] is True
        wrong = WeightFile("metrics.x.weights", "a net", (tmp_path / "other.pth",), url=url, sha256_prefix="00000000")
        with pytest.raises(RuntimeError, match="invalid hash value"):
            fetch(wrong)
    finally:
        server.shutdown()


def test_semantix_weights_command_lists_and_fetch_says_what_to_copy_offline(empty_caches):
    env = {**os.environ, "SEMANTIX_OFFLINE": "1", "TORCH_HOME": str(empty_caches / "torch"),
           "HF_HUB_CACHE": str(empty_caches / "hf")}
    command = [sys.executable, "-c", "from semantix.weights.cli import main; main()"]
    listed = subprocess.run([*command, "list", "metrics=image_style", "backbone=sd15"], env=env,
                            capture_output=True, text=True, check=True)
    assert "18 file(s), 18 missing" in listed.stdout  # 9 SD1.5 files + 9 metric settings
    fetched = subprocess.run([*command, "fetch", "metrics=image_style"], env=env, capture_output=True, text=True)
    assert fetched.returncode == 1
    assert "to do    metrics.gram.weights: download https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" \
        in fetched.stdout
    assert "0 fetched, 9 still missing (offline" in fetched.stdout


def test_a_job_stops_before_loading_anything_with_one_error_naming_all_missing_files(empty_caches, monkeypatch):
    from semantix.runner import Runner

    monkeypatch.setenv("SEMANTIX_OFFLINE", "1")
    cfg, labels = compose_job(["metrics=image_style", "backbone=sd15", "method=identity", "dataset.limit=1",
                               f"paths.results_dir={empty_caches / 'results'}"])
    with pytest.raises(WeightsNotFoundError) as info:
        Runner(cfg, labels)
    message = str(info.value)
    assert message.startswith("9 weight file(s)") and "metrics.clip_content.weights" in message
    assert "backbone.pretrained" not in message  # identity uses no backbone: SD1.5 is not needed


# --- identity by content ----------------------------------------------------------------------------


def test_run_identity_is_what_the_weights_are_not_how_they_were_found(empty_caches, monkeypatch):
    import shutil

    from semantix.backbones.sd15 import EXPECTED_FILES
    from semantix.runner import run_directory

    monkeypatch.setenv("XDG_CACHE_HOME", str(empty_caches / "xdg"))
    folder = empty_caches / "sd15"  # the files' content is all the identity reads: nothing is loaded
    for i, (name, *_) in enumerate(EXPECTED_FILES):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f"content {i}".encode())
    copy = shutil.copytree(folder, empty_caches / "elsewhere" / "same-weights")
    for file in folder.rglob("*"):
        if file.is_file():
            _hub_cache_file(empty_caches / "hf", "semantix-tests/sd15", str(file.relative_to(folder)), file.read_bytes())

    def directory(*overrides, method="semantix_20steps", uses_backbone=True):
        cfg, labels = compose_job(["backbone=sd15", f"method={method}", *overrides])
        return run_directory(cfg, labels, method, uses_backbone)

    by_folder, identity = directory(f"backbone.pretrained={folder}")
    assert set(identity["backbone"]["weights"]) == {"backbone.pretrained"}
    assert "pretrained" not in identity["backbone"] and "local_files_only" not in identity["backbone"]
    assert directory(f"backbone.pretrained={copy}")[0] == by_folder
    assert directory("backbone.pretrained=semantix-tests/sd15", "backbone.local_files_only=true")[0] == by_folder
    assert len(json.loads((empty_caches / "xdg" / "semantix" / "sha256.json").read_text())) > 0  # hashed once

    (copy / "unet" / "config.json").write_text((copy / "unet" / "config.json").read_text() + " ")
    assert directory(f"backbone.pretrained={copy}")[0] != by_folder  # other files: another run
    # A method that uses no backbone: its run does not depend on the backbone's weights at all.
    no_backbone = directory(f"backbone.pretrained={empty_caches / 'absent'}", method="identity", uses_backbone=False)
    assert "weights" not in no_backbone[1]["backbone"]
    assert no_backbone[0] == directory(f"backbone.pretrained={folder}", method="identity", uses_backbone=False)[0]


@pytest.mark.parametrize(("configs", "overrides", "expected"), [
    ({"ssim_grey": {"name": "ssim_grey"}, "fid": {"name": "fid", "weights": "torch-fidelity"}}, [], (False, False)),
    ({"fid": {"name": "fid", "weights": "random"}}, [], (True, False)),
    ({"artfid": {"name": "artfid", "inception_weights": "art", "lpips_weights": "random"}}, [], (True, False)),
    ({"clip_style": {"name": "clip_style", "weights": "/m/clip.pt"}}, ["metrics.clip_style.weights=/m/clip.pt"],
     (False, True)),
    ({"ssim_grey": {"name": "ssim_grey"}}, ["method=identity", "dataset.limit=2"], (False, False)),
])
def test_leaderboard_flags_random_or_overridden_metric_weights(tmp_path, configs, overrides, expected):
    from semantix.leaderboard import metric_weights_flags, summarise
    from semantix.store import RunSummary

    run = RunSummary(tmp_path, {"overrides": overrides}, {name: {"config": c} for name, c in configs.items()},
                     [], {}, {})
    assert metric_weights_flags(run) == expected
    row = summarise(run)
    assert (row["random_metric_weights"], row["metric_weights_overridden"]) == expected


def test_list_follows_the_checkpoint_format(tmp_path):
    single, _ = compose_job(["backbone=sd15", "method=semantix", f"backbone.pretrained={tmp_path / 'sd.safetensors'}"])
    files = [f for f in job_weights(single) if f.setting.startswith("backbone.")]
    assert [f.locations[0] for f in files if f.setting == "backbone.pretrained"] == [tmp_path / "sd.safetensors"]
    configs = {f.hub_file for f in files if f.setting == "backbone.single_file_config"}
    assert "unet/config.json" in configs and not any(name.endswith(".safetensors") for name in configs)
    fp16, _ = compose_job(["backbone=sd15", "method=semantix", "backbone.variant=fp16"])
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in {f.hub_file for f in job_weights(fp16)}


def test_online_missing_files_are_downloaded_and_a_failed_download_is_named(tmp_path, monkeypatch):
    import semantix.weights as weights

    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    runtime.host_reachable.cache_clear()
    served = tmp_path / "served"
    served.mkdir()
    (served / "good.pth").write_bytes(b"good weights")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Files(*a, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    good = WeightFile("metrics.a.weights", "a", (tmp_path / "cache" / "good.pth",), url=f"{base}/good.pth")
    gone = WeightFile("metrics.b.weights", "b", (tmp_path / "cache" / "gone.pth",), url=f"{base}/gone.pth")
    try:
        monkeypatch.setattr(weights, "job_weights", lambda cfg, backbone=True: [good])
        ensure_job_weights({})
        assert good.found is not None and good.found.read_bytes() == b"good weights"
        monkeypatch.setattr(weights, "job_weights", lambda cfg, backbone=True: [good, gone])
        with pytest.raises(WeightsNotFoundError, match=r"^1 weight file\(s\) of this job are missing:") as info:
            ensure_job_weights({})
        assert "metrics.b.weights" in str(info.value) and "download failed: HTTPError" in str(info.value)
    finally:
        server.shutdown()
        runtime.host_reachable.cache_clear()


def test_pytorch_fid_inception_by_name(empty_caches):
    from semantix.metrics.fid import FID, PYTORCH_FID_INCEPTION_FILE, random_inception
    from semantix.metrics.weights import seeded

    # pytorch-fid's file name, where pytorch-fid downloads it; random values in the real layout.
    path = empty_caches / "torch" / "hub" / "checkpoints" / PYTORCH_FID_INCEPTION_FILE
    path.parent.mkdir(parents=True)
    torch.save(seeded(lambda: random_inception(2048), seed=3).state_dict(), path)
    for weights in ("pytorch-fid", "torch-fidelity"):  # the same published file under either name
        assert FID(weights=weights, feature=64, device="cpu").inception_kind == "standard"
    cfg, _ = compose_job(["metrics=image_style", "metrics.fid_imagenet.weights=pytorch-fid"])
    (file,) = [f for f in job_weights(cfg) if f.setting == "metrics.fid_imagenet.weights"]
    assert file.found == path
    assert verify(file)[0] is False  # random values: not the published file's sha256 prefix 6726825d


@pytest.mark.parametrize(("row", "caveat"), [
    ({"weights": "sd15", "random_metric_weights": False, "metric_weights_overridden": False}, None),
    ({"weights": "sd15", "random_metric_weights": True, "metric_weights_overridden": False}, "RANDOM metric weights"),
    ({"weights": "sd15", "random_metric_weights": False, "metric_weights_overridden": True},
     "metric weights overridden"),
    ({"weights": "sd15", "random_metric_weights": float("nan")}, None),  # aggregated before the column existed
])
def test_report_marks_runs_scored_with_random_or_overridden_metric_weights(row, caveat):
    from semantix.report.runs import ReportRun

    assert ReportRun(summary=None, row=row, params={}, slug="s").caveat == caveat
