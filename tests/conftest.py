"""Shared fixtures: small datasets made on the fly, config composition, isolated caches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semantix.config import CONF_DIR, compose_config  # noqa: F401 - CONF_DIR: test modules import it from here

REPO = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """Caches in the test session's temporary folder; no downloads; wandb offline and credential-free."""
    monkeypatch.setenv("SEMANTIX_CACHE", str(tmp_path_factory.getbasetemp() / "semantix-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    # No developer's `wandb login` (netrc entry, settings file) may turn a test's logger=wandb online.
    wandb_home = tmp_path_factory.getbasetemp() / "wandb-home"
    monkeypatch.setenv("NETRC", str(wandb_home / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(wandb_home / "config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def write_png(path: Path, size=(96, 80), seed=0, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    # smooth gradients plus noise: structure for SSIM, distinct colours per seed for histograms
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(0, 1, 3)
    array = np.stack([(base[c] + (c + 1) * 0.3 * xx + 0.2 * yy) % 1.0 for c in range(3)], axis=-1)
    array = np.clip(array + rng.normal(0, 0.05, array.shape), 0, 1)
    image = Image.fromarray((array * 255).astype(np.uint8), mode="RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path)
    return path


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    """A manifest of 4 good samples (3 contents x 2 styles, one multi-reference row)."""
    from semantix.data.manifest import write_manifest

    root = tmp_path / "data"
    for i in range(3):
        write_png(root / f"content_{i}.png", seed=i)
    for j in range(2):
        write_png(root / f"style_{j}.png", size=(72, 72), seed=100 + j)
    rows = [
        {"sample_id": "content_0__style_0", "content": "content_0.png", "reference": "style_0.png"},
        {"sample_id": "content_1__style_1", "content": "content_1.png", "reference": "style_1.png"},
        {"sample_id": "content_2__style_0", "content": "content_2.png", "reference": "style_0.png"},
        {"sample_id": "content_0__multi", "content": "content_0.png", "reference": "style_0.png;style_1.png"},
    ]
    return write_manifest(rows, root / "manifest.csv")


@pytest.fixture(scope="module")
def backbone():
    """The tiny backbone, trained VAE and random UNet (built once per test module)."""
    from semantix.backbones import build_tiny

    return build_tiny()


@pytest.fixture(scope="module")
def demo():
    """The embedded demo set's samples at 64 px, by sample id."""
    from semantix.data import demo_manifest_path
    from semantix.data.manifest import Manifest

    manifest = Manifest.load(demo_manifest_path())
    return {sid: manifest.load_sample(sid, 64) for sid in manifest.sample_ids}


@pytest.fixture
def fresh_models():
    """Tests of weights resolution must build their model, not reuse one that another test left in the
    process-wide cache under the same key (`semantix.metrics.weights.shared_model`)."""
    from semantix.metrics.weights import clear_shared_models

    clear_shared_models()
    yield
    clear_shared_models()


def compose(overrides: list[str]):
    """The app's config as `semantix-bench <overrides>` composes it, Hydra's node included."""
    return compose_config(overrides)


def run_cli(args: list[str], cwd: Path, env_extra: dict | None = None, timeout: int = 600):
    """Run `semantix-bench` (or another console script) as a user would."""
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), **(env_extra or {})}
    script = Path(sys.executable).parent / args[0]
    return subprocess.run([str(script), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
