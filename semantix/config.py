"""Composing a job: its config and the labels of its choices, one way for the CLI, the tests and the benchmarks.

`semantix-bench` composes through `hydra.main` (multirun, launchers) and names the job with
`job_labels(HydraConfig.get())`; code that runs a job in-process calls `compose_job(overrides)`,
which composes the same config from the same `conf/` and names it with the same function.

This module stays free of torch, diffusers and the runner: the CLI imports it before announcing
that it is loading them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from omegaconf import DictConfig, open_dict

from semantix.runtime import config_dir

# The checkout's conf/, or the copy an installed wheel ships: semantix.runtime.config_dir() decides.
CONF_DIR = config_dir()
HYDRA_VERSION_BASE = "1.3"


@dataclass(frozen=True)
class RunLabels:
    """Human-readable names of the job's choices, used in run paths and leaderboard rows."""

    experiment: str
    dataset: str
    backbone: str
    metrics: str
    overrides: tuple[str, ...] = ()  # what the user typed (Hydra's task overrides), for provenance


def job_labels(hydra_config) -> RunLabels:
    """The labels of a composed job, from Hydra's node (`HydraConfig.get()` in a Hydra app, or the
    `hydra` node of a config composed with it): the config-group choices and the task overrides."""
    choices = hydra_config.runtime.choices
    return RunLabels(
        experiment=choices.get("experiment") or "none",
        dataset=choices["dataset"],
        backbone=choices["backbone"],
        metrics=choices["metrics"],
        overrides=tuple(hydra_config.overrides.task),
    )


def compose_config(overrides: Iterable[str]) -> DictConfig:
    """The config `semantix-bench <overrides>` composes, with Hydra's own node (`cfg.hydra`) kept."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base=HYDRA_VERSION_BASE, config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def compose_job(overrides: Iterable[str]) -> tuple[DictConfig, RunLabels]:
    """The job `semantix-bench <overrides>` runs: its config (without Hydra's node, as the runner gets
    it) and its labels. `Runner(*compose_job(overrides)).run()` runs it in-process."""
    cfg = compose_config(overrides)
    labels = job_labels(cfg.hydra)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, labels
