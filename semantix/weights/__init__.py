"""Every weight file a job needs, where each is looked for, and one policy for getting the missing ones.

`job_weights(cfg)` reads a composed job config (backbone, metrics, methods) and returns one
`WeightFile` per file: the setting that selects it, where it is looked for (the owning library's
cache, or the path given), whether it is there, and how it is fetched. The published files and the
config values that name them are in `known.yaml` (package data).

`ensure_job_weights(cfg)` is the download policy, applied once per job before anything loads: online,
each missing file is fetched through its owning library (huggingface_hub into the Hugging Face cache,
torch.hub into torch hub's checkpoints folder) with a log line; offline (`semantix.runtime.offline()`)
or with the host unreachable, one `WeightsNotFoundError` lists every missing file of the job at once,
with what to copy where. `semantix-weights` (`semantix.weights.cli`) lists, verifies and fetches the same files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from semantix.io import atomic_write_bytes
from semantix.runtime import downloads_allowed, hub_downloads_allowed
from semantix.types import WeightsNotFoundError

log = logging.getLogger(__name__)

RANDOM = "random"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
DEFAULT_HUB_FILES: tuple[tuple[str, ...], ...] = (("config.json",), ("model.safetensors", "pytorch_model.bin"))
WEIGHT_KEYS = ("weights", "inception_weights", "lpips_weights")  # metric settings that name weights


@functools.cache
def known() -> dict[str, Any]:
    """The registry of published files (`known.yaml`)."""
    return yaml.safe_load((Path(__file__).parent / "known.yaml").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class WeightFile:
    """One file a job needs."""

    setting: str                 # the config key that selects it, e.g. "metrics.lpips.weights"
    what: str                    # what it is, for people
    locations: tuple[Path, ...]  # where it is looked for, in order (alternatives)
    names: tuple[str, ...] = ()  # each location's name inside its folder or repository ("unet/config.json")
    url: str | None = None       # fetched with torch.hub into locations[0]
    hub_repo: str | None = None  # fetched with huggingface_hub: (hub_repo, hub_file, revision)
    hub_file: str | None = None
    revision: str | None = None
    sha256_prefix: str | None = None  # published with the file (its name carries it)
    architecture: str | None = None   # torchvision builder whose parameter names the file must have

    @property
    def found(self) -> Path | None:
        return next((path for path in self.locations if path.is_file()), None)

    @property
    def source(self) -> str:
        if self.hub_repo:
            return f"{self.hub_repo}/{self.hub_file}" + (f"@{self.revision}" if self.revision else "")
        return self.url or "a path you set"


def _hub_cache_path(repo: str, filename: str, revision: str | None) -> Path:
    """Where huggingface_hub keeps (or would keep) `filename` of `repo`."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    return folder / "snapshots" / (revision or "<commit>") / filename


def _hub_files(setting: str, what: str, repo: str, files: tuple[tuple[str, ...], ...],
               revision: str | None = None) -> Iterator[WeightFile]:
    for alternatives in files:
        locations = tuple(_hub_cache_path(repo, name, revision) for name in alternatives)
        found = next((i for i, path in enumerate(locations) if path.is_file()), 0)
        yield WeightFile(setting, what, locations[found:] + locations[:found],
                         alternatives[found:] + alternatives[:found], hub_repo=repo,
                         hub_file=alternatives[found], revision=revision)


def _local_files(setting: str, what: str, folder: Path, files: tuple[tuple[str, ...], ...]) -> Iterator[WeightFile]:
    for alternatives in files:
        yield WeightFile(setting, what, tuple(folder / name for name in alternatives), tuple(alternatives))


def _torch_hub_file(setting: str, name: str) -> WeightFile:
    import torch

    entry = known()["files"][name]
    if "hub" in entry:
        (filename,) = entry["hub_files"]
        (file,) = _hub_files(setting, entry["what"], entry["hub"], ((filename,),))
        extra = (Path(torch.hub.get_dir()) / "checkpoints" / filename,)  # where a copy may also sit
        return WeightFile(**{**file.__dict__, "locations": file.locations + extra, "names": file.names + (filename,)})
    names = [entry["url"].rsplit("/", 1)[-1]]
    names += [known()["files"][other]["url"].rsplit("/", 1)[-1] for other in entry.get("same_file_as", [])]
    return WeightFile(setting, entry["what"], tuple(Path(torch.hub.get_dir()) / "checkpoints" / n for n in names),
                      tuple(names), url=entry["url"], sha256_prefix=entry.get("sha256_prefix"),
                      architecture=entry.get("architecture"))


