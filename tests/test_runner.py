"""The benchmark loop: records, resume, re-scoring, fault isolation, determinism."""

from __future__ import annotations

import json

import plugins_for_tests
import pytest
from harness import comparable, manifest_overrides, run_job

from semantix.io import stable_hash
from semantix.store import RunStore, load_run

SLOW = "+method.slow={_target_: plugins_for_tests.SlowNoisyIdentity, delay_s: 0.0}"


def test_job_writes_records_images_provenance(small_dataset, tmp_path):
    result = run_job([*manifest_overrides(small_dataset), "method=[identity,reinhard]"], tmp_path / "r")
    assert [r.label for r in result.runs] == ["identity", "reinhard"]
    for run in result.runs:
        assert (run.ok, run.failed, run.skipped) == (4, 0, 0)
        store = RunStore(run.run_dir)
        records = store.records()
        assert len(records) == 4
        for record in records:
            assert record["status"] == "ok"
            assert set(record["metrics"]) == {"ssim_grey", "colour_histogram"}
            assert (run.run_dir / record["image"]).is_file()
            assert set(record["timings"]) == {"load_s", "method_s", "metrics_s"}
            assert record["inputs"]["content"]
        prov = json.loads((run.run_dir / "provenance.json").read_text())
        for key in ("git", "versions", "device", "seeds", "data", "invocations", "config_hash"):
            assert key in prov, key
        assert prov["data"]["manifest_sha256"]
        assert prov["versions"]["torch"] and prov["versions"]["diffusers"] and prov["versions"]["transformers"]
        assert prov["invocations"][-1]["end"] is not None
        assert (run.run_dir / "config.yaml").read_text().count("_target_") >= 1
    identity_ssim = [r["metrics"]["ssim_grey"] for r in RunStore(result.runs[0].run_dir).records()]
    assert identity_ssim == pytest.approx([1.0] * 4)  # identity reproduces the content exactly


