"""benchmarks.run: the projected cost arithmetic, its Markdown labels, and a harness-only quick run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

# `benchmarks/` is a folder of the checkout, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness, run  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"


def method_entry(seconds_cold: float, steps: int = 20) -> dict:
    return {"steps_run": steps, "seconds_cold": seconds_cold, "seconds_warm_cache": seconds_cold / 2,
            "warm_seconds_per_step_over_plain_cfg_step": 2.0, "peak_cuda_gib": None, "peak_cuda_gib_cold": None}


def sampler_result(backbone: str, resolution: int, methods: dict, **extra) -> dict:
    return {"backbone": backbone, "resolution": resolution, "steps": 20, "weights": "random (seed 0)",
            "dtype": "torch.float32", "seconds": {"plain_cfg_step": 0.05, "semantix_pair_cold": 4.0},
            "ratios": {"semantix_step_over_plain_step": 3.1}, "methods": methods, **extra}


def sampler_report(device: str, results: list[dict]) -> dict:
    return {"benchmark": "sampler", "device": device, "time": "2026-01-01T00:00:00+00:00",
            "git": {"commit": "0123456789abcdef", "dirty": False}, "results": results}


def tiny_report() -> dict:
    return sampler_report("cpu", [sampler_result("tiny", 64, {"semantix": method_entry(10.0, 60),
                                                             "styleid": method_entry(5.0, 50)})])


def test_cost_arithmetic_on_a_synthetic_report():
    table = run.cost_table(tiny_report(), methods=["identity", "semantix", "styleid", "stylegallery"],
                           n_pairs=1000, shards=(1, 8, 32))
    rows = {row["method"]: row for row in table["rows"]}
    assert rows["semantix"]["hours_1_device"] == pytest.approx(1000 * 10.0 / 3600)
    assert rows["styleid"]["hours_1_device"] == pytest.approx(1000 * 5.0 / 3600)
    assert rows["semantix"]["wall_seconds"] == {"1": 10_000.0, "8": 125 * 10.0, "32": math.ceil(1000 / 32) * 10.0}
    assert rows["semantix"]["steps_run"] == 60
    assert not rows["identity"]["measured"] and "classical" in rows["identity"]["reason"]
    assert not rows["stylegallery"]["measured"] and "not in this sampler report" in rows["stylegallery"]["reason"]
    total = table["total"]
    assert total["methods"] == ["semantix", "styleid"]
    assert total["seconds_per_pair"] == pytest.approx(15.0)
    assert total["hours_1_device"] == pytest.approx(1000 * 15.0 / 3600)
    assert total["wall_seconds"]["32"] == pytest.approx(32 * 15.0)
    assert table["per_shard_load_seconds"] is None
    assert any("load time not included" in note for note in table["notes"])
    assert not table["is_gpu_projection"]


def test_shard_wall_time_uses_the_largest_shard_and_the_load():
    assert run.shard_wall_seconds(10, 2.0, 3) == 4 * 2.0  # shards of 4, 3, 3 pairs
    assert run.shard_wall_seconds(10, 2.0, 1) == 20.0
    assert run.shard_wall_seconds(10, 2.0, 32) == 2.0  # more shards than pairs: one pair each
    assert run.shard_wall_seconds(10, 2.0, 3, load_seconds=7.5) == 8.0 + 7.5
    report = sampler_report(H100, [sampler_result("sd15_random", 512, {"semantix": method_entry(6.0)},
                                                  backbone_load_seconds=30.0)])
    table = run.cost_table(report, methods=["semantix"], n_pairs=100, shards=(1, 8))
    assert table["per_shard_load_seconds"] == 30.0
    assert table["rows"][0]["wall_seconds"] == {"1": 600.0 + 30.0, "8": 13 * 6.0 + 30.0}
    assert table["rows"][0]["hours_1_device"] == pytest.approx(100 * 6.0 / 3600)  # device time, no load


def test_markdown_says_when_figures_are_tiny_on_cpu():
    text = run.render_cost_table(run.cost_table(tiny_report(), methods=["identity", "semantix", "styleid"]))
    assert "tiny backbone on CPU: not a projection for SD1.5" in text
    assert "GPU-hours" not in text and "hours, 1 CPU machine" in text
    assert "2026-01-01" in text and "0123456789ab" in text
    assert "| semantix | 60 | 10.00 | 2.78 | 2.8 h | 21 min | 5 min |" in text
    assert "| **all timed methods, one job** | | 15.00 | 4.17 |" in text
    assert "load time not included" in text


def test_markdown_names_the_gpu_and_backbone_and_prefers_sd15_at_512():
    report = sampler_report(H100, [
        sampler_result("tiny", 64, {"semantix": method_entry(3.0)}),
        sampler_result("sd15_random", 512, {"semantix": method_entry(7.2, 60)}),
    ])
    table = run.cost_table(report, methods=["semantix"])
    assert table["is_gpu_projection"] and table["source"]["backbone"] == "sd15_random"
    text = run.render_cost_table(table)
    assert H100 in text and "sd15_random backbone at 512 px" in text
    assert "not a projection" not in text
    assert "GPU-hours, 1 GPU" in text and "wall, 32 GPUs" in text
    assert "| semantix | 60 | 7.20 | 2.00 | 2.0 h | 15 min | 4 min |" in text


def test_markdown_flags_sd15_architecture_on_cpu_and_missing_figures():
    report = sampler_report("cpu", [sampler_result("sd15_random", 512, {"semantix": method_entry(90.0)})])
    text = run.render_cost_table(run.cost_table(report, methods=["semantix"]))
    assert "on cpu: a CPU cost, not a GPU projection" in text and "not a projection for SD1.5" in text
    text = run.render_cost_table(run.cost_table({}, methods=["semantix"]))
    assert "No sampler figures" in text


def test_compare_style_methods_come_from_the_experiment():
    methods = run.compare_style_methods()
    assert {"semantix", "styleid", "stylegallery", "eye_for_an_eye", "cross_image_attention", "reinhard"} <= set(methods)
    assert not any(m.endswith("20steps") or m.endswith("_fast") for m in methods)  # paper settings


def test_pick_sampler_report_prefers_a_gpu_measurement(tmp_path):
    cpu = tiny_report()
    gpu = sampler_report(H100, [sampler_result("sd15_random", 512, {"semantix": method_entry(7.0)})])
    (tmp_path / "sampler-nvidia-h100-80gb-hbm3.json").write_text(json.dumps(gpu))
    report, path = run.pick_sampler_report(tmp_path, current=cpu, current_path=tmp_path / "sampler-cpu.json")
    assert report["device"] == H100 and path.name == "sampler-nvidia-h100-80gb-hbm3.json"
    report, path = run.pick_sampler_report(tmp_path / "empty", current=cpu)
    assert report is cpu


def test_load_change_warning_flags_inconsistent_passes():
    steady = {"a": {"bare_seconds": 10.0, "job_over_bare": 1.05}, "b": {"bare_seconds": 0.5, "job_over_bare": 3.0},
              "c": {"bare_seconds": 0.0, "job_over_bare": None}}
    assert harness.load_change_warning(steady) is None  # b: under 1 s of work, not judged
    noisy = steady | {"d": {"bare_seconds": 40.0, "job_over_bare": 0.3}}
    assert "for d:" in harness.load_change_warning(noisy)


def _quick(tmp_path, extra: list[str]) -> tuple[dict, dict, str]:
    slug = run.slug(run.device_name())
    (tmp_path / f"sampler-{slug}.json").write_text(json.dumps(tiny_report()))  # an earlier sampler run
    result = run.main(["--quick", "--skip", "sampler", "metrics", "--out", str(tmp_path), *extra])
    combined = json.loads((tmp_path / f"{slug}.json").read_text())
    markdown = (tmp_path / f"{slug}.md").read_text()
    assert result["device"] == combined["device"]
    return combined, json.loads((tmp_path / "harness-cpu.json").read_text()), markdown


def test_quick_harness_only_run_writes_json_and_markdown(tmp_path):
    # The classical methods only: the whole pipeline in seconds (the diffusion methods: the slow test).
    combined, harness, markdown = _quick(tmp_path, ["--limit", "2", "--harness-methods", "identity", "reinhard"])
    for key in ("benchmark", "device", "device_info", "git", "versions", "time", "quick", "skipped", "files",
                "parts", "cost_table", "summary", "seconds"):
        assert key in combined, key
    assert combined["quick"] and set(combined["skipped"]) == {"sampler", "metrics"}
    assert set(combined["parts"]) == {"sampler", "harness"}  # sampler: the earlier file; no metrics file
    assert combined["parts"]["sampler"]["from_file"].endswith(".json")
    for key in ("git", "versions", "device", "time", "per_method", "whole_job_parts", "seconds", "noise_warning",
                "ratio_whole_job_over_bare_methods", "ratio_whole_job_over_its_method_calls", "settings"):
        assert key in harness, key
    assert harness["settings"]["n_samples"] == 2 and harness["settings"]["methods"] == ["identity", "reinhard"]
    assert harness["whole_job_status"] == {"ok": 4, "failed": 0, "errors": []}
    parts = harness["whole_job_parts"]
    assert sum(parts.values()) == pytest.approx(harness["seconds"]["whole_job"], abs=1e-6)
    assert combined["cost_table"]["rows"] and not combined["cost_table"]["is_gpu_projection"]
    for text in ("# Benchmarks on", "Quick smoke settings", "## Sampler (not re-run", "## Metrics: skipped",
                 "## Harness overhead", "| reinhard |", "## Projected cost",
                 "tiny backbone on CPU: not a projection for SD1.5"):
        assert text in markdown, text


@pytest.mark.slow
def test_quick_harness_on_the_demo_methods(tmp_path):
    combined, harness, markdown = _quick(tmp_path, ["--limit", "1"])
    assert len(harness["per_method"]) == 8 and harness["whole_job_status"]["failed"] == 0
    assert harness["ratio_whole_job_over_bare_methods"] > 0
    assert all(m["bare_seconds"] > 0 for m in harness["per_method"].values())
    assert "| semantix_20steps |" in markdown
