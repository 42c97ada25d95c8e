"""One set of defaults per method: each constructor's equal its shipped conf/method/<name>.yaml, key by key.

A method built in code (tests, benchmarks, notebooks) must run the same algorithm as `method=<name>`;
a key the YAML sets that the constructor lacks, or a constructor parameter the YAML leaves out, fails
too (the YAML documents every setting).
"""

from __future__ import annotations

import inspect

import pytest
from conftest import CONF_DIR
from omegaconf import OmegaConf

from semantix.registry import METHODS

WRAPPERS = {"frame_by_frame"}  # wraps another method's config (conf/method/frames_*.yaml), below
# Keys only a video run reads, set in the video config instead (adding them to the image config would
# change the image runs' identity, hence their run directories).
VIDEO_KEYS = {"semantix": ("semantix_video", {"window_size", "window_overlap"})}


def _plain(value):
    """YAML lists and constructor tuples compare as lists, at every depth."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _constructor_defaults(name: str) -> dict:
    parameters = inspect.signature(METHODS.get(name)).parameters.values()
    return {p.name: _plain(p.default) for p in parameters}


@pytest.mark.parametrize("name", sorted(set(METHODS.names()) - WRAPPERS))
def test_constructor_defaults_are_the_shipped_config(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"))
    assert cfg.pop("_target_") == "semantix.registry.build_method" and cfg.pop("name") == name
    defaults = _constructor_defaults(name)
    if name in VIDEO_KEYS:
        video_config, keys = VIDEO_KEYS[name]
        video = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{video_config}.yaml"))
        assert not keys & set(cfg)
        cfg |= {k: video[k] for k in keys}
    assert set(cfg) == set(defaults), "keys in only one of YAML / constructor: " + str(set(cfg) ^ set(defaults))
    assert {k: _plain(v) for k, v in cfg.items()} == defaults


@pytest.mark.parametrize("path", sorted((CONF_DIR / "method").glob("frames_*.yaml")), ids=lambda p: p.stem)
def test_frame_by_frame_configs_set_the_constructor_defaults(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg["name"] == "frame_by_frame"
    defaults = _constructor_defaults("frame_by_frame")
    own = {k: v for k, v in cfg.items() if k not in ("_target_", "name", "defaults", "method")}
    assert set(own) | {"method"} == set(defaults)
    assert own == {k: v for k, v in defaults.items() if k != "method"}
