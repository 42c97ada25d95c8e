"""The benchmark loop: samples x methods -> outputs -> metrics -> records.

One job (one Hydra run, or one point of a multirun) holds a dataset, one or more methods, one
backbone and a metric preset. Each method gets its own run directory (see `semantix.store`), named
from the config that determines its outputs, so the same command run again finds it and resumes:

- a sample whose record is `ok` and carries every configured metric (same metric config) is skipped;
- an `ok` sample that lacks a metric, or whose metric config changed, is re-scored from its stored
  image without running the method again;
- a `failed` sample is retried when `runner.retry_failed` is true (the default), else kept;
- anything else runs. An exception in one sample becomes a `failed` record; the loop goes on.

Sharding (`shard.index` / `shard.count`): a job processes only the sample ids `shard_ids` assigns
to its shard (sha256 of the id modulo the count, after `dataset.limit`). Shards are not part of the
run identity, so every shard writes into the same run directory; records and images are per sample,
and each invocation writes its own `invocations/<start>-<host>-<pid>-shard<i>of<n>.json`, so
concurrent shards never read-modify-write a shared file. Set-level metrics run only once every
sample of the (unsharded) dataset has a record: the last shard to finish computes them.

Metrics score the stored 8-bit image, so a re-scored sample and a fresh one give identical values.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from semantix import diagnostics, provenance
from semantix.config import RunLabels
from semantix.io import (
    ResultsNotWritable,
    check_writable_directory,
    quantize,
    remove_stale_temporaries,
    stable_hash,
)
from semantix.methods.base import Method
from semantix.metrics.base import FrameAveraged, SetMetric
from semantix.registry import build_metrics
from semantix.store import RunStore, StoredFileError, run_identity
from semantix.types import MethodOutput, Sample
from semantix.weights import backbone_identity, ensure_job_weights

log = logging.getLogger(__name__)

@dataclass
class MethodRun:
    """One method's run inside a job, and what happened to its samples in this invocation."""

    label: str
    method: Method
    store: RunStore
    identity: dict  # what determines its outputs (`semantix.store.run_identity`)
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    rescored: int = 0
    # Samples redone because their record was made from input files that have changed since, or
    # because their stored outputs were missing or differed from the sha256 in their record.
    redone_changed_inputs: int = 0
    redone_damaged: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.store.run_dir

    @property
    def config_hash(self) -> str:
        """The hash of its identity, which names its run directory."""
        return stable_hash(self.identity)


@dataclass
class JobResult:
    runs: list[MethodRun]

    @property
    def n_failed(self) -> int:
        return sum(r.failed for r in self.runs)


def shard_of(sample_id: str, count: int) -> int:
    """The shard of a sample: int(sha256(sample_id)) mod count (depends on the id only, not on order)."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest(), 16) % count


def shard_ids(sample_ids: list[str], index: int, count: int) -> list[str]:
    """The ids of shard `index` of `count`, in their dataset order; the shards partition `sample_ids`."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"shard.count must be an integer >= 1, got {count!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"shard.index must be an integer in [0, shard.count={count}), got {index!r}")
    if count == 1:
        return list(sample_ids)
    return [sid for sid in sample_ids if shard_of(sid, count) == index]


