"""Dataset sharding: the split, shards merging into one run, concurrency, the submitit launcher."""

from __future__ import annotations

import json
import random

import pandas as pd
import plugins_for_tests
import pytest
from conftest import run_cli
from harness import composed, manifest_overrides, run_job

from semantix.leaderboard import build_table, write_leaderboard
from semantix.runner import MethodBars, Runner, shard_ids
from semantix.store import RunStore

GAP = "+metrics.brightness_gap={_target_: plugins_for_tests.MeanBrightnessGap}"
COMPARED = ["experiment", "dataset", "method", "backbone", "config_hash", "overrides", "n", "n_ok", "n_failed",
            "n_missing", "n_duplicated"]


def shard(index, count):
    return [f"shard.index={index}", f"shard.count={count}"]


def assert_same_leaderboard(sharded: pd.DataFrame, unsharded: pd.DataFrame, skip=()) -> None:
    assert list(sharded.columns) == list(unsharded.columns)
    keys = [c for c in COMPARED if c not in skip]
    pd.testing.assert_frame_equal(sharded[keys], unsharded[keys])
    means = [c for c in unsharded.columns if c.endswith(("_mean", "_ci95", "_set", "_n"))]
    assert means
    pd.testing.assert_frame_equal(sharded[means], unsharded[means], rtol=1e-9, atol=0)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shard_split_is_a_partition_independent_of_order(count):
    ids = [f"content_{i}__style_{i % 7}" for i in range(200)]
    shards = [shard_ids(ids, i, count) for i in range(count)]
    assert sorted(sid for s in shards for sid in s) == sorted(ids)  # every sample exactly once
    assert all(s == [sid for sid in ids if sid in set(s)] for s in shards)  # dataset order kept
    shuffled = ids[:]
    random.Random(count).shuffle(shuffled)
    assert [set(shard_ids(shuffled, i, count)) for i in range(count)] == [set(s) for s in shards]
    # A sample's shard depends on its id only: a subset (e.g. dataset.limit) keeps the assignment.
    assert [set(shard_ids(ids[:50], i, count)) for i in range(count)] == [set(s) & set(ids[:50]) for s in shards]
    if count >= 2:
        assert all(shards), "200 ids over at most 8 shards: none should be empty"


@pytest.mark.parametrize(("index", "count"), [(2, 2), (-1, 2), (0, 0)])
def test_shard_outside_range_is_a_clear_error(small_dataset, tmp_path, index, count):
    with pytest.raises(ValueError, match=r"shard\.(index|count)"):
        run_job([*manifest_overrides(small_dataset), "method=reinhard", *shard(index, count)], tmp_path / "r")


def test_merged_shards_equal_unsharded_and_set_metrics_wait_for_the_last_shard(small_dataset, tmp_path):
    overrides = [*manifest_overrides(small_dataset), "method=[identity,reinhard]", GAP]
    run_job(overrides, tmp_path / "whole")
    plugins_for_tests.MeanBrightnessGap.UPDATES.clear()
    first = run_job([*overrides, *shard(0, 2)], tmp_path / "sharded")
    n_first = first.runs[0].ok
    assert 0 < n_first < 4  # the 4 ids hash into both shards
    for run in first.runs:  # incomplete run: no set-level metric yet
        assert "brightness_gap" not in RunStore(run.run_dir).summary().get("set_metrics", {})
    assert plugins_for_tests.MeanBrightnessGap.UPDATES == []
    partial, _ = build_table(tmp_path / "sharded" / "runs")
    assert (partial["n_missing"] == 4 - n_first).all()
    second = run_job([*overrides, *shard(1, 2)], tmp_path / "sharded")
    assert [r.run_dir.name for r in second.runs] == [r.run_dir.name for r in first.runs]  # one run dir
    assert second.runs[0].ok == 4 - n_first
    for run in second.runs:
        assert RunStore(run.run_dir).summary()["set_metrics"]["brightness_gap"]["n"] == 4
    sharded, _ = build_table(tmp_path / "sharded" / "runs")
    unsharded, _ = build_table(tmp_path / "whole" / "runs")
    assert len(sharded) == 2 and (sharded["n_missing"] == 0).all() and (sharded["n_duplicated"] == 0).all()
    assert not sharded["overrides"].str.contains(r"\bshard\.").any()  # shard overrides are not part of the run
    assert_same_leaderboard(sharded, unsharded, skip=("overrides",))  # each job lists its own paths.results_dir


