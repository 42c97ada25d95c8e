"""Nothing stale, every write failure clean (issue 17): stored results are trusted only when their
files hash to what their records hold and their inputs are the manifest's; ids map one-to-one to
bounded file names; write failures of one sample fail that sample, of the results directory stop the
job (exit 101), of the cache only turn caching off; temporary files of killed writes are removed."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose, run_cli, write_png
from harness import comparable, manifest_overrides, run_job

from semantix import io as io_module
from semantix import store as store_module
from semantix.data.manifest import Manifest, write_manifest
from semantix.diffusion import cache as cache_module
from semantix.diffusion.cache import TensorCache
from semantix.io import ResultsNotWritable, remove_stale_temporaries, temporary_path
from semantix.leaderboard import build_table, to_markdown
from semantix.store import RunStore, StoredFileError, legacy_filename, safe_filename

IDS = ["content_0__style_0", "content_1__style_1", "content_2__style_0", "content_0__multi"]


def _records(run) -> dict[str, dict]:
    return {r["sample_id"]: r for r in RunStore(run.run_dir).records()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- stored outputs are verified by their sha256 ---------------------------------------------------
def test_damaged_stored_images_are_redone_not_counted_as_finished(small_dataset, tmp_path, caplog):
    overrides = [*manifest_overrides(small_dataset), "method=reinhard"]
    first = run_job(overrides, tmp_path / "r").runs[0]
    before = _records(first)
    images = {sid: first.run_dir / before[sid]["image"] for sid in IDS}
    data = images[IDS[0]].read_bytes()
    images[IDS[0]].write_bytes(data[: len(data) // 2])  # truncated
    images[IDS[1]].write_bytes(b"")  # zero bytes
    a, b = images[IDS[2]].read_bytes(), images[IDS[3]].read_bytes()
    images[IDS[2]].write_bytes(b)  # two outputs swapped: each a valid PNG, of the other sample
    images[IDS[3]].write_bytes(a)
    with caplog.at_level(logging.WARNING):
        again = run_job(overrides, tmp_path / "r").runs[0]
    assert (again.ok, again.skipped) == (4, 0)
    assert again.redone_damaged == 4
    assert "4 sample(s) redone: their stored outputs were missing or differed" in caplog.text
    after = _records(again)
    assert {sid: comparable(r) for sid, r in after.items()} == {sid: comparable(r) for sid, r in before.items()}
    assert all(_sha(again.run_dir / r["image"]) == r["image_sha256"] for r in after.values())
    third = run_job(overrides, tmp_path / "r").runs[0]
    assert (third.ok, third.skipped) == (0, 4)  # intact outputs are trusted (one hash each)


def test_damaged_video_frame_is_redone(tmp_path):
    root = tmp_path / "data"
    write_png(root / "style.png", size=(64, 64), seed=50)
    frames = [write_png(root / "clip" / f"{i:03d}.png", size=(64, 64), seed=i) for i in range(3)]
    manifest = write_manifest([{"sample_id": "clip", "content": "clip/000.png", "reference": "style.png",
                                "frames": ";".join(str(f.relative_to(root)) for f in frames)}],
                              root / "manifest.csv")
    overrides = [*manifest_overrides(manifest), "method=frames_reinhard", "backbone=tiny_video", "metrics=demo"]
    first = run_job(overrides, tmp_path / "r").runs[0]
    record = _records(first)["clip"]
    frame = first.run_dir / record["frames"][1]
    original = frame.read_bytes()
    frame.write_bytes(original[:-20])
    again = run_job(overrides, tmp_path / "r").runs[0]
    assert (again.ok, again.skipped) == (1, 0)
    assert again.redone_damaged == 1
    assert frame.read_bytes() == original
    assert comparable(_records(again)["clip"]) == comparable(record)


def test_store_loads_only_intact_outputs(small_dataset, tmp_path):
    run = run_job([*manifest_overrides(small_dataset), "method=identity"], tmp_path / "r").runs[0]
    store = RunStore(run.run_dir)
    record = store.read_record(IDS[0])
    assert torch.equal(store.load_image(record), store.load_image(dict(record)))
    (run.run_dir / record["image"]).write_bytes(b"\x89PNG broken")
    with pytest.raises(StoredFileError, match="differs from the sha256"):
        store.load_image(record)
    check = store.check_record(IDS[0])
    assert check.record is None and check.problem == "outputs"
    assert store.read_record(IDS[0], verify=False) is not None  # present, only not verified


# -- every read and write of a sample is that sample's ---------------------------------------------
def test_broken_stored_image_during_rescoring_fails_that_sample_only(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=identity"]
    first = run_job(overrides, tmp_path / "r").runs[0]
    image = first.run_dir / _records(first)[IDS[1]]["image"]
    image.write_bytes(image.read_bytes()[:100])
    # A changed metric config: the intact samples are re-scored, the broken one is redone; no job error.
    second = run_job([*overrides, "metrics.colour_histogram.bins=4"], tmp_path / "r").runs[0]
    assert (second.rescored, second.ok, second.failed) == (3, 1, 0)
    records = _records(second)
    hashes = {r["metric_config"]["colour_histogram"] for r in records.values()}
    assert len(hashes) == 1  # every value of the run under one metric config


def test_stored_file_breaking_between_check_and_rescore_fails_only_that_sample(small_dataset, tmp_path,
                                                                             monkeypatch):
    overrides = [*manifest_overrides(small_dataset), "method=identity"]
    run_job(overrides, tmp_path / "r")
    real = RunStore.load_image

    def flaky(self, record):
        if record["sample_id"] == IDS[2]:
            raise StoredFileError(f"image of {record['sample_id']} cannot be read (simulated)")
        return real(self, record)

    monkeypatch.setattr(RunStore, "load_image", flaky)
    second = run_job([*overrides, "metrics.colour_histogram.bins=4"], tmp_path / "r").runs[0]
    assert (second.rescored, second.failed) == (3, 1)
    failed = _records(second)[IDS[2]]
    assert failed["status"] == "failed" and failed["error"]["stage"] == "rescore"
    assert "simulated" in failed["error"]["message"]
    monkeypatch.setattr(RunStore, "load_image", real)
    third = run_job([*overrides, "metrics.colour_histogram.bins=4"], tmp_path / "r").runs[0]
    assert (third.ok, third.skipped) == (1, 3)  # retried like any failed sample


def test_a_write_error_of_one_sample_fails_that_sample(small_dataset, tmp_path, monkeypatch):
    real = RunStore.save_image

    def failing(self, sample_id, image):
        if sample_id == IDS[1]:
            raise OSError(errno.ENAMETOOLONG, "File name too long (simulated)", "images/x.png")
        return real(self, sample_id, image)

    monkeypatch.setattr(RunStore, "save_image", failing)
    run = run_job([*manifest_overrides(small_dataset), "method=identity"], tmp_path / "r").runs[0]
    assert (run.ok, run.failed) == (3, 1)
    record = _records(run)[IDS[1]]
    assert record["error"]["stage"] == "store" and "too long" in record["error"]["message"]


def test_leaderboard_never_averages_values_of_different_metric_configs(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=identity"]
    run = run_job(overrides, tmp_path / "r").runs[0]
    # One record still holds a value of an earlier colour_histogram config (as a job stopped mid-way
    # through re-scoring leaves it).
    store = RunStore(run.run_dir)
    record = store.read_record(IDS[0])
    record["metrics"]["colour_histogram"] = 999.0
    record["metric_config"]["colour_histogram"] = "0ldc0nf1ghash"
    store.write_record(record)
    summary = store.summary()
    summary["set_metrics"] = {"colour_histogram": {"value": 5.0, "n": 4, "config_hash": "0ldc0nf1ghash"}}
    store.write_summary(summary)
    table, info = build_table(tmp_path / "r" / "runs")
    row = table.iloc[0]
    values = [r["metrics"]["colour_histogram"] for sid, r in _records(run).items() if sid != IDS[0]]
    assert row["colour_histogram_mean"] == pytest.approx(sum(values) / 3)
    assert row["colour_histogram_missing"] == 1 and row["ssim_grey_missing"] == 0
    assert row["n_ok"] == 4
    assert str(row["colour_histogram_set"]) == "nan"  # a set value of another config is left out
    assert "(1 missing)" in to_markdown(table, info)


# -- records whose inputs changed are redone; provenance follows the records ------------------------
def _hashed_manifest(root: Path, ids: dict[str, tuple[str, str]]) -> Path:
    rows = [{"sample_id": sid, "content": c, "reference": r, "content_sha256": _sha(root / c),
             "reference_sha256": _sha(root / r)} for sid, (c, r) in ids.items()]
    return write_manifest(rows, root / "manifest.csv")


def test_record_of_a_replaced_input_is_redone_and_provenance_claims_only_used_inputs(tmp_path, caplog):
    root = tmp_path / "data"
    for i in range(3):
        write_png(root / f"content_{i}.png", seed=i)
    write_png(root / "style.png", size=(72, 72), seed=100)
    ids = {f"s{i}": (f"content_{i}.png", "style.png") for i in range(3)}
    manifest = _hashed_manifest(root, ids)
    overrides = [*manifest_overrides(manifest), "method=identity"]
    first = run_job(overrides, tmp_path / "r").runs[0]
    old_manifest_sha = _sha(manifest)
    old = _records(first)

    write_png(root / "content_2.png", seed=42)  # s2's content replaced, and the manifest updated
    manifest = _hashed_manifest(root, ids)
    new_manifest_sha = _sha(manifest)
    # An invocation that does not reach s2 (dataset.limit) leaves its stale record: no new claim yet.
    partial = run_job([*overrides, "dataset.limit=2"], tmp_path / "r").runs[0]
    assert (partial.ok, partial.skipped) == (0, 2)
    data = json.loads((first.run_dir / "provenance.json").read_text())["data"]
    assert data["manifest_sha256"] == old_manifest_sha
    assert data["manifest_sha256_pending"] == new_manifest_sha

    with caplog.at_level(logging.WARNING):
        again = run_job(overrides, tmp_path / "r").runs[0]
    assert (again.ok, again.skipped) == (1, 2)
    assert again.redone_changed_inputs == 1
    assert "1 sample(s) redone: their records were made from input files that have changed" in caplog.text
    new = _records(again)
    assert new["s2"]["inputs"]["content"] == _sha(root / "content_2.png") != old["s2"]["inputs"]["content"]
    assert new["s2"]["image_sha256"] != old["s2"]["image_sha256"]
    prov = json.loads((again.run_dir / "provenance.json").read_text())
    assert prov["data"]["manifest_sha256"] == new_manifest_sha and "manifest_sha256_pending" not in prov["data"]
    assert prov["invocations"][-1]["manifest_sha256"] == new_manifest_sha
    assert prov["invocations"][-1]["redone_changed_inputs"] == 1


def test_replaced_input_without_manifest_hashes_is_redone(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=identity"]
    run_job(overrides, tmp_path / "r")
    write_png(small_dataset.parent / "style_1.png", size=(72, 72), seed=7)  # used by two samples
    again = run_job(overrides, tmp_path / "r").runs[0]
    assert (again.ok, again.skipped) == (2, 2)
    assert again.redone_changed_inputs == 2
    assert run_job(overrides, tmp_path / "r").runs[0].skipped == 4


def test_manifest_input_hashes_equal_the_loaded_samples(small_dataset, tmp_path):
    from semantix.data import demo_manifest_path, demo_video_manifest_path

    root = tmp_path / "masks"
    for name, seed in (("c.png", 1), ("r0.png", 2), ("r1.png", 3)):
        write_png(root / name, seed=seed)
    for name in ("cm.png", "rm0.png", "rm1.png"):
        write_png(root / name, mode="L")
    masked = write_manifest([{"sample_id": "m", "content": "c.png", "reference": "r0.png;r1.png",
                              "content_mask": "cm.png", "reference_mask": "rm0.png;rm1.png",
                              "reference_sha256": f"{_sha(root / 'r0.png')};{_sha(root / 'r1.png')}"}],
                            root / "manifest.csv")
    for path in (small_dataset, demo_manifest_path(), demo_video_manifest_path(), masked):
        manifest = Manifest.load(path)
        for sid in manifest.sample_ids[:4]:
            assert manifest.input_sha256(sid) == manifest.load_sample(sid, 64).input_sha256, (path, sid)


# -- sample ids -> file names: one-to-one, bounded -------------------------------------------------
TRICKY_IDS = ["plain_id-1.2", "a/b", "a_b", "a\\b", "a:b", ".hidden", "..", "", "caf\u00e9", "cafe\u0301",
              "x" * 120, "x" * 121, "x" * 300, "x" * 299 + "y", "\u00e9" * 200, "with space", "a~b", "A", "a"]


def test_sample_ids_map_one_to_one_to_bounded_file_names():
    tricky = TRICKY_IDS + [legacy_filename("a/b"), safe_filename("a/b"), safe_filename("x" * 300)]
    names = {sid: safe_filename(sid) for sid in tricky}
    assert len(set(names.values())) == len(set(tricky))  # distinct ids never share a name
    for sid, name in names.items():
        assert re.fullmatch(r"[A-Za-z0-9._+=@,~-]+", name) and not name.startswith("."), (sid, name)
        assert len(name.encode()) <= 120
        temporary = temporary_path(Path("/x") / f"{name}.json").name
        assert len(temporary.encode()) <= 255 and temporary.startswith(".")
    assert safe_filename("plain_id-1.2") == "plain_id-1.2"  # readable ids stay as they are
    assert safe_filename("a/b").startswith("a_b~")  # a readable prefix plus a hash of the full id
    # Any target name: the temporary name stays within 255 bytes.
    assert len(temporary_path(Path("/x") / ("\U0001F600" * 63)).name.encode()) <= 255


def test_long_unicode_and_colliding_ids_all_finish_and_the_run_converges(tmp_path):
    root = tmp_path / "data"
    write_png(root / "c.png", seed=1)
    write_png(root / "s.png", size=(72, 72), seed=2)
    ids = ["x" * 230, "x" * 229 + "y", "a/b", legacy_filename("a/b"), "caf\u00e9/\u00e9t\u00e9", "plain"]
    manifest = write_manifest([{"sample_id": sid, "content": "c.png", "reference": "s.png"} for sid in ids],
                              root / "manifest.csv")
    overrides = [*manifest_overrides(manifest), "method=identity"]
    first = run_job(overrides, tmp_path / "r").runs[0]
    assert (first.ok, first.failed) == (6, 0)
    assert sorted(_records(first)) == sorted(ids)
    again = run_job(overrides, tmp_path / "r").runs[0]
    assert (again.ok, again.skipped) == (0, 6)  # converged
    row = build_table(tmp_path / "r" / "runs")[0].iloc[0]
    assert (row["n_ok"], row["n_missing"], row["n_duplicated"]) == (6, 0, 0)


def test_record_under_its_old_file_name_is_still_found_and_moved(tmp_path):
    sid = "a/b"
    store = RunStore(tmp_path / "run")
    record = {"sample_id": sid, "status": "failed", "error": {}, "metrics": {}}
    legacy = store.records_dir / f"{legacy_filename(sid)}.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps(record))
    assert store.read_record(sid) == record
    store.write_record(record)
    assert not legacy.exists() and store.record_path(sid).is_file()
    assert [r["sample_id"] for r in store.records()] == [sid]


# -- write failures --------------------------------------------------------------------------------
def _unwritable_results_dir(tmp_path: Path) -> Path:
    """A results directory nobody can create or write: a read-only folder for a normal user; as root
    (who ignores permissions) a path under /sys, where even root cannot create folders."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "results"
    path = Path("/sys/semantix-test-results")
    try:
        path.mkdir()
    except OSError:
        return path
    path.rmdir()
    pytest.skip("no unwritable location to test with")


