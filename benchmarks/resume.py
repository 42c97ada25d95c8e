"""Resume cost of trusting stored results only once verified (issue 17).

On resume the runner trusts a finished sample only when its stored image (and video frames) hash to
the sha256 its record holds, and when the record's input hashes equal the manifest's
(`RunStore.check_record`, `Runner._inputs_changed`): one hash per stored file. This measures what
that costs when every sample is already done, i.e. the wall time of a resume as `semantix-bench`
runs it (`Runner(cfg, labels).run()` plus the leaderboard), median of `--repeats`:

- `resume_s`: as shipped (outputs hashed);
- `resume_existence_only_s`: the same with output hashing switched off (files only checked to
  exist, as before issue 17); the difference is the cost of the hash check;
- `hash_only_s`: reading and hashing the stored files alone.

Two finished runs:

- demo: the demo experiment (`experiment=demo`: 8 samples x its methods, tiny backbone), made by
  running it once (`--demo-methods` picks fewer methods for a quick look);
- synthetic: `--records` (1000) records of one method written directly (no method runs), each with
  a 512 x 512 output PNG of photo-like entropy, over a manifest of 100 contents x 10 styles (512 px
  PNGs). Resumed twice: with the inputs' sha256 in the manifest (as `semantix-prep` writes it), and
  without them (the input files are then hashed too, once per file).

    python -m benchmarks.resume                       # -> results/benchmarks/resume-<device>.json
    python -m benchmarks.resume --records 200 --demo-methods identity reinhard --repeats 1

Target: a finished 1000-sample run resumes in a few seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from semantix import provenance
from semantix.config import RunLabels, compose_job
from semantix.data.manifest import write_manifest
from semantix.io import atomic_write_json, png_bytes_to_image
from semantix.leaderboard import write_leaderboard
from semantix.runner import Runner, sample_seed
from semantix.store import RunStore

TARGET_S = 5.0  # "a few seconds" for a finished 1000-sample run


def _resume_once(cfg: DictConfig, labels: RunLabels, verify: bool) -> float:
    original = RunStore.check_record
    if not verify:
        RunStore.check_record = lambda self, sample_id, verify=True: original(self, sample_id, False)
    try:
        start = time.perf_counter()
        result = Runner(cfg, labels).run()
        results = Path(cfg.paths.results_dir)
        write_leaderboard(results / "runs", results / "leaderboard.csv", results / "leaderboard.md")
        seconds = time.perf_counter() - start
    finally:
        RunStore.check_record = original
    redone = [(r.label, r.ok, r.failed, r.rescored) for r in result.runs if r.ok or r.failed or r.rescored]
    if redone:
        raise RuntimeError(f"the run was not finished (label, ok, failed, rescored): {redone}")
    return seconds


def _hash_only(run_dirs: list[Path]) -> tuple[float, int, int]:
    """Seconds to read and hash every stored output of the runs' records; files and bytes."""
    files = [run_dir / r[key] if key == "image" else run_dir / frame
             for run_dir in run_dirs for r in RunStore(run_dir).records() if r.get("status") == "ok"
             for key in ("image", "frames") if key in r
             for frame in (r["frames"] if key == "frames" else [None])]
    start = time.perf_counter()
    total = 0
    for path in files:
        data = path.read_bytes()
        total += len(data)
        hashlib.sha256(data).hexdigest()
    return time.perf_counter() - start, len(files), total


def measure(cfg: DictConfig, labels: RunLabels, repeats: int) -> dict:
    _resume_once(cfg, labels, verify=True)  # warm: imports, file system cache (both variants see it warm)
    verified, existence = [], []
    for _ in range(repeats):
        existence.append(_resume_once(cfg, labels, verify=False))
        verified.append(_resume_once(cfg, labels, verify=True))
    run_dirs = [run.run_dir for run in Runner(cfg, labels).runs]
    hash_s, n_files, n_bytes = _hash_only(run_dirs)
    n_records = sum(len(list((d / "records").glob("*.json"))) for d in run_dirs)
    resume, before = statistics.median(verified), statistics.median(existence)
    return {
        "records": n_records, "stored_files_hashed": n_files, "stored_bytes": n_bytes,
        "resume_s": round(resume, 3), "resume_existence_only_s": round(before, 3),
        "hash_check_s": round(resume - before, 3), "hash_only_s": round(hash_s, 3),
        "hash_check_ms_per_record": round(1000 * (resume - before) / max(n_records, 1), 3),
        "resume_runs_s": [round(s, 3) for s in verified], "resume_existence_only_runs_s": [round(s, 3) for s in existence],
    }


