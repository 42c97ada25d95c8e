"""Every config in conf/ composes, and every `_target_` instantiates (offline)."""

from __future__ import annotations

import pytest
from conftest import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from semantix.cli import root_cause
from semantix.config import CONF_DIR, RunLabels, compose_job
from semantix.registry import build_metric_at
from semantix.types import WeightsNotFoundError


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.method, "an experiment must select at least one method"
    OmegaConf.to_container(cfg.method, resolve=True)
    OmegaConf.to_container(cfg.metrics, resolve=True)


@pytest.mark.parametrize("method", options("method"))
def test_every_method_instantiates(method):
    cfg = compose([f"method={method}"])
    for label, node in cfg.method.items():
        assert callable(instantiate(node)), label


@pytest.mark.parametrize("preset", options("metrics"))
def test_every_metric_preset_instantiates_or_names_the_missing_weights(preset):
    """Offline, a metric with real weights either finds them or says which config key to set."""
    cfg = compose([f"metrics={preset}"])
    for name, node in cfg.metrics.items():
        try:
            metric = build_metric_at(f"metrics.{name}", node)
        except Exception as e:  # noqa: BLE001 - inspected below
            cause = root_cause(e)
            assert isinstance(cause, WeightsNotFoundError), (name, cause)
            assert f"metrics.{name}." in str(cause), (name, str(cause))
            assert preset not in ("demo", "tiny"), f"{preset} must build offline ({name})"
            continue
        assert metric.higher_is_better in (True, False), name


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_instantiates(logger):
    assert hasattr(instantiate(compose([f"logger={logger}"]).logger), "log_sample")


def test_datasets_instantiate(small_dataset):
    assert len(instantiate(compose(["dataset=demo"]).dataset)) > 0
    cfg = compose(["dataset=manifest", f"dataset.manifest={small_dataset}"])
    assert len(instantiate(cfg.dataset)) == 4
    with pytest.raises(Exception, match="manifest"):
        instantiate(compose(["dataset=manifest"]).dataset)  # mandatory value left unset


def test_backbones_instantiate_or_say_which_key_to_set(tmp_path):
    tiny = instantiate(compose(["backbone=tiny"]).backbone)
    assert tiny.random_weights
    missing = tmp_path / "no-such-sd15"
    with pytest.raises(Exception) as info:
        instantiate(compose(["backbone=sd15", f"backbone.pretrained={missing}"]).backbone)
    cause = root_cause(info.value)
    assert isinstance(cause, WeightsNotFoundError)
    assert "backbone.pretrained" in str(cause) and "model_index.json" in str(cause)


def test_unknown_choice_is_a_clear_error():
    with pytest.raises(Exception, match="reinhardt"):
        compose(["method=reinhardt"])


def test_compose_job_names_the_choices_and_keeps_the_overrides():
    overrides = ["experiment=semantix_gamma_sweep", "dataset=demo", "dataset.limit=1", "method.semantix.num_steps=3"]
    cfg, labels = compose_job(overrides)
    assert "hydra" not in cfg  # the runner gets the job's config, not Hydra's
    assert cfg.method.semantix.num_steps == 3 and cfg.dataset.limit == 1
    assert labels == RunLabels(experiment="semantix_gamma_sweep", dataset="demo", backbone="sd15", metrics="image_style",
                               overrides=tuple(overrides))
    assert compose_job(["~experiment"])[1].experiment == "none"