def test_unwritable_results_directory_exits_101_naming_it(tmp_path):
    results = _unwritable_results_dir(tmp_path)
    out = run_cli(["semantix-bench", "method=identity", "dataset.limit=1", f"paths.results_dir={results}"],
                  cwd=tmp_path)
    assert out.returncode == 101, out.stderr[-2000:]
    assert str(results) in out.stderr and "cannot be written" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_full_results_disk_stops_the_job_naming_the_run_directory_and_resumes(small_dataset, tmp_path,
                                                                              monkeypatch):
    overrides = [*manifest_overrides(small_dataset), "method=reinhard"]
    real = store_module.atomic_write_bytes
    writes = {"n": 0}

    def filling(path, data):
        if Path(path).parent.name == "images":
            writes["n"] += 1
            if writes["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(store_module, "atomic_write_bytes", filling)
    with pytest.raises(ResultsNotWritable, match="run directory .* cannot be written .*No space left"):
        run_job(overrides, tmp_path / "r")
    monkeypatch.setattr(store_module, "atomic_write_bytes", real)
    resumed = run_job(overrides, tmp_path / "r").runs[0]
    assert (resumed.ok, resumed.skipped) == (2, 2)
    whole = run_job(overrides, tmp_path / "w").runs[0]
    assert {sid: comparable(r) for sid, r in _records(resumed).items()} == \
        {sid: comparable(r) for sid, r in _records(whole).items()}


def test_full_cache_warns_once_naming_its_folder_and_computes_without_caching(tmp_path, monkeypatch, caplog):
    def full(path, obj):  # the payload fits, its sidecar does not
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache_module, "atomic_write_json", full)
    root = tmp_path / "cache"
    calls = []
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # two methods sharing the folder
            cache = TensorCache(root)
            for i in range(3):
                value = cache.get_or_compute({"kind": "t", "i": i}, lambda i=i: calls.append(i) or torch.full((2,), i))
                assert torch.equal(value, torch.full((2,), i))
    assert len(calls) == 6 and not cache.writable
    warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warnings) == 1 and str(root) in warnings[0].getMessage()
    assert not any(p.is_file() for p in root.rglob("*"))  # no payload left without its sidecar


