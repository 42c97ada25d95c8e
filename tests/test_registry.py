"""Lazy registries: names resolve to plugins; unknown names list the known ones."""

from __future__ import annotations

import pytest

from semantix.registry import (
    BACKBONES,
    DATASETS,
    METHODS,
    METRICS,
    Registry,
    UnknownPluginError,
    build_method,
)


@pytest.mark.parametrize("registry", [METHODS, METRICS, BACKBONES, DATASETS], ids=lambda r: r.kind)
def test_every_registered_target_imports(registry):
    for name in registry.names():
        assert callable(registry.get(name)), name


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownPluginError) as info:
        build_method("reinhardt")
    message = str(info.value)
    assert "unknown method 'reinhardt'" in message
    assert "identity" in message and "reinhard" in message


def test_register_and_bad_target():
    registry = Registry("widget", {})
    registry.register("mine", "semantix.methods.classical:Identity")
    assert registry.names() == ["mine"]
    assert registry.get("mine").__name__ == "Identity"
    with pytest.raises(ValueError, match="package.module:Class"):
        registry.register("bad", "semantix.methods.classical.Identity")


def test_importing_semantix_registry_is_lazy():
    import subprocess
    import sys

    code = "import sys, semantix.registry; print('diffusers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
