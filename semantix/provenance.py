"""What a result depends on beyond its config: code revision, library versions, device, time."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import socket
import subprocess
from functools import cache
from pathlib import Path

import torch

PACKAGES = ("semantix", "torch", "torchvision", "diffusers", "transformers", "torchmetrics",
            "open_clip_torch", "lpips", "hydra-core", "numpy", "scikit-image", "pillow")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@cache
def git_state() -> dict:
    """Commit of the semantix checkout and whether it has uncommitted changes (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


@cache
def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def device_info() -> dict:
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpu_count": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info

