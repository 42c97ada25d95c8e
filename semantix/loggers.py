"""Optional experiment loggers. Off by default (`logger=none`); the run directory is the record.

`logger=wandb` logs, per method run: per-sample metric values, the first `max_images` outputs, and
at the end a table of every record. Without credentials it runs offline (`wandb sync` uploads later).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


class NullLogger:
    def start_run(self, label: str, run_dir: Path, config: dict) -> None:
        pass

    def log_sample(self, label: str, record: dict, image: torch.Tensor) -> None:
        pass

    def finish_run(self, label: str, records: list[dict]) -> None:
        pass


class WandbLogger(NullLogger):
    def __init__(self, project: str = "semantix", entity: str | None = None, mode: str = "auto",
                 max_images: int = 16):
        import wandb  # imported here: wandb is slow to import and unused by default

        self._wandb = wandb
        self.project = project
        self.entity = entity
        self.mode = ("online" if os.environ.get("WANDB_API_KEY") else "offline") if mode == "auto" else mode
        self.max_images = max_images
        self._runs: dict[str, Any] = {}
        self._images_logged: dict[str, int] = {}

    def start_run(self, label: str, run_dir: Path, config: dict) -> None:
        self._runs[label] = self._wandb.init(
            project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir),
            name=f"{run_dir.parent.parent.parent.name}/{label}", group=run_dir.parent.name,
            config=config, reinit="create_new",
        )
        self._images_logged[label] = 0

    def log_sample(self, label: str, record: dict, image: torch.Tensor) -> None:
        payload: dict[str, Any] = {f"sample/{k}": v for k, v in record["metrics"].items()}
        if self._images_logged[label] < self.max_images:
            array = (image.permute(1, 2, 0) * 255).round().byte().numpy()
            payload["output"] = self._wandb.Image(array, caption=record["sample_id"])
            self._images_logged[label] += 1
        self._runs[label].log(payload)

    def finish_run(self, label: str, records: list[dict]) -> None:
        run = self._runs.pop(label)
        metric_names = sorted({name for r in records for name in r.get("metrics", {})})
        table = self._wandb.Table(columns=["sample_id", "status", "error", *metric_names])
        for r in records:
            error = r["error"]["message"] if r.get("error") else None
            table.add_data(r["sample_id"], r["status"], error, *[r["metrics"].get(m) for m in metric_names])
        run.log({"records": table})
        run.finish()
