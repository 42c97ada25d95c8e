"""`logger=wandb` runs offline without credentials and logs samples, images and the final table."""

from __future__ import annotations

import json

from harness import composed
from hydra.utils import instantiate

from semantix.runner import Runner


def test_wandb_offline_logs_a_run(small_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg, labels = composed(["dataset=manifest", f"dataset.manifest={small_dataset}", "method=reinhard",
                            "logger=wandb", "logger.max_images=2"], tmp_path / "results")
    logger = instantiate(cfg.logger)
    assert logger.mode == "offline"
    run = Runner(cfg, labels, logger=logger).run().runs[0]
    assert run.ok == 4
    offline_runs = list(run.run_dir.glob("wandb/offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb")), "no wandb data file written"
    media = offline_runs[0] / "files" / "media"
    assert len(list((media / "images").glob("output_*.png"))) == 2  # max_images
    tables = list((media / "table").glob("records_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == 4 and "colour_histogram" in table["columns"]