def _value_files(setting: str, what: str, value: str) -> Iterator[WeightFile]:
    """A weights value that is a path or a hub id (metrics' and methods' generic rule)."""
    path = Path(value).expanduser()
    if path.is_dir():
        yield from _local_files(setting, what, path, DEFAULT_HUB_FILES)
    elif path.is_file() or not HUB_ID.fullmatch(value):
        yield WeightFile(setting, what, (path,))
    else:
        files = tuple(tuple(alts) for alts in known()["hub_repos"].get(value, DEFAULT_HUB_FILES))
        yield from _hub_files(setting, what, value, files)


def _clip_files(setting: str, model: str, tag: str) -> Iterator[WeightFile] | None:
    import open_clip

    from semantix.metrics.clip import tag_hub_files

    tag_cfg = open_clip.get_pretrained_cfg(model, tag)
    if not tag_cfg:
        return None
    (repo, _), *_ = hub_files = tag_hub_files(tag_cfg)
    return _hub_files(setting, f"open_clip {model} {tag}", repo, (tuple(name for _, name in hub_files),))


def metric_weights(label: str, config: Mapping[str, Any]) -> Iterator[WeightFile]:
    name = config.get("name", label)
    for key in WEIGHT_KEYS:
        value = config.get(key)
        if not isinstance(value, str) or value == RANDOM:
            continue
        setting = f"metrics.{label}.{key}"
        named = known()["named"].get(f"{name}.{key}", {})
        if value in named:
            yield _torch_hub_file(setting, named[value])
        elif name.startswith("clip_") and (clip := _clip_files(setting, config.get("model"), value)):
            yield from clip
        else:
            yield from _value_files(setting, f"{name} weights", value)


def method_weights(prefix: str, config: Any) -> Iterator[WeightFile]:
    """The weights a method's settings name, wherever they sit in its config (wrappers nest it)."""
    if not isinstance(config, Mapping):
        return
    for key, value in config.items():
        if key in known()["method_settings"] and isinstance(value, str) and value != RANDOM:
            yield from _value_files(f"{prefix}.{key}", f"{config.get('name', prefix)} {key}", value)
        else:
            yield from method_weights(f"{prefix}.{key}", value)


def backbone_weights(config: Mapping[str, Any]) -> Iterator[WeightFile]:
    from semantix.backbones.animatediff import ADAPTER_FILES
    from semantix.backbones.sd15 import EXPECTED_FILES, expected_files, is_single_file

    name = config.get("name")
    if name not in ("sd15", "animatediff"):
        return  # tiny backbones and random weights: nothing to load
    parts = [("backbone.pretrained", "Stable Diffusion 1.5", config["pretrained"], config.get("revision"),
              expected_files(config.get("variant")))]
    if is_single_file(str(config["pretrained"])):  # its component configs and tokenizer come from elsewhere
        configs = tuple(alts for alts in EXPECTED_FILES if not alts[0].endswith((".safetensors", ".bin")))
        parts = [("backbone.pretrained", "Stable Diffusion 1.5 single file", config["pretrained"], None, ()),
                 ("backbone.single_file_config", "SD1.5 component configs", config["single_file_config"], None,
                  configs)]
    if name == "animatediff" and is_single_file(str(config["motion_adapter"])):  # its config comes from elsewhere
        parts += [("backbone.motion_adapter", "AnimateDiff motion module file", config["motion_adapter"], None, ()),
                  ("backbone.motion_adapter_config", "motion adapter config", config["motion_adapter_config"], None,
                   (("config.json",),))]
    elif name == "animatediff":
        parts.append(("backbone.motion_adapter", "AnimateDiff motion adapter", config["motion_adapter"],
                      config.get("motion_adapter_revision"), ADAPTER_FILES))
    for setting, what, value, revision, files in parts:
        path = Path(str(value)).expanduser()
        if path.is_dir() or path.is_file() or is_single_file(str(value)) or not HUB_ID.fullmatch(str(value)):
            if path.is_file() or is_single_file(str(value)):  # a single-file checkpoint
                yield WeightFile(setting, what, (path,), ("",))
            else:
                yield from _local_files(setting, what, path, files)
        else:
            yield from _hub_files(setting, what, str(value), files, revision)


