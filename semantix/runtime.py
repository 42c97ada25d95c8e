"""Where the harness runs and what it may fetch: the offline switch, the device, the dtype, the configs.

Backbones, metrics and methods all ask this module, so one setting means the same everywhere:

- `offline()`: downloads are off when ``SEMANTIX_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1 / true /
  yes / on (``HF_HUB_OFFLINE`` also stops huggingface_hub itself; ``SEMANTIX_OFFLINE`` stops every
  library the harness drives: huggingface_hub, torch.hub, open_clip, torch-fidelity).
- `downloads_allowed(url)` (`hub_downloads_allowed()` for the Hugging Face hub): not offline, and the host answers within `HOST_TIMEOUT_S` (checked once per
  host per process; an unreachable host is logged once and then treated as offline, so a loader never
  waits for a library's own retries).
- `resolve_device` / `resolve_dtype` / `DTYPES`: "auto" means cuda when available (float16 there),
  else cpu (float32).
- `config_dir()`: the folder of Hydra configs.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("SEMANTIX_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}

# Seconds to wait for a host before taking it as unreachable (libraries' own retries take minutes).
HOST_TIMEOUT_S = 5.0


def offline() -> bool:
    """True when nothing may be downloaded: SEMANTIX_OFFLINE or HF_HUB_OFFLINE is 1/true/yes/on."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_VARIABLES)


@functools.cache
def host_reachable(host: str, port: int = 443) -> bool:
    """Whether a TCP connection to `host` opens within HOST_TIMEOUT_S; asked once per host per process,
    and a failure is logged once (the loaders that follow treat the host as offline, silently)."""
    try:
        with socket.create_connection((host, port), timeout=HOST_TIMEOUT_S):
            return True
    except OSError as e:
        log.warning("%s is unreachable (%s within %.0f s): downloads from it are off for this run; files "
                    "already cached are used", host, type(e).__name__, HOST_TIMEOUT_S)
        return False


def downloads_allowed(url: str) -> bool:
    """Whether a missing file may be fetched from `url` (any URL on its host) now."""
    if offline():
        return False
    parts = urlsplit(url)
    return host_reachable(parts.hostname or url, parts.port or 443)


def hub_downloads_allowed() -> bool:
    """`downloads_allowed` for the Hugging Face hub (its endpoint: HF_ENDPOINT or huggingface_hub's default)."""
    from huggingface_hub import constants

    return downloads_allowed(constants.ENDPOINT)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`"auto"` (or None): cuda if available, else cpu; anything else goes to `torch.device`."""
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# Accepted dtype names -> the torch dtype's name (torch is imported only when a dtype is resolved, so
# that `semantix.config` and the CLI can import this module cheaply).
DTYPES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """`"auto"`: float16 on CUDA, float32 elsewhere; else a name of `DTYPES` (a "torch." prefix is allowed)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return getattr(torch, DTYPES[dtype.removeprefix("torch.")])
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: 'auto', {', '.join(map(repr, DTYPES))}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def config_dir() -> Path:
    """The folder holding `config.yaml` and the config groups: THE place every entry point (CLI,
    `compose_job`, tests, `semantix-weights`) gets it from.

    A checkout (editable install or running from the repository) uses the repository's `conf/`, the
    source of truth; an installed wheel uses the copy shipped inside the package (`semantix/conf`,
    built from the same `conf/` by pyproject.toml's package-dir mapping).
    """
    repository = Path(__file__).resolve().parents[1]
    checkout = repository / "conf"
    if (repository / "pyproject.toml").is_file() and (checkout / "config.yaml").is_file():
        return checkout
    packaged = Path(str(resources.files("semantix") / "conf"))
    if (packaged / "config.yaml").is_file():
        return packaged
    raise FileNotFoundError(
        f"semantix configs not found: neither {checkout} (a checkout) nor {packaged} (an installed package) "
        "holds config.yaml; reinstall semantix (pip install .) or run from a checkout."
    )
