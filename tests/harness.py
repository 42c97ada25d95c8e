"""Run jobs in-process the way the CLI does, for tests."""

from __future__ import annotations

from pathlib import Path

from conftest import compose
from omegaconf import open_dict

from semantix.runner import RunLabels, Runner


def manifest_overrides(manifest) -> list[str]:
    """Overrides that make a job read the manifest file `manifest`."""
    return ["dataset=manifest", f"dataset.manifest={manifest}"]


def composed(overrides: list[str], results_dir: Path):
    cfg = compose([*overrides, f"paths.results_dir={results_dir}", "runner.progress=false"])
    choices = cfg.hydra.runtime.choices
    labels = RunLabels(choices.get("experiment") or "none", choices["dataset"], choices["backbone"],
                       choices["metrics"])
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, labels


def run_job(overrides: list[str], results_dir: Path, logger=None):
    cfg, labels = composed(overrides, results_dir)
    return Runner(cfg, labels, logger=logger).run()


def comparable(record: dict) -> dict:
    """A record without the fields that legitimately differ between two runs (timings, tracebacks)."""
    out = {k: v for k, v in record.items() if k != "timings"}
    if out.get("error"):
        out["error"] = {k: v for k, v in out["error"].items() if k != "traceback"}
    return out