def job_weights(cfg: Mapping[str, Any], backbone: bool = True) -> list[WeightFile]:
    """Every weight file the composed job `cfg` needs (resolved values), in backbone, metrics, methods
    order; `backbone=False` leaves the backbone's out (a job whose methods use none)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    files = list(backbone_weights(cfg.get("backbone") or {})) if backbone else []
    for label, config in (cfg.get("metrics") or {}).items():
        files += metric_weights(label, config)
    for label, config in (cfg.get("method") or {}).items():
        files += method_weights(f"method.{label}", config)
    unique = {(f.setting, f.locations): f for f in files}  # a file two settings need is listed under each
    return list(unique.values())


def fetch(file: WeightFile) -> Path:
    """Download `file` through its owning library (resumable, with its progress bar); returns its path."""
    if file.hub_repo:
        from huggingface_hub import hf_hub_download

        log.info("downloading %s into the Hugging Face cache (%s)", file.source, file.setting)
        return Path(hf_hub_download(file.hub_repo, file.hub_file, revision=file.revision))
    if file.url:
        import torch

        target = file.locations[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s into %s (%s)", file.url, target.parent, file.setting)
        torch.hub.download_url_to_file(file.url, str(target), hash_prefix=file.sha256_prefix, progress=True)
        return target
    raise WeightsNotFoundError(f"{file.setting}: {file.locations[0]} does not exist (a path: nothing to fetch)")


def how_to_get(file: WeightFile) -> str:
    """What to copy where, for a machine without network."""
    if file.hub_repo:
        command = f"huggingface-cli download {file.hub_repo} {file.hub_file}"
        if file.revision:
            command += f" --revision {file.revision}"
        return f"`{command}` on a machine with network, then copy its Hugging Face cache (HF_HOME) here"
    if file.url:
        return f"download {file.url} and copy it to {file.locations[0]}"
    return f"set {file.setting} to an existing file or folder (or {file.setting}=random)"


def can_download(file: WeightFile) -> bool:
    """Not offline, a source to fetch from, and its host reachable (`semantix.runtime.downloads_allowed`)."""
    if file.hub_repo:
        return hub_downloads_allowed()
    return file.url is not None and downloads_allowed(file.url)


def ensure_job_weights(cfg: Mapping[str, Any], backbone: bool = True) -> None:
    """The download policy (module docstring): fetch what is missing, or one error naming all of it."""
    missing = [file for file in job_weights(cfg, backbone) if file.found is None]
    failed = {file: "cannot be downloaded (SEMANTIX_OFFLINE / HF_HUB_OFFLINE set, the host unreachable, or a path)"
              for file in missing if not can_download(file)}
    if not failed:  # all or nothing: a job that would stop on one file does not download the others first
        for file in missing:
            try:
                fetch(file)
            except Exception as e:  # noqa: BLE001 - gated, removed, connection lost: named with the others
                first_line = (str(e).strip().splitlines() or [""])[0]
                failed[file] = f"download failed: {type(e).__name__}: {first_line}"
    if failed:
        lines = "\n".join(f"  - {f.setting}: {f.what}, {f.source}\n      {why}; looked in: {f.locations[0]}\n"
                          f"      fix: {how_to_get(f)}" for f, why in failed.items())
        raise WeightsNotFoundError(
            f"{len(failed)} weight file(s) of this job are missing:\n{lines}\n"
            "`semantix-weights list <overrides>` shows them all; `semantix-weights fetch <overrides>` "
            "downloads them on a machine with network."
        )


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_blob_id(path: Path) -> str:
    """The id git (and so the hub) gives a small file: sha1 of "blob <size>\\0" + content."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify(file: WeightFile) -> tuple[bool | None, str]:
    """Check the found copy of `file` against what is published: (True/False, detail), None when no
    published hash or architecture applies (only its presence and size are known)."""
    path = file.found
    if path is None:
        return False, "missing"
    if file.sha256_prefix:
        digest = sha256(path)
        return digest.startswith(file.sha256_prefix), f"sha256 {digest[:12]}... (published prefix {file.sha256_prefix})"
    if path.is_symlink() and "blobs" in path.resolve().parts:  # a Hugging Face cache file: its blob id
        blob = path.resolve().name
        digest = sha256(path) if len(blob) == 64 else git_blob_id(path)
        return digest == blob, f"{'sha256' if len(blob) == 64 else 'git blob id'} {digest[:12]}... (hub {blob[:12]}...)"
    if file.architecture:
        return _layout_matches(path, file.architecture, file.setting)
    return None, "no published hash for a file given by path; present"


