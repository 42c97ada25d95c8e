"""Reading weights files that a user, a download folder or a cache supplies, without running them.

A PyTorch checkpoint is a pickle, and unpickling an arbitrary pickle can run arbitrary code. Every
weights file the harness reads goes through `load_state_dict_file` (safetensors, or `torch.load`
with `weights_only=True`, which only rebuilds tensors and plain containers), and the libraries that
read files themselves (transformers, diffusers, open_clip: all with `weights_only=True`) are called
inside `refusing_pickled_code`, which turns their refusal into the same clear error. Nothing is ever
loaded with `weights_only=False`: a file that needs it is refused, and the message says so.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


class UnsafeCheckpointError(ValueError):
    """A weights file holds Python objects beyond tensors: refused, never unpickled."""


def _refusal(config_key: str, source: object, error: BaseException) -> UnsafeCheckpointError:
    reason = str(error).strip().splitlines()
    # torch's message starts with advice to load the file with weights_only=False; keep its last line
    # (which names the offending global) and leave the advice out.
    detail = next((line.strip() for line in reversed(reason) if "Unsupported" in line or "GLOBAL" in line),
                  reason[-1].strip() if reason else type(error).__name__)
    return UnsafeCheckpointError(
        f"{config_key}: refused to load {source}: it is not a plain checkpoint of tensors, and reading it "
        f"would mean unpickling Python objects, which can run arbitrary code ({detail}). semantix never "
        "unpickles such files. Use the original weights (a state dict of tensors, or a .safetensors file) "
        "from a source you trust."
    )


def _is_safetensors(path: Path) -> bool:
    """A .safetensors file, or one whose header says so (8-byte length, then a JSON object)."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def load_state_dict_file(path: str | Path, config_key: str) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, on the CPU, read without running any code it may hold.

    `.safetensors` files are read with safetensors; anything else with `torch.load(weights_only=True)`.
    A file holding other Python objects raises `UnsafeCheckpointError` (naming `config_key`, the file
    and what it holds); a file that is not a checkpoint at all raises ValueError.
    """
    path = Path(path)
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{config_key}: {path} is not a readable safetensors file ({e})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(config_key, path, e) from None
    except Exception as e:  # noqa: BLE001 - truncated, not a checkpoint, ...
        raise ValueError(f"{config_key}: {path} cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                         f"{e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{config_key}: {path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


@contextmanager
def refusing_pickled_code(config_key: str, source: object) -> Iterator[None]:
    """Around a library call that reads weights files itself (with `weights_only=True`): its refusal
    to unpickle a file becomes `UnsafeCheckpointError` naming `config_key` and `source`."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is (or wraps) a refusal to unpickle
        refused = _unpickling_error(e)
        if refused is None:
            raise
        raise _refusal(config_key, source, refused) from None


def _unpickling_error(error: BaseException) -> pickle.UnpicklingError | None:
    """`error` itself or the error it was raised from or while handling (libraries wrap torch's
    refusal, e.g. diffusers in an OSError), when that is an `UnpicklingError`."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, pickle.UnpicklingError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
