"""On-disk cache of expensive intermediates (DDPM inversions and their captured features).

An entry is addressed by the hash of a key dict that must name everything that changes the
result: backbone id, revision and weights, image sha256, resolution, inversion settings, prompt,
seed, dtype. Each entry is a `torch.save` payload plus a JSON sidecar with the key and the payload's
sha256; an entry whose file is missing, truncated, altered or unreadable is recomputed and
rewritten, never trusted, and payloads are read with `torch.load(weights_only=True)`: a planted
pickle is refused, never executed. Writes are atomic, so concurrent jobs at worst compute an entry twice.

A cache that cannot be written (read-only, full, no permission) is not an error: the first failed
write logs one warning naming the cache folder, and from then on this process computes without
caching into that folder (entries already there are still read). The temporary files of writes
killed mid-way are removed the first time a process opens the cache folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from semantix.io import atomic_write_bytes, atomic_write_json, remove_stale_temporaries, stable_hash

log = logging.getLogger(__name__)

# Cache folders of this process: swept of stale temporary files once, and those found unwritable
# (warned about once, then read only).
_swept_roots: set[str] = set()
_unwritable_roots: set[str] = set()

# Storage dtypes a method may choose for the features it caches (`feature_dtype` in its config).
FEATURE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_feature_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `feature_dtype` config value; a clear error for anything else."""
    if name not in FEATURE_DTYPES:
        raise ValueError(f"feature_dtype must be one of {sorted(FEATURE_DTYPES)}, got {name!r}")
    return FEATURE_DTYPES[name]


class TensorCache:
    def __init__(self, root: Path | str | None, enabled: bool = True):
        self.root = Path(root) if root is not None else None
        self.enabled = enabled and root is not None
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.write_failures = 0
        if self.enabled and str(self.root) not in _swept_roots:
            _swept_roots.add(str(self.root))
            if self.root.is_dir():
                remove_stale_temporaries(self.root)

    @property
    def writable(self) -> bool:
        """False once a write into this cache folder failed in this process (it is then read only)."""
        return str(self.root) not in _unwritable_roots

    def _paths(self, key: dict) -> tuple[Path, Path]:
        digest = stable_hash(key, length=40)
        folder = self.root / key.get("kind", "entries") / digest[:2]
        return folder / f"{digest}.pt", folder / f"{digest}.json"

    def load(self, key: dict) -> Any | None:
        """The cached payload, or None when absent or not trustworthy (counted in `corrupt`)."""
        if not self.enabled:
            return None
        payload_path, meta_path = self._paths(key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = payload_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise ValueError("payload sha256 does not match its sidecar")
            if meta["key"] != json.loads(json.dumps(key, sort_keys=True, default=str)):
                raise ValueError("sidecar key differs from the requested key")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means: recompute
            self.corrupt += 1
            log.warning("cache entry %s is unusable (%s); recomputing it", payload_path, e)
            return None

    def save(self, key: dict, payload: Any) -> None:
        """Store an entry; a write that fails (full, read-only, no permission) turns writing off (see
        the module docstring) instead of failing the caller, who has the result already."""
        if not self.enabled or not self.writable:
            return
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
        payload_path, meta_path = self._paths(key)
        try:
            atomic_write_bytes(payload_path, data)
            # The sidecar goes last: an entry counts only once its payload is complete.
            atomic_write_json(meta_path, {"key": key, "sha256": hashlib.sha256(data).hexdigest(),
                                          "bytes": len(data)})
        except OSError as e:
            self.write_failures += 1
            if not meta_path.is_file():  # a payload without its sidecar is never read: free its space
                try:
                    payload_path.unlink(missing_ok=True)
                except OSError:
                    pass
            if self.writable:
                _unwritable_roots.add(str(self.root))
                log.warning("the cache folder %s cannot be written (%s: %s); continuing without caching into it "
                            "(results are unchanged, only not reused; entries already there are still read). "
                            "Free space or set paths.cache_dir (or SEMANTIX_CACHE) to a writable folder.",
                            self.root, type(e).__name__, e.strerror or e)

    def get_or_compute(self, key: dict, compute: Callable[[], Any]) -> Any:
        payload = self.load(key)
        if payload is not None:
            self.hits += 1
            return payload
        self.misses += 1
        payload = compute()
        self.save(key, payload)
        return payload