def demo(work: Path, methods: list[str] | None, repeats: int) -> dict:
    overrides = ["experiment=demo", f"paths.results_dir={work / 'demo'}", f"paths.cache_dir={work / 'demo-cache'}"]
    if methods:
        overrides.append(f"method=[{','.join(methods)}]")
    cfg, labels = compose_job([*overrides, "runner.progress=false"])
    start = time.perf_counter()
    Runner(cfg, labels).run()
    first = time.perf_counter() - start
    return {"methods": list(cfg.method), "first_run_s": round(first, 2), **measure(cfg, labels, repeats)}


def _photo_like_png(rng: np.random.Generator, size: int = 512) -> bytes:
    """A PNG whose size is near a photo's at `size` px (smooth colour fields plus fine noise)."""
    import io

    coarse = rng.uniform(0, 255, (size // 32, size // 32, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32)
    image = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic(work: Path, n_records: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    data = work / "synthetic-data"
    data.mkdir(parents=True)
    contents, styles = [f"content_{i:03d}.png" for i in range(100)], [f"style_{j}.png" for j in range(10)]
    for name in contents + styles:
        (data / name).write_bytes(_photo_like_png(rng))
    sha = {name: hashlib.sha256((data / name).read_bytes()).hexdigest() for name in contents + styles}
    rows = [{"sample_id": f"{c[:-4]}__{s[:-4]}", "content": c, "reference": s, "content_sha256": sha[c],
             "reference_sha256": sha[s]} for c in contents for s in styles][:n_records]
    manifest = write_manifest(rows, data / "manifest.csv")
    overrides = ["dataset=manifest", f"dataset.manifest={manifest}", "method=identity", "metrics=demo",
                 f"paths.results_dir={work / 'synthetic'}", f"paths.cache_dir={work / 'synthetic-cache'}"]
    cfg, labels = compose_job([*overrides, "runner.progress=false"])
    runner = Runner(cfg, labels)
    store = runner.runs[0].store
    start = time.perf_counter()
    for row in rows:  # what the runner writes for a finished sample, without running anything
        sample_id = row["sample_id"]
        image, image_sha256 = store.save_image(sample_id, png_bytes_to_image(_photo_like_png(rng)))
        store.write_record({
            "sample_id": sample_id, "method": "identity", "status": "ok", "error": None,
            "seed": sample_seed(cfg.seed, sample_id), "inputs": runner.dataset.input_sha256(sample_id),
            "image": image, "image_sha256": image_sha256,
            "metrics": {name: 0.5 for name in runner.metrics},
            "metric_config": {name: runner.metric_hashes[name] for name in runner.metrics},
            "diagnostics": {}, "timings": {},
        })
    written = time.perf_counter() - start
    declared = measure(cfg, labels, repeats)
    # The same manifest without its hash columns: each input file is hashed (once) on resume.
    write_manifest([{k: v for k, v in row.items() if not k.endswith("_sha256")} for row in rows], manifest)
    hashed_inputs = measure(cfg, labels, repeats)
    input_bytes = sum((data / name).stat().st_size for name in contents + styles)
    return {"records": len(rows), "input_files": len(contents) + len(styles), "input_bytes": input_bytes,
            "records_written_s": round(written, 2), "input_sha256_in_manifest": declared,
            "input_sha256_not_in_manifest": hashed_inputs,
            "target_s": TARGET_S, "meets_target": declared["resume_s"] <= TARGET_S
            and hashed_inputs["resume_s"] <= TARGET_S}


def device_slug() -> str:
    return torch.cuda.get_device_name().lower().replace(" ", "-") if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="synthetic records (at most 1000)")
    parser.add_argument("--demo-methods", nargs="*", default=None, help="methods of the demo run (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = {
        "benchmark": "resume", "device": device_slug(), "device_info": provenance.device_info(),
        "git": provenance.git_state(), "versions": provenance.package_versions(), "time": provenance.now(),
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="semantix-resume-") as tmp:
        work = Path(tmp)
        report["demo"] = demo(work, args.demo_methods, args.repeats)
        report["synthetic"] = synthetic(work, min(args.records, 1000), args.repeats)
    out = args.out or Path("results/benchmarks") / f"resume-{report['device']}.json"
    atomic_write_json(out, report)
    for name in ("demo",):
        part = report[name]
        print(f"{name}: {part['records']} records, resume {part['resume_s']} s "
              f"(existence only {part['resume_existence_only_s']} s, hashing alone {part['hash_only_s']} s)")
    for variant in ("input_sha256_in_manifest", "input_sha256_not_in_manifest"):
        part = report["synthetic"][variant]
        print(f"synthetic, {variant}: {part['records']} records, resume {part['resume_s']} s "
              f"(existence only {part['resume_existence_only_s']} s, hashing alone {part['hash_only_s']} s)")
    print(f"-> {out}")
    return report


if __name__ == "__main__":
    main()