def test_read_only_prefilled_cache_is_read_through(tmp_path, monkeypatch, caplog):
    root = tmp_path / "shared-cache"
    TensorCache(root).save({"kind": "t", "i": 0}, torch.ones(3))

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(cache_module, "atomic_write_bytes", read_only)
    cache = TensorCache(root)
    assert torch.equal(cache.get_or_compute({"kind": "t", "i": 0}, lambda: torch.zeros(3)), torch.ones(3))
    assert torch.equal(cache.get_or_compute({"kind": "t", "i": 1}, lambda: torch.zeros(3)), torch.zeros(3))
    assert (cache.hits, cache.misses) == (1, 1)
    assert str(root) in caplog.text


def test_job_with_an_unwritable_cache_still_finishes_its_samples(tmp_path, monkeypatch, caplog):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache_module, "atomic_write_bytes", full)
    cache_dir = tmp_path / "full-cache"
    with caplog.at_level(logging.WARNING):
        run = run_job(["method=styleid_20steps", "method.styleid_20steps.num_steps=4", "dataset.limit=1",
                       f"paths.cache_dir={cache_dir}"], tmp_path / "r").runs[0]
    assert (run.ok, run.failed) == (1, 0), run.errors
    assert str(cache_dir) in caplog.text


# -- temporary files of killed writes ---------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_killed_writes_are_removed_at_the_next_start(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=identity", f"paths.cache_dir={tmp_path / 'cache'}"]
    run_dir = run_job(overrides, tmp_path / "r").runs[0].run_dir
    machine = io_module._MACHINE
    dead = _dead_pid()
    images = run_dir / "images"
    cache_folder = tmp_path / "cache" / "inversion" / "ab"
    cache_folder.mkdir(parents=True)
    planted = {
        # killed on this machine: its writer is gone
        images / f".x.png.{machine}-{dead}.{'a' * 16}.tmp": False,
        cache_folder / f".e.pt.{machine}-{dead}.{'b' * 16}.tmp": False,
        # of a writer still running (this process): kept
        images / f".y.png.{machine}-{os.getpid()}.{'c' * 16}.tmp": True,
        # from another machine: removed once older than any write, kept while recent
        images / f".z.png.otherhost_12345678-77.{'d' * 16}.tmp": True,
        run_dir / "records" / f".z.json.otherhost_12345678-77.{'e' * 16}.tmp": False,
        # the older name format, old
        images / f".w.png.{dead}.{'f' * 32}.tmp": False,
        # not ours: never touched
        images / ".notes.tmp": True,
    }
    old = time.time() - 2 * io_module.STALE_TEMPORARY_AGE_S
    for path, _ in planted.items():
        path.write_bytes(b"\0" * 1000)
    for path in (run_dir / "records" / f".z.json.otherhost_12345678-77.{'e' * 16}.tmp",
                 images / f".w.png.{dead}.{'f' * 32}.tmp"):
        os.utime(path, (old, old))
    cache_module._swept_roots.discard(str(tmp_path / "cache"))
    TensorCache(tmp_path / "cache")  # a method opening the cache
    run_job(overrides, tmp_path / "r")
    assert {path.name: path.exists() for path in planted} == {path.name: kept for path, kept in planted.items()}


def test_sigkill_inside_a_write_leaves_a_temporary_file_that_the_next_start_removes(tmp_path):
    target = tmp_path / "run" / "images" / "big.png"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from semantix.io import temporary_path\n"
        f"target = Path({str(target)!r}); target.parent.mkdir(parents=True)\n"
        "with open(temporary_path(target), 'wb') as f:\n"
        "    f.write(b'x' * 100000); f.flush()\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO)
    leftovers = list(target.parent.glob(".*.tmp"))
    assert len(leftovers) == 1 and not target.exists()
    assert remove_stale_temporaries(tmp_path / "run") == 1
    assert not list(target.parent.glob(".*.tmp"))


# -- Hydra output directories ----------------------------------------------------------------------
def test_each_shard_gets_its_own_hydra_output_directory():
    from omegaconf import OmegaConf

    dirs = set()
    for index in range(3):
        cfg = compose([f"shard.index={index}", "shard.count=3"])
        dirs.add(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])
    assert len(dirs) == 3
    assert all(re.search(r"\d\d-\d\d-\d\d\.\d{6}-shard\dof3$", d) for d in dirs)
