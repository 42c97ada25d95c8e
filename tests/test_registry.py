"""Lazy registries: names resolve to plugins of the registry's base class; unknown names list the known ones;
metric weights errors name the config path."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, compose
from omegaconf import OmegaConf

from semantix.registry import (
    BACKBONES,
    DATASETS,
    METHODS,
    METRICS,
    Registry,
    UnknownPluginError,
    build_method,
    build_metric_at,
    build_metrics,
)
from semantix.types import WeightsNotFoundError


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
    registry = Registry("widget", {}, bases=("semantix.methods.base:Method",))
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


def test_a_plugin_of_the_wrong_base_class_fails_when_built():
    registry = Registry("metric", {"not_a_metric": "semantix.methods.classical:Identity"},
                        bases=("semantix.metrics.base:SampleMetric", "semantix.metrics.base:SetMetric"))
    with pytest.raises(TypeError, match=r"metric 'not_a_metric' .* built a Identity, which is not a "
                                        r"semantix\.metrics\.base:SampleMetric or semantix\.metrics\.base:SetMetric"):
        registry.build("not_a_metric")


def test_every_metric_has_its_config_file_and_every_file_a_metric():
    files = {path.stem: OmegaConf.load(path) for path in (CONF_DIR / "metric").glob("*.yaml")}
    assert sorted(files) == METRICS.names()
    assert all(config.name == stem and config._target_ == "semantix.registry.build_metric"
               for stem, config in files.items())


def test_tiny_has_every_metric_of_image_style_and_appearance():
    tiny = compose(["metrics=tiny"]).metrics
    for preset in ("image_style", "appearance"):
        assert set(compose([f"metrics={preset}"]).metrics) <= set(tiny), preset


# -- weights errors name the config path the user set ------------------------------------------------------
def test_a_preset_under_another_key_gets_its_own_key_in_the_weights_error(tmp_path):
    """A preset may file a metric under any key; the error names that key, not the metric's name."""
    cfg = compose(["metrics=demo", "+metric@metrics.house_style=clip_style",
                   f"metrics.house_style.weights={tmp_path / 'nowhere.pt'}"])
    with pytest.raises(WeightsNotFoundError) as info:
        build_metrics(cfg.metrics)
    message = str(info.value)
    assert message.startswith("metrics.house_style.weights: weights not found"), message
    assert "clip_style" not in message and str(tmp_path / "nowhere.pt") in message


# Every metric with weights, and the argument that holds them (a missing path for each).
WEIGHTS_SETTINGS = [("lpips", "weights", {}), ("cfsd", "weights", {}), ("gram", "weights", {}),
                    ("structure_dino", "weights", {}), ("dino_appearance", "weights", {}),
                    ("correspondence_colour", "weights", {}), ("clip_style", "weights", {}),
                    ("clip_content", "weights", {}), ("clip_text", "weights", {}),
                    ("clip_frame_consistency", "weights", {}), ("warping_error", "weights", {}),
                    ("fid", "weights", {}), ("fid_imagenet", "weights", {}),
                    ("artfid", "inception_weights", {}),
                    ("artfid", "lpips_weights", {"inception_weights": "random", "feature": 64})]


def test_the_list_covers_every_metric_with_weights():
    weight_free = {"ssim_grey", "colour_histogram"}
    assert {n for n, _, _ in WEIGHTS_SETTINGS} == set(METRICS.names()) - weight_free


@pytest.mark.parametrize(("name", "setting", "others"), WEIGHTS_SETTINGS, ids=lambda v: v if isinstance(v, str) else "")
def test_every_missing_weights_error_names_the_config_path(name, setting, others, tmp_path, fresh_models):
    config = OmegaConf.merge(OmegaConf.load(CONF_DIR / "metric" / f"{name}.yaml"),
                             {"device": "cpu", setting: str(tmp_path / "nowhere"), **others})
    with pytest.raises(WeightsNotFoundError, match=rf"^metrics\.mine\.{setting}: "):
        build_metric_at("metrics.mine", config)


class _NotATensor:
    pass


def test_a_refused_checkpoint_names_the_config_path(tmp_path, fresh_models):
    import torch

    from semantix.checkpoints import UnsafeCheckpointError

    path = tmp_path / "alexnet.pth"
    torch.save({"features.0.weight": _NotATensor()}, path)
    config = OmegaConf.merge(OmegaConf.load(CONF_DIR / "metric" / "lpips.yaml"), {"device": "cpu", "weights": str(path)})
    with pytest.raises(UnsafeCheckpointError, match=r"^metrics\.perceptual\.weights: refused to load"):
        build_metric_at("metrics.perceptual", config)


def test_other_build_errors_pass_unchanged():
    config = OmegaConf.merge(OmegaConf.load(CONF_DIR / "metric" / "lpips.yaml"), {"device": "cpu", "net": "squeeze"})
    with pytest.raises(Exception, match="net must be 'alex'"):
        build_metric_at("metrics.mine", config)
