"""Optional experiment loggers. Off by default (`logger=none`); the run directory is the record.

`logger=wandb` logs, per method run: per-sample metric values and the first `max_images` outputs;
at the end, the report's view of the run (`semantix.report`, which sits below this module): a table
of every record with its output, content and reference thumbnails and metric values, the run's
leaderboard row (means and 95% CI half-widths) as the wandb summary, and the per-step diagnostics
plot of one sample when the method records per-step diagnostics. Without credentials it runs offline
(`wandb sync` uploads later). Plots across runs (sweeps, ablations) are in `semantix-report`, which
sees every run; `log_report_to_wandb` uploads them (`semantix-report --wandb`). This is the one
module that talks to wandb.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semantix.io import stable_hash

if TYPE_CHECKING:  # annotations only: the loggers are built before the job imports torch
    import torch

THUMBNAIL_SIZE = 256  # longest side of the images in the end-of-run table, px


class NullLogger:
    def start_run(self, label: str, run_dir: Path, config: dict) -> None:
        pass

    def log_sample(self, label: str, record: dict, image: torch.Tensor) -> None:
        pass

    def finish_run(self, label: str, records: list[dict]) -> None:
        pass


def wandb_mode(mode: str) -> str:
    """"auto": online when wandb finds credentials by any of its own means (WANDB_API_KEY, the netrc
    entry `wandb login` writes, an api_key setting), else offline (sync later with `wandb sync`)."""
    if mode != "auto":
        return mode
    import wandb

    # wandb's own check for credentials without prompting; verify=False: no round trip to the server.
    return "online" if wandb.login(prompt=False, verify=False) else "offline"


def wandb_run_id(run_dir: Path) -> str:
    """The wandb run id of a run directory: the same on every invocation, so a resumed run continues
    its wandb run (`resume="allow"`) instead of starting a second one."""
    return stable_hash(str(Path(run_dir).resolve()), length=16)


class WandbLogger(NullLogger):
    def __init__(self, project: str = "semantix", entity: str | None = None, mode: str = "auto",
                 max_images: int = 16):
        import wandb  # imported here: wandb is slow to import and unused by default

        self._wandb = wandb
        self.project = project
        self.entity = entity
        self.mode = wandb_mode(mode)
        self.max_images = max_images
        self._runs: dict[str, Any] = {}
        self._images_logged: dict[str, int] = {}
        self._run_dirs: dict[str, Path] = {}

    def start_run(self, label: str, run_dir: Path, config: dict) -> None:
        self._runs[label] = self._wandb.init(
            project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir),
            name=f"{run_dir.parent.parent.parent.name}/{label}", group=run_dir.parent.name,
            config=config, reinit="create_new", id=wandb_run_id(run_dir), resume="allow",
        )
        self._images_logged[label] = 0
        self._run_dirs[label] = Path(run_dir)

    def log_sample(self, label: str, record: dict, image: torch.Tensor) -> None:
        payload: dict[str, Any] = {f"sample/{k}": v for k, v in record["metrics"].items()}
        if self._images_logged[label] < self.max_images:
            array = (image.permute(1, 2, 0) * 255).round().byte().numpy()
            payload["output"] = self._wandb.Image(array, caption=record["sample_id"])
            self._images_logged[label] += 1
        self._runs[label].log(payload)

    def finish_run(self, label: str, records: list[dict]) -> None:
        from PIL import Image

        from semantix.leaderboard import summarise
        from semantix.report import plots
        from semantix.report.figures import diagnostics_panels, diagnostics_sample
        from semantix.report.inputs import InputIndex, input_strip, input_thumbnail, output_thumbnail
        from semantix.report.runs import describe_rows
        from semantix.store import load_run

        run = self._runs.pop(label)
        run_dir = self._run_dirs.pop(label)
        summary = load_run(run_dir)
        data = (summary.provenance.get("data") or {}) if summary else {}
        side = min(THUMBNAIL_SIZE, int(data.get("resolution") or THUMBNAIL_SIZE))
        inputs = InputIndex()
        metric_names = sorted({name for r in records for name in r.get("metrics", {})})
        table = self._wandb.Table(columns=["sample_id", "status", "error", "output", "content", "reference",
                                           *metric_names])
        for r in records:
            error = r["error"]["message"] if r.get("error") else None
            output_path = run_dir / r.get("image", "")
            output = (self._wandb.Image(output_thumbnail(output_path, THUMBNAIL_SIZE))
                      if r["status"] == "ok" and output_path.is_file() else None)
            found = inputs.inputs(data, r["sample_id"]) if data.get("manifest") else None
            content = self._wandb.Image(input_thumbnail(found.content, side)) if found and found.content else None
            reference = (self._wandb.Image(input_strip(found.references, side))
                         if found and found.references else None)
            table.add_data(r["sample_id"], r["status"], error, output, content, reference,
                           *[r["metrics"].get(m) for m in metric_names])
        payload: dict[str, Any] = {"records": table}
        if summary is not None:
            row = summarise(summary)
            run.summary.update({k: v for k, v in row.items()
                                if k.endswith(("_mean", "_ci95", "_set")) and isinstance(v, int | float) and math.isfinite(v)})
            record = diagnostics_sample(summary)
            if record is not None:
                title = f"Per-step diagnostics: {label}, sample {record['sample_id']}"
                png = plots.diagnostics_plot(diagnostics_panels(record), title, describe_rows([row]))
                payload["diagnostics"] = self._wandb.Image(Image.open(io.BytesIO(png)), caption=record["sample_id"])
        run.log(payload)
        run.finish()


def log_report_to_wandb(report_dir: Path, project: str, mode: str = "auto") -> str:
    """Log a built report's leaderboard (a wandb.Table) and plots (wandb.Image) as one wandb run
    (`semantix-report --wandb`); return the wandb run's folder."""
    import pandas as pd
    import wandb

    # The wandb folder goes beside the report, keeping the report folder portable.
    run = wandb.init(project=project, job_type="report", name=f"report/{report_dir.name}",
                     mode=wandb_mode(mode), dir=str(report_dir.parent), reinit="create_new")
    payload = {"leaderboard": wandb.Table(dataframe=pd.read_csv(report_dir / "leaderboard.csv"))}
    for plot in sorted((report_dir / "plots").glob("*.png")):
        payload[f"plots/{plot.stem}"] = wandb.Image(str(plot))
    run.log(payload)
    run.finish()
    return run.dir