def _layout_matches(path: Path, architecture: str, setting: str) -> tuple[bool, str]:
    """Whether the file's tensor names and shapes are those of `architecture` (built on the meta device)."""
    import importlib

    import torch

    from semantix.checkpoints import load_state_dict_file

    module_name, builder = architecture.rsplit(".", 1)
    with torch.device("meta"):
        model = getattr(importlib.import_module(module_name), builder)()
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = load_state_dict_file(path, setting)
    actual = {name: tuple(t.shape) for name, t in state.items()}
    if actual == expected:
        return True, f"key layout of {architecture} ({len(expected)} tensors)"
    wrong = sorted(set(expected) ^ set(actual)) or [k for k in expected if expected[k] != actual[k]]
    return False, f"not {architecture}'s key layout ({len(wrong)} differ, e.g. {wrong[:3]})"


# -- identity by content -----------------------------------------------------------------------------
# Backbone settings that say how the weights are found, not what they are: a run identity replaces them
# by the weights' content, so a hub id, a copy of its files elsewhere and local_files_only=true all name
# the same run directory.
LOOKUP_SETTINGS = ("pretrained", "revision", "local_files_only", "variant", "single_file_config", "motion_adapter",
                   "motion_adapter_revision", "motion_adapter_config")


def _hash_cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "semantix" / "sha256.json"


def content_sha256(path: Path) -> str:
    """The sha256 of a weight file: a Hugging Face cache blob is named by it (LFS files); any other file
    is hashed once and remembered by resolved path, size and modification time (`_hash_cache_file`)."""
    resolved = path.resolve()
    if "blobs" in resolved.parts and re.fullmatch(r"[0-9a-f]{64}", resolved.name):
        return resolved.name
    stat = resolved.stat()
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _hash_cache_file()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        log.info("hashing %s (once: remembered by path, size and modification time)", resolved)
        cache[key] = sha256(resolved)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_file, json.dumps(cache, indent=0, sort_keys=True).encode())
    return cache[key]


def backbone_identity(backbone_cfg: Mapping[str, Any], uses_backbone: bool) -> dict[str, Any]:
    """The backbone section of a run identity: for SD1.5 and AnimateDiff the lookup settings are
    replaced by `weights` (per setting, a sha256 over its files' names and sha256s), and dropped for
    a method that uses no backbone; other backbones' sections are returned as they are."""
    section = dict(backbone_cfg)
    if section.get("name") not in ("sd15", "animatediff"):
        return section
    section = {key: value for key, value in section.items() if key not in LOOKUP_SETTINGS}
    if uses_backbone:
        listing: dict[str, list[str]] = {}
        for file in backbone_weights(backbone_cfg):
            if file.found is None:
                raise WeightsNotFoundError(f"{file.setting}: {file.locations[0]} is missing (run identity)")
            name = file.names[file.locations.index(file.found)]
            listing.setdefault(file.setting, []).append(f"{name} {content_sha256(file.found)}")
        section["weights"] = {setting: hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
                              for setting, lines in listing.items()}
    return section