def test_second_run_skips_everything(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=reinhard"]
    first = run_job(overrides, tmp_path / "r").runs[0]
    before = {r["sample_id"]: r for r in RunStore(first.run_dir).records()}
    second = run_job(overrides, tmp_path / "r").runs[0]
    assert second.run_dir == first.run_dir
    assert (second.ok, second.skipped, second.rescored) == (0, 4, 0)
    after = {r["sample_id"]: r for r in RunStore(second.run_dir).records()}
    assert after == before  # nothing rewritten, nothing duplicated
    prov = json.loads((second.run_dir / "provenance.json").read_text())
    assert len(prov["invocations"]) == 2


def test_resume_after_partial_run_equals_uninterrupted(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=[]", SLOW]
    # Interrupted: only the first 2 samples made it (what a crash after sample 2 leaves behind).
    partial = run_job([*overrides, "dataset.limit=2"], tmp_path / "a").runs[0]
    assert partial.ok == 2
    resumed = run_job(overrides, tmp_path / "a").runs[0]
    assert resumed.run_dir == partial.run_dir  # the limit is not part of the run's identity
    assert (resumed.ok, resumed.skipped) == (2, 2)
    whole = run_job(overrides, tmp_path / "b").runs[0]
    as_resumed = sorted(map(comparable, RunStore(resumed.run_dir).records()), key=lambda r: r["sample_id"])
    as_whole = sorted(map(comparable, RunStore(whole.run_dir).records()), key=lambda r: r["sample_id"])
    assert as_resumed == as_whole


def test_run_identity_is_stored_and_recomputed_for_runs_written_without_it(small_dataset, tmp_path):
    """identity.json holds the dict whose hash names the run directory, without what only chooses
    where, how fast or how much of the run executes; a run written before identity.json existed
    gets the same dict back from its config.yaml."""
    where_and_how_much = ["dataset.limit=3", "shard.count=2", "shard.index=1", "backbone.channels_last=true",
                          "backbone.compile_unet=true", "backbone.device=cpu"]
    run = run_job([*manifest_overrides(small_dataset), "method=reinhard", *where_and_how_much], tmp_path / "r").runs[0]
    stored = load_run(run.run_dir).identity
    assert run.run_dir.name == f"reinhard-{stable_hash(stored)}"
    assert set(stored) == {"method", "seed", "backbone", "dataset"}
    assert stored["method"]["name"] == "reinhard" and stored["seed"] == 0
    assert stored["backbone"]["name"] == "tiny" and stored["dataset"]["manifest"] == str(small_dataset)
    assert not {"device", "channels_last", "compile_unet"} & set(stored["backbone"])
    assert "limit" not in stored["dataset"]
    plain = run_job([*manifest_overrides(small_dataset), "method=reinhard"], tmp_path / "r").runs[0]
    assert plain.run_dir == run.run_dir
    (run.run_dir / "identity.json").unlink()
    assert RunStore(run.run_dir).identity() == stored


def test_torn_record_is_redone(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=identity"]
    run = run_job(overrides, tmp_path / "r").runs[0]
    store = RunStore(run.run_dir)
    store.record_path("content_1__style_1").write_text('{"sample_id": "content_1__st')  # torn write
    (run.run_dir / "images" / "content_2__style_0.png").unlink()  # record without its image
    again = run_job(overrides, tmp_path / "r").runs[0]
    assert (again.ok, again.skipped) == (2, 2)
    assert all(r["status"] == "ok" for r in store.records())


def test_method_failure_is_isolated_and_retried(small_dataset, tmp_path):
    fails = "+method.flaky={_target_: plugins_for_tests.FailsOn, sample_ids: [content_1__style_1]}"
    result = run_job([*manifest_overrides(small_dataset), "method=identity", fails], tmp_path / "r")
    flaky = {r.label: r for r in result.runs}["flaky"]
    assert (flaky.ok, flaky.failed) == (3, 1)
    assert result.n_failed == 1
    record = RunStore(flaky.run_dir).read_record("content_1__style_1")
    assert record["status"] == "failed"
    assert record["error"]["stage"] == "method"
    assert record["error"]["type"] == "RuntimeError"
    assert "deliberate failure on content_1__style_1" in record["error"]["message"]
    # The failed sample is retried on the next run; the good ones are not.
    again = {r.label: r for r in run_job([*manifest_overrides(small_dataset), "method=identity", fails],
                                         tmp_path / "r").runs}["flaky"]
    assert (again.failed, again.skipped) == (1, 3)
    kept = {r.label: r for r in run_job([*manifest_overrides(small_dataset), "method=identity", fails,
                                         "runner.retry_failed=false"], tmp_path / "r").runs}["flaky"]
    assert (kept.failed, kept.skipped) == (0, 4)


def test_method_values_without_a_selected_method_are_a_clear_error(small_dataset, tmp_path):
    with pytest.raises(ValueError, match="has no _target_"):
        run_job([*manifest_overrides(small_dataset), "method=identity", "+method.ghost.num_steps=3"], tmp_path)


def test_bad_output_is_a_failed_record(small_dataset, tmp_path):
    bad = "+method.bad={_target_: plugins_for_tests.WrongShape}"
    run = run_job([*manifest_overrides(small_dataset), "method=[]", bad], tmp_path / "r").runs[0]
    assert run.failed == 4
    record = RunStore(run.run_dir).records()[0]
    assert "shape (3, 8, 8)" in record["error"]["message"]


def test_changed_metric_config_rescores_without_rerunning(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=[]", SLOW]
    first = run_job(overrides, tmp_path / "r").runs[0]
    old = {r["sample_id"]: r for r in RunStore(first.run_dir).records()}
    plugins_for_tests.CALLS.clear()
    second = run_job([*overrides, "metrics.colour_histogram.bins=4"], tmp_path / "r").runs[0]
    assert plugins_for_tests.CALLS == []  # the method did not run again
    assert (second.rescored, second.ok) == (4, 0)
    new = {r["sample_id"]: r for r in RunStore(second.run_dir).records()}
    for sid in old:
        assert new[sid]["image_sha256"] == old[sid]["image_sha256"]
        assert new[sid]["metrics"]["ssim_grey"] == old[sid]["metrics"]["ssim_grey"]
        assert new[sid]["metric_config"]["colour_histogram"] != old[sid]["metric_config"]["colour_histogram"]
    assert any(new[s]["metrics"]["colour_histogram"] != old[s]["metrics"]["colour_histogram"] for s in old)


def test_same_seed_same_output_different_seed_differs(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=[]", SLOW]
    a = RunStore(run_job(overrides, tmp_path / "a").runs[0].run_dir).records()
    b = RunStore(run_job(overrides, tmp_path / "b").runs[0].run_dir).records()
    c = RunStore(run_job([*overrides, "seed=1"], tmp_path / "c").runs[0].run_dir).records()
    sha = lambda records: sorted((r["sample_id"], r["image_sha256"]) for r in records)  # noqa: E731
    assert sha(a) == sha(b)
    assert sha(a) != sha(c)


def test_set_metric_scored_once_per_run_and_reported(small_dataset, tmp_path):
    import pandas as pd

    from semantix.data.images import open_image, to_tensor
    from semantix.io import load_png
    from semantix.leaderboard import write_leaderboard

    gap = "+metrics.brightness_gap={_target_: plugins_for_tests.MeanBrightnessGap}"
    overrides = [*manifest_overrides(small_dataset), "method=reinhard", gap]
    plugins_for_tests.MeanBrightnessGap.UPDATES.clear()
    run = run_job(overrides, tmp_path / "r").runs[0]
    assert len(plugins_for_tests.MeanBrightnessGap.UPDATES) == 4
    summary = json.loads((run.run_dir / "summary.json").read_text())["set_metrics"]["brightness_gap"]
    # Independent answer from the stored images and the input files.
    records = RunStore(run.run_dir).records()
    outputs = [float(load_png(run.run_dir / r["image"]).mean()) for r in records]
    dataset_root = small_dataset.parent
    refs = []
    for r in records:
        row = r["sample_id"]
        names = {"content_0__style_0": ["style_0"], "content_1__style_1": ["style_1"],
                 "content_2__style_0": ["style_0"], "content_0__multi": ["style_0", "style_1"]}[row]
        refs += [float(to_tensor(open_image(dataset_root / f"{n}.png"), 64).mean()) for n in names]
    assert summary["value"] == pytest.approx(abs(sum(outputs) / 4 - sum(refs) / len(refs)), abs=1e-6)
    assert summary["n"] == 4 and summary["n_references"] == 5
    # Nothing changed: the next run does not recompute it.
    run_job(overrides, tmp_path / "r")
    assert len(plugins_for_tests.MeanBrightnessGap.UPDATES) == 4
    table = write_leaderboard(tmp_path / "r" / "runs", tmp_path / "lb.csv", tmp_path / "lb.md")
    assert table.loc[0, "brightness_gap_set"] == pytest.approx(summary["value"])
    assert "brightness_gap ↓" in (tmp_path / "lb.md").read_text()
    assert pd.read_csv(tmp_path / "lb.csv").loc[0, "brightness_gap_n"] == 4


def test_tiny_metric_preset_end_to_end(tmp_path):
    """metrics=tiny: every metric's real code path (random weights), per-sample and set-level."""
    run = run_job(["dataset=demo", "dataset.limit=3", "method=reinhard", "metrics=tiny"], tmp_path / "r").runs[0]
    assert (run.ok, run.failed) == (3, 0), run.errors
    per_sample = {"lpips", "cfsd", "clip_style", "clip_content", "gram", "structure_dino", "dino_appearance",
                  "colour_histogram", "correspondence_colour", "ssim_grey"}
    for record in RunStore(run.run_dir).records():
        assert set(record["metrics"]) == per_sample
        assert all(v == v for v in record["metrics"].values())  # no NaN
    summary = json.loads((run.run_dir / "summary.json").read_text())["set_metrics"]
    assert summary["fid"]["n_outputs"] == 3 and summary["fid"]["inception"] == "random-art"
    assert summary["artfid"]["value"] == pytest.approx((1 + summary["artfid"]["lpips"]) * (1 + summary["artfid"]["fid"]),
                                                      rel=1e-5)
    described = json.loads((run.run_dir / "metrics.json").read_text())
    assert described["fid"]["set_level"] is True and described["lpips"]["higher_is_better"] is False