def _shard_config(cfg: DictConfig) -> tuple[int, int]:
    shard = cfg.get("shard") or {}
    return shard.get("index", 0), shard.get("count", 1)


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed that depends only on the global seed and the sample id (order-free)."""
    return int(stable_hash(f"{seed}:{sample_id}", length=8), 16) & 0x7FFFFFFF


def _seed_everything(seed: int) -> None:
    # The method gets the seed itself; the global RNGs are seeded too, so a method or library that
    # draws from them stays reproducible.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def run_directory(cfg: DictConfig, labels: RunLabels, label: str, uses_backbone: bool = True) -> tuple[Path, dict]:
    """Method `label`'s run directory, named by the hash of its identity, and that identity. The backbone's
    weights enter it by content, not by how they were found (`semantix.weights.backbone_identity`)."""
    identity = run_identity(cfg, label)
    identity["backbone"] = backbone_identity(identity["backbone"], uses_backbone)
    root = Path(cfg.paths.results_dir) / "runs"
    return root / labels.experiment / labels.dataset / labels.backbone / f"{label}-{stable_hash(identity)}", identity


def _check_output(output: Any, sample: Sample) -> torch.Tensor:
    """The output as stored: the image (3, H, W), or for a video sample the frames (F, 3, H, W), on the
    8-bit grid; a clear error when it does not fit the sample."""
    if not isinstance(output, MethodOutput):
        raise TypeError(f"method returned {type(output).__name__}, expected MethodOutput")
    if sample.is_video != (output.frames is not None):
        if sample.is_video:
            raise ValueError(
                "method returned an image for a video sample; a video sample needs MethodOutput.frames (run an "
                "image method on every frame with its frames_* config, e.g. method=frames_semantix)"
            )
        raise ValueError("method returned frames for an image sample")
    media, expected = (output.frames, sample.frames) if sample.is_video else (output.image, sample.content)
    what = "video" if sample.is_video else "image"
    if not isinstance(media, torch.Tensor) or media.shape != expected.shape:
        shape = tuple(media.shape) if isinstance(media, torch.Tensor) else type(media).__name__
        raise ValueError(f"method returned an {what} of shape {shape}, expected {tuple(expected.shape)}")
    media = media.detach().float().cpu()
    if not torch.isfinite(media).all():
        raise ValueError(f"method returned an {what} with NaN or infinite values")
    if media.min() < -1e-3 or media.max() > 1.0 + 1e-3:
        raise ValueError(
            f"method returned values in [{media.min():.3g}, {media.max():.3g}]; outputs must be in [0, 1]"
        )
    return quantize(media)


def _error_entry(stage: str, error: BaseException) -> dict:
    return {
        "stage": stage,
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)[-3:]),
    }


class MethodBars:
    """One progress bar per method of the job, labelled with the method and showing its ok / failed /
    skipped counts (the loop goes sample by sample, so every method's bar moves as it goes)."""

    def __init__(self, runs: list[MethodRun], n_samples: int, enabled: bool):
        self._bars = {run.label: tqdm(total=n_samples, desc=run.label, unit="sample", position=i, disable=not enabled)
                      for i, run in enumerate(runs)}

    def update(self, run: MethodRun) -> None:
        """One more sample of `run` done (after its counts were updated)."""
        bar = self._bars[run.label]
        bar.set_postfix({"ok": run.ok, "failed": run.failed, "skipped": run.skipped}, refresh=False)
        bar.update(1)

    def __enter__(self) -> MethodBars:
        return self

    def __exit__(self, *exc_info) -> None:
        for bar in self._bars.values():
            bar.close()


class Runner:
    """Runs one job. Build it from a composed config; call `run()`."""

    def __init__(self, cfg: DictConfig, labels: RunLabels, logger: Any | None = None):
        self.cfg = cfg
        self.labels = labels
        self.logger = logger
        self.dataset = instantiate(cfg.dataset)
        self.shard_index, self.shard_count = _shard_config(cfg)
        self.sample_ids = shard_ids(list(self.dataset.sample_ids), self.shard_index, self.shard_count)
        # Unique per invocation: start time to the microsecond (UTC), host, process, shard.
        now = datetime.now(UTC)
        self.invocation_name = (
            f"{now.strftime('%Y%m%dT%H%M%S.%f')}-{socket.gethostname()}-{os.getpid()}"
            f"-shard{self.shard_index}of{self.shard_count}"
        )
        self._invocation: dict = {}
        methods = {}
        for label, mcfg in cfg.method.items():
            if "_target_" not in mcfg:
                raise ValueError(
                    f"method {label!r} has no _target_: values were set for a method that no conf/method "
                    f"file selects (an experiment or override setting method.{label}.* without selecting it?)"
                )
            methods[label] = instantiate(mcfg)
        # Every weight file of the job, before any is loaded: fetched when missing and allowed, else one
        # error naming them all (semantix.weights). Run identities then read what the weights are.
        ensure_job_weights(cfg, backbone=any(method.uses_backbone for method in methods.values()))
        self.runs: list[MethodRun] = []
        for label, method in methods.items():
            run_dir, identity = run_directory(cfg, labels, label, method.uses_backbone)
            self.runs.append(MethodRun(label, method, RunStore(run_dir), identity))
        built = build_metrics(cfg.metrics)
        self.metric_hashes = {name: stable_hash(_container(mcfg)) for name, mcfg in cfg.metrics.items()}
        # Per-sample metrics score each output as it is made; set-level ones (FID) run once per run.
        self.metrics = {n: m for n, m in built.items() if not isinstance(m, SetMetric)}
        self.set_metrics = {n: m for n, m in built.items() if isinstance(m, SetMetric)}
        self.backbone = None
        # sample id -> the sha256 of its input files as the manifest now gives them (see _inputs_changed)
        self._expected_inputs: dict[str, dict | None] = {}

    # -- set-up ------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        # Before anything slow: a results directory that cannot be written stops the job (exit 101).
        check_writable_directory(Path(self.cfg.paths.results_dir))
        remove_stale_temporaries(Path(self.cfg.paths.results_dir), recursive=False)  # e.g. of the leaderboard
        for run in self.runs:  # named now, not only in the summary: a long job can be watched from the start
            log.info("%s: run directory %s", run.label, run.run_dir)
        if any(run.method.uses_backbone for run in self.runs):
            log.info("loading backbone %s", self.labels.backbone)
            self.backbone = instantiate(self.cfg.backbone)
        cache_dir = Path(self.cfg.paths.cache_dir)
        for run in self.runs:
            if self.backbone is not None and self.backbone.is_video and run.method.uses_backbone \
                    and not run.method.supports_video:
                raise ValueError(
                    f"method {run.label} is an image method and backbone {self.labels.backbone} is a video backbone; "
                    f"run it on every frame (method=frames_{run.label} where conf/method has it, or a "
                    "frame_by_frame config wrapping it), or use an image backbone"
                )
        for run in self.runs:
            run.method.prepare(self.backbone if run.method.uses_backbone else None, cache_dir)
            self._write_run_files(run)

    def _write_run_files(self, run: MethodRun) -> None:
        store = run.store
        store.remove_stale_temporaries()  # of writes killed in an earlier invocation
        run_config = self._run_config(run.label)
        store.write_config(run_config)
        store.write_identity(run.identity)
        metric_configs = {name: _container(self.cfg.metrics[name]) for name in {**self.metrics, **self.set_metrics}}
        store.write_metric_info({
            name: {**metric.describe(metric_configs[name]), "config": metric_configs[name],
                   "config_hash": self.metric_hashes[name]}
            for name, metric in {**self.metrics, **self.set_metrics}.items()
        })
        uses_backbone = run.method.uses_backbone
        # Invocation-independent facts only: every shard writes the same content (last writer wins).
        prov = {
            "experiment": self.labels.experiment,
            "dataset": self.labels.dataset,
            "backbone": self.labels.backbone,
            "metrics_preset": self.labels.metrics,
            "overrides": [o for o in self.labels.overrides if not o.lstrip("+~").startswith("shard.")],
            "method": run.label,
            "config_hash": run.config_hash,
            "git": provenance.git_state(),
            "versions": provenance.package_versions(),
            "device": provenance.device_info(),
            "seeds": {"global": self.cfg.seed, "per_sample": "sha256('{seed}:{sample_id}')[:8] & 0x7fffffff"},
            "data": self._data_provenance(store),
            "backbone_weights": self.backbone.provenance if uses_backbone else None,
            "sharding": "shard_of(id) = int(sha256(id)) % shard.count, after dataset.limit",
        }
        self._invocation[run.label] = {
            "start": provenance.now(), "end": None, "host": socket.gethostname(), "pid": os.getpid(),
            "shard": {"index": self.shard_index, "count": self.shard_count, "n_samples": len(self.sample_ids)},
            "overrides": list(self.labels.overrides),
            "manifest_sha256": self.dataset.provenance().get("manifest_sha256"),
        }
        self._write_invocation(run)
        store.write_provenance(prov)
        if self.logger is not None:
            self.logger.start_run(run.label, store.run_dir, OmegaConf.to_container(run_config))

    def _write_invocation(self, run: MethodRun) -> None:
        run.store.write_invocation(self.invocation_name, self._invocation[run.label])

    def _data_provenance(self, store: RunStore) -> dict:
        """The dataset's provenance for provenance.json, claiming a new manifest only once the records are.

        Each record holds the sha256 of the inputs it was made from. When the manifest changed since
        the run's provenance was written, records made from the earlier inputs are redone one by one;
        until none is left (`_settle_data_provenance`) "manifest_sha256" keeps the earlier manifest
        and "manifest_sha256_pending" names the current one.
        """
        data = {**self.dataset.provenance(), "n_manifest": self._n_manifest()}
        current = data.get("manifest_sha256")
        previous = store.provenance().get("data") or {}
        earlier = previous.get("manifest_sha256")
        if earlier is not None and current is not None and (earlier != current or "manifest_sha256_pending" in previous):
            data = {**data, "manifest_sha256": earlier, "manifest_sha256_pending": current}
        return data

    def _settle_data_provenance(self, run: MethodRun) -> None:
        """Claim the current manifest in provenance.json once no ok record of the run comes from other inputs."""
        prov = run.store.provenance()
        data = prov.get("data") or {}
        if "manifest_sha256_pending" not in data:
            return
        manifest = getattr(self.dataset, "manifest", None)
        known = set(manifest.sample_ids if manifest is not None else self.dataset.sample_ids)
        earlier = [r["sample_id"] for r in run.store.records()
                   if r.get("status") == "ok" and r.get("sample_id") in known and self._inputs_changed(r)]
        if earlier:
            log.info("%s: %d record(s) still come from earlier input files (not redone yet: other shards, "
                     "dataset.limit?); provenance.json keeps the earlier manifest hash", run.label, len(earlier))
            return
        data["manifest_sha256"] = data.pop("manifest_sha256_pending")
        prov["data"] = data
        run.store.write_provenance(prov)

    def _run_config(self, label: str) -> DictConfig:
        """The job config narrowed to this run's method."""
        cfg = OmegaConf.to_container(self.cfg, resolve=True)
        cfg["method"] = {label: cfg["method"][label]}
        return OmegaConf.create(cfg)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> JobResult:
        self._prepare()
        sample_ids = self.sample_ids
        progress_enabled = self.cfg.runner.progress
        batch_size = int(self.cfg.runner.get("batch_size", 1))
        if batch_size < 1:
            raise ValueError(f"runner.batch_size must be >= 1, got {batch_size}")
        with logging_redirect_tqdm(), MethodBars(self.runs, len(sample_ids), progress_enabled) as bars:
            for start in range(0, len(sample_ids), batch_size):
                self._process_group(sample_ids[start:start + batch_size], bars)
        self._finish()
        return JobResult(self.runs)

    def _pending_work(self, run: MethodRun, sample_id: str) -> tuple[str, list[str]]:
        """("run", all metrics) / ("rescore", missing metrics) / ("skip", []).

        A record counts only if it can be trusted: its stored outputs hash to the sha256 it holds
        (`RunStore.check_record`) and it was made from the input files the manifest now gives.
        """
        check = run.store.check_record(sample_id)
        record = check.record
        if record is None:
            run.redone_damaged += check.problem == "outputs"
            return "run", list(self.metrics)
        if record["status"] == "failed":
            return ("run", list(self.metrics)) if self.cfg.runner.retry_failed else ("skip", [])
        if self._inputs_changed(record):
            log.info("%s / %s: its record was made from input files that have changed since: redoing it",
                     run.label, sample_id)
            run.redone_changed_inputs += 1
            return "run", list(self.metrics)
        stored = record.get("metric_config", {})
        missing = [name for name in self.metrics if stored.get(name) != self.metric_hashes[name]]
        return ("rescore", missing) if missing else ("skip", [])

    def _inputs_changed(self, record: dict) -> bool:
        """Whether a record was made from other input files than the ones the manifest gives now
        (their sha256 differ; `ManifestDataset.input_sha256`, kept for the invocation)."""
        sample_id = record["sample_id"]
        if sample_id not in self._expected_inputs:
            expected_of = getattr(self.dataset, "input_sha256", None)
            try:
                self._expected_inputs[sample_id] = expected_of(sample_id) if expected_of is not None else None
            except Exception as e:  # noqa: BLE001 - an input that cannot be found now: redo, loading says why
                self._expected_inputs[sample_id] = {"unavailable": f"{type(e).__name__}: {e}"}
        expected = self._expected_inputs[sample_id]
        return expected is not None and record.get("inputs") != expected

    def _process_group(self, sample_ids: list[str], bars: MethodBars) -> None:
        """Up to `runner.batch_size` samples: load each once, then each method on those it still needs.

        A method with `supports_batch` gets them in one `call_batch`; if that call fails, each sample
        is run alone, so a bad sample fails by itself.
        """
        work = {sid: {run.label: self._pending_work(run, sid) for run in self.runs} for sid in sample_ids}
        loaded: dict[str, tuple[Sample, float]] = {}
        for sid in sample_ids:
            for run in self.runs:
                if work[sid][run.label][0] == "skip":
                    run.skipped += 1
                    bars.update(run)
            if all(kind == "skip" for kind, _ in work[sid].values()):
                continue
            start = time.perf_counter()
            try:
                loaded[sid] = (self.dataset.load_sample(sid), time.perf_counter() - start)
            except Exception as e:  # noqa: BLE001 - any loading error fails this sample only
                for run in self.runs:
                    if work[sid][run.label][0] == "run":
                        self._write_failure(run, sid, sample_seed(self.cfg.seed, sid), _error_entry("load", e), {})
                        bars.update(run)
        for run in self.runs:
            to_run = [loaded[sid] for sid in loaded if work[sid][run.label][0] == "run"]
            self._run_method(run, to_run, bars)
            for sid, (sample, _) in loaded.items():
                kind, metric_names = work[sid][run.label]
                if kind == "rescore":
                    self._rescore(run, sample, metric_names)
                    bars.update(run)

    def _run_method(self, run: MethodRun, samples: list[tuple[Sample, float]], bars: MethodBars) -> None:
        """Run the method on `samples` ((sample, load seconds) pairs), batched when it can be."""
        if not run.method.supports_video:
            for sample, _ in samples:
                if sample.is_video:
                    error = ValueError(f"{run.label} is an image method and {sample.sample_id} is a video; run it on "
                                       f"every frame (method=frames_{run.label}, or a frame_by_frame config wrapping it)")
                    self._write_failure(run, sample.sample_id, sample_seed(self.cfg.seed, sample.sample_id),
                                        _error_entry("method", error), sample.input_sha256)
                    bars.update(run)
            samples = [(sample, load_s) for sample, load_s in samples if not sample.is_video]
        if len(samples) > 1 and run.method.supports_batch:
            seeds = [sample_seed(self.cfg.seed, sample.sample_id) for sample, _ in samples]
            for seed in seeds:
                _seed_everything(seed)
            start = time.perf_counter()
            try:
                outputs = run.method.call_batch([sample for sample, _ in samples], seeds)
            except Exception as e:  # noqa: BLE001 - retried one by one below
                log.warning("%s: a batch of %d failed (%s: %s); running its samples one by one", run.label,
                            len(samples), type(e).__name__, e)
            else:
                share = (time.perf_counter() - start) / len(samples)
                for (sample, load_s), seed, output in zip(samples, seeds, outputs, strict=True):
                    self._record_output(run, sample, seed, output, {"load_s": round(load_s, 4),
                                        "method_s": round(share, 4), "batch": len(samples)})
                    bars.update(run)
                return
        for sample, load_s in samples:
            seed = sample_seed(self.cfg.seed, sample.sample_id)
            _seed_everything(seed)
            start = time.perf_counter()
            try:
                output = run.method(sample, seed)
            except Exception as e:  # noqa: BLE001 - bad input, a method bug or OOM fails this sample only
                log.debug("method %s failed on %s", run.label, sample.sample_id, exc_info=True)
                self._write_failure(run, sample.sample_id, seed, _error_entry("method", e), sample.input_sha256)
            else:
                self._record_output(run, sample, seed, output, {"load_s": round(load_s, 4),
                                    "method_s": round(time.perf_counter() - start, 4)})
            bars.update(run)

    def _record_output(self, run: MethodRun, sample: Sample, seed: int, output: MethodOutput, timings: dict) -> None:
        """Check, score and store one output (or its failure)."""
        try:
            media = _check_output(output, sample)
        except Exception as e:  # noqa: BLE001
            self._write_failure(run, sample.sample_id, seed, _error_entry("method", e), sample.input_sha256)
            return
        start = time.perf_counter()
        try:
            values = self._score(media, sample, list(self.metrics))
        except Exception as e:  # noqa: BLE001
            self._write_failure(run, sample.sample_id, seed, _error_entry("metrics", e), sample.input_sha256)
            return
        timings["metrics_s"] = round(time.perf_counter() - start, 4)
        # A video's record also names its first frame as "image" (loggers and set-level metrics read it).
        image = media[0] if sample.is_video else media
        try:
            video_fields = run.store.save_video(sample.sample_id, media) if sample.is_video else {}
            image_path, image_sha = run.store.save_image(sample.sample_id, image)
        except ResultsNotWritable:
            raise  # the whole run directory: the job stops
        except Exception as e:  # noqa: BLE001 - a write of this sample's files failed: this sample only
            self._write_failure(run, sample.sample_id, seed, _error_entry("store", e), sample.input_sha256)
            return
        record = {
            "sample_id": sample.sample_id,
            "method": run.label,
            "status": "ok",
            "error": None,
            "seed": seed,
            "inputs": sample.input_sha256,
            "image": image_path,
            "image_sha256": image_sha,
            **video_fields,
            "metrics": values,
            "metric_config": {name: self.metric_hashes[name] for name in values},
            "diagnostics": output.diagnostics,
            "timings": timings,
        }
        try:
            run.store.write_record(record)
        except ResultsNotWritable:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a record that cannot be serialised: this sample only
            self._write_failure(run, sample.sample_id, seed, _error_entry("store", e), sample.input_sha256)
            return
        run.ok += 1
        if self.logger is not None:
            self.logger.log_sample(run.label, record, image)

    def _rescore(self, run: MethodRun, sample: Sample, metric_names: list[str]) -> None:
        """Score a stored output with `metric_names` and update its record. Every read and write is
        this sample's own: a stored output that broke since it was checked fails this sample (a
        failed record, redone by the next run), a metric error or a write error leaves its record
        as it was; the job goes on."""
        try:
            record = run.store.read_record(sample.sample_id)
            if record is None or record.get("status") != "ok":
                raise StoredFileError("its record or stored output changed while the job ran")
            media = run.store.load_frames(record) if "frames" in record else run.store.load_image(record)
        except ResultsNotWritable:
            raise
        except Exception as e:  # noqa: BLE001 - this sample's stored files only
            self._write_failure(run, sample.sample_id, sample_seed(self.cfg.seed, sample.sample_id),
                                _error_entry("rescore", e), sample.input_sha256)
            return
        try:
            values = self._score(media, sample, metric_names)
        except Exception as e:  # noqa: BLE001
            run.errors.append(f"{sample.sample_id}: re-scoring failed: {e}")
            log.warning("re-scoring %s/%s failed: %s", run.label, sample.sample_id, e)
            return
        record["metrics"].update(values)
        record.setdefault("metric_config", {}).update({n: self.metric_hashes[n] for n in values})
        try:
            run.store.write_record(record)
        except ResultsNotWritable:
            raise
        except Exception as e:  # noqa: BLE001
            run.errors.append(f"{sample.sample_id}: re-scored record not written: {e}")
            log.warning("re-scoring %s/%s: the record could not be written: %s", run.label, sample.sample_id, e)
            return
        run.rescored += 1

    def _score(self, media: torch.Tensor, sample: Sample, names: list[str]) -> dict[str, float]:
        """Each metric's value for one output: an image, or a video's frames (F, 3, H, W).

        On a video, a video metric (`video = True`: temporal consistency) sees all frames; an image
        metric scores it through `FrameAveraged` (each frame against the same source frame, then the mean).
        """
        values = {}
        for name in names:
            metric = self.metrics[name]
            if metric.video and not sample.is_video:
                raise ValueError(f"metric {name} scores videos; sample {sample.sample_id} is an image")
            scorer = FrameAveraged(metric) if sample.is_video and not metric.video else metric
            values[name] = float(scorer(media, sample))
        return values

    def _write_failure(self, run: MethodRun, sample_id: str, seed: int, error: dict, inputs: dict) -> None:
        record = {
            "sample_id": sample_id,
            "method": run.label,
            "status": "failed",
            "error": error,
            "seed": seed,
            "inputs": inputs,
            "metrics": {},
        }
        try:
            run.store.write_record(record)
        except ResultsNotWritable:
            raise
        except Exception as e:  # noqa: BLE001 - counted and logged as failed all the same
            log.error("%s / %s: its failure record could not be written (%s: %s)", run.label, sample_id,
                      type(e).__name__, e)
        run.failed += 1
        run.errors.append(f"{sample_id}: {error['stage']}: {error['type']}: {error['message']}")
        log.warning("%s / %s failed at %s: %s: %s", run.label, sample_id, error["stage"], error["type"],
                    error["message"])

    def _score_sets(self, run: MethodRun) -> None:
        """Set-level metrics over every finished sample of the run, skipped when nothing changed."""
        ok = sorted((r for r in run.store.records() if r["status"] == "ok"), key=lambda r: r["sample_id"])
        if any("frames" in r for r in ok):
            message = ("set-level metrics are defined on image outputs; this run holds videos (they would see "
                       "first frames only): use a video preset (metrics=video)")
            run.errors.append(message)
            log.warning("%s: %s", run.label, message)
            summary = run.store.summary()
            summary["set_metrics"] = {name: {"error": message, "config_hash": self.metric_hashes[name]}
                                      for name in self.set_metrics}
            run.store.write_summary(summary)
            return
        records_hash = stable_hash([(r["sample_id"], r["image_sha256"]) for r in ok])
        summary = run.store.summary()
        stored = summary.get("set_metrics", {})
        for name, metric in self.set_metrics.items():
            previous = stored.get(name, {})
            if previous.get("records_hash") == records_hash and previous.get("config_hash") == self.metric_hashes[name]:
                continue
            metric.reset()
            try:
                for record in ok:
                    metric.update(run.store.load_image(record), self.dataset.load_sample(record["sample_id"]))
                value = float(metric.compute())
            except Exception as e:  # noqa: BLE001 - a set metric failing leaves the per-sample results intact
                log.warning("%s: set metric %s failed: %s: %s", run.label, name, type(e).__name__, e)
                run.errors.append(f"set metric {name}: {type(e).__name__}: {e}")
                stored[name] = {"error": f"{type(e).__name__}: {e}", "config_hash": self.metric_hashes[name]}
                continue
            details = metric.details()
            stored[name] = {"value": value, "n": len(ok), **details, **self._set_metric_n(len(ok), details),
                            "records_hash": records_hash, "config_hash": self.metric_hashes[name]}
        summary["set_metrics"] = stored
        run.store.write_summary(summary)

    def _n_manifest(self) -> int:
        """Samples in the whole manifest, before `dataset.limit` (what a complete run covers)."""
        manifest = getattr(self.dataset, "manifest", None)
        return len(manifest.sample_ids if manifest is not None else self.dataset.sample_ids)

    def _set_metric_n(self, n: int, details: dict) -> dict:
        """A set metric's N against the manifest and its protocol: `partial` when the run covers fewer
        samples than the manifest (dataset.limit, failures), `comparable` false when partial or below the
        protocol's minimum N (`min_n` in details, e.g. FID's 50)."""
        n_manifest = self._n_manifest()
        min_n = details.get("min_n")
        return {"n_manifest": n_manifest, "partial": n < n_manifest,
                "comparable": n >= n_manifest and (min_n is None or n >= min_n)}

    def _complete(self, run: MethodRun) -> bool:
        """Whether every sample of the unsharded dataset (after `dataset.limit`) has a record."""
        missing = [sid for sid in self.dataset.sample_ids if run.store.read_record(sid, verify=False) is None]
        if missing:
            log.info("%s: %d sample(s) of the dataset have no record yet (other shards?): set-level "
                     "metrics skipped; the job that completes the run computes them", run.label, len(missing))
        return not missing

    def _finish(self) -> None:
        for run in self.runs:
            if self.set_metrics and self._complete(run):
                self._score_sets(run)
            self._report_redone(run)
            self._invocation[run.label].update(
                {"end": provenance.now(), "ok": run.ok, "failed": run.failed, "skipped": run.skipped,
                 "rescored": run.rescored, "redone_changed_inputs": run.redone_changed_inputs,
                 "redone_damaged": run.redone_damaged}
            )
            self._write_invocation(run)
            run.store.write_provenance(run.store.provenance())
            self._settle_data_provenance(run)
            records = run.store.records()
            self._warn_if_guidance_inert(run, records)
            if self.logger is not None:
                self.logger.finish_run(run.label, records)

    @staticmethod
    def _warn_if_guidance_inert(run: MethodRun, records: list[dict]) -> None:
        """A guided run whose guidance barely acted, or whose matching is pinned to position, says so."""
        for finding in diagnostics.findings(diagnostics.run_summary(records), run.label):
            log.warning("run %s (%s): %s", run.label, run.store.run_dir, finding)

    def _report_redone(self, run: MethodRun) -> None:
        """Say how many stored results were not trusted (and so redone) in this invocation."""
        if run.redone_changed_inputs:
            log.warning("%s: %d sample(s) redone: their records were made from input files that have changed "
                        "since (sha256 differ from the manifest's)", run.label, run.redone_changed_inputs)
        if run.redone_damaged:
            log.warning("%s: %d sample(s) redone: their stored outputs were missing or differed from the sha256 "
                        "in their records", run.label, run.redone_damaged)