def test_provenance_survives_interleaved_shards(small_dataset, tmp_path):
    """Two shards started together and finishing in turn (as concurrent cluster jobs do) both keep their
    invocation, and the run's facts and metric descriptions stay whole."""
    base = [*manifest_overrides(small_dataset), "method=reinhard"]
    runners = []
    for index in (0, 1):
        cfg, labels = composed([*base, *shard(index, 2)], tmp_path / "r")
        runners.append(Runner(cfg, labels))
    for runner in runners:  # both write their run files before either processes a sample
        runner._prepare()
    for runner in runners:
        with MethodBars(runner.runs, len(runner.sample_ids), enabled=False) as bars:
            runner._process_group(runner.sample_ids, bars)
    for runner in reversed(runners):  # the later-started shard finishes first
        runner._finish()
    run_dir = runners[0].runs[0].run_dir
    assert runners[1].runs[0].run_dir == run_dir
    prov = json.loads((run_dir / "provenance.json").read_text())
    invocations = prov["invocations"]
    assert len(invocations) == 2 and all(inv["end"] is not None for inv in invocations)
    assert sorted((inv["shard"]["index"], inv["ok"]) for inv in invocations) == sorted(
        (r.shard_index, len(r.sample_ids)) for r in runners)
    assert sum(inv["ok"] for inv in invocations) == 4
    assert prov["data"]["n_samples"] == 4 and prov["config_hash"] == runners[0].runs[0].config_hash
    assert not any("shard" in o for o in prov["overrides"])
    assert set(json.loads((run_dir / "metrics.json").read_text())) == {"ssim_grey", "colour_histogram"}
    # A further run of either shard adds a third invocation and loses none.
    run_job([*base, *shard(0, 2)], tmp_path / "r")
    assert len(json.loads((run_dir / "provenance.json").read_text())["invocations"]) == 3


def test_duplicated_records_are_detected_and_counted_once(small_dataset, tmp_path):
    run = run_job([*manifest_overrides(small_dataset), "method=reinhard"], tmp_path / "r").runs[0]
    before, _ = build_table(tmp_path / "r" / "runs")
    record = RunStore(run.run_dir).read_record("content_0__multi")
    (run.run_dir / "records" / "copy-of-content_0__multi.json").write_text(json.dumps(record))
    table = write_leaderboard(tmp_path / "r" / "runs", tmp_path / "lb.csv", tmp_path / "lb.md")
    assert table.loc[0, "n_duplicated"] == 1 and table.loc[0, "n_missing"] == 0
    assert table.loc[0, "n_ok"] == 4
    assert table.loc[0, "ssim_grey_mean"] == before.loc[0, "ssim_grey_mean"]
    assert "1 duplicated" in (tmp_path / "lb.md").read_text()


def test_submitit_local_launcher_runs_two_shards_and_the_leaderboard_merges_them(tmp_path):
    """The cluster code path without a cluster: Hydra's submitit launcher in local mode, one job per shard."""
    common = ["dataset=demo", "dataset.limit=4", "method=reinhard"]
    results = tmp_path / "results"
    out = run_cli(["semantix-bench", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                   *common, "shard.count=2", "shard.index=0,1", f"paths.results_dir={results}",
                   "runner.progress=false"], cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert len(list(results.rglob(".submitit"))) == 1  # it really went through submitit
    run_dirs = sorted(p.parent for p in (results / "runs").rglob("provenance.json"))
    assert len(run_dirs) == 1
    invocations = json.loads((run_dirs[0] / "provenance.json").read_text())["invocations"]
    assert sorted(inv["shard"]["index"] for inv in invocations) == [0, 1]
    assert len({inv["pid"] for inv in invocations}) == 2  # two processes
    sharded = pd.read_csv(results / "leaderboard.csv")  # written by the jobs themselves
    run_job(common, tmp_path / "whole")
    write_leaderboard(tmp_path / "whole" / "runs", tmp_path / "whole.csv", tmp_path / "whole.md")
    unsharded = pd.read_csv(tmp_path / "whole.csv")
    assert sharded.loc[0, "n"] == 4 and sharded.loc[0, "n_missing"] == 0
    assert "shard" not in sharded.loc[0, "overrides"]
    assert_same_leaderboard(sharded, unsharded, skip=("overrides",))  # the CLI run lists what was typed
