"""Run jobs in-process the way the CLI does, for tests."""

from __future__ import annotations

from pathlib import Path

from semantix.config import compose_job
from semantix.runner import Runner


def manifest_overrides(manifest) -> list[str]:
    """Overrides that make a job read the manifest file `manifest`."""
    return ["dataset=manifest", f"dataset.manifest={manifest}"]


def composed(overrides: list[str], results_dir: Path):
    """The job's config and labels (`compose_job`), writing under `results_dir`, without a progress bar."""
    return compose_job([*overrides, f"paths.results_dir={results_dir}", "runner.progress=false"])


def run_job(overrides: list[str], results_dir: Path, logger=None):
    cfg, labels = composed(overrides, results_dir)
    return Runner(cfg, labels, logger=logger).run()


def comparable(record: dict) -> dict:
    """A record without the fields that legitimately differ between two runs (timings, tracebacks)."""
    out = {k: v for k, v in record.items() if k != "timings"}
    if out.get("error"):
        out["error"] = {k: v for k, v in out["error"].items() if k != "traceback"}
    return out
