"""The GPU run kit (benchmarks/gpu/): its package lists, its commands, its summary, and its rehearsal on
the CPU, run on every commit: the entry command in quick mode, in an environment holding only the GPU
machine's packages plus the kit's (installed from .whl/ exactly as on the device when the wheels were
downloaded; linked from this environment, the wheel install skipped, when they were not, as in CI)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "benchmarks" / "gpu"
sys.path.insert(0, str(KIT))
import download_wheels  # noqa: E402
import mimic  # noqa: E402

PARTS = ("correspondence", "sampler", "metrics", "video", "pytest", "kernels")


def test_the_kit_carries_only_what_the_device_lacks_and_all_it_needs():
    device = {mimic.normalize(e["name"]) for e in mimic.read_requirements(mimic.DEVICE_PACKAGES)}
    carried = {mimic.normalize(e["name"]): e for e in mimic.read_requirements(mimic.WHEELS)}
    assert {"torch", "transformers", "huggingface-hub", "pytest", "pytest-timeout", "pip"} <= device
    assert {"diffusers", "hydra-core", "omegaconf", "antlr4-python3-runtime", "open-clip-torch", "lpips",
            "torch-fidelity"} <= carried.keys()
    assert not device & carried.keys(), "a carried package would shadow the device's own"
    assert all(e["version"] for e in carried.values()), "every carried package is pinned"
    # Each carried package's needs, as installed here, are met by the device or the kit.
    requirements, versions = {}, {}
    for name, entry in carried.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        requirements[name] = dist.requires or []
        versions[name] = entry["version"]
    assert requirements, "none of the kit's packages is installed here"
    assert download_wheels.unmet(requirements, versions) == []


def test_the_check_flags_a_need_that_nobody_meets():
    problems = download_wheels.unmet({"x": ["diffusers", "no-such-package>=1", "huggingface-hub>=9",
                                            "colorama; sys_platform == 'win32'", "tomli; python_version < '3.11'"]},
                                     {"diffusers": "0.42.1"})
    assert len(problems) == 2
    assert "no-such-package" in problems[0] and "not on the device" in problems[0]
    assert "huggingface-hub>=9" in problems[1] and "1.33.0 on the device" in problems[1]


def test_downloaded_wheels_are_complete_when_present():
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if not wheels:
        pytest.skip(".whl/ holds no wheels (benchmarks/gpu/download_wheels.py was not run here)")
    assert download_wheels.check(REPO / ".whl") == 0
    assert sum(w.stat().st_size for w in wheels) < 48 * 2**20  # the tree that travels is at most 64 MiB


class Parsed(Exception):
    pass


def parsed(monkeypatch, module: str, argv: list[str]) -> argparse.Namespace:
    """`module.main(argv)`'s parsed arguments; nothing runs past the parsing."""
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed) as info:
        importlib.import_module(module).main(argv)
    monkeypatch.undo()
    return info.value.args[0]


def dry_run(*args: str) -> dict[str, tuple[int, list[str]]]:
    result = subprocess.run(["bash", str(KIT / "run_kit.sh"), "--dry-run", *args], capture_output=True, text=True,
                            check=True, env={k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
                            | {"OUT": "/tmp/kit-out", "PYTHON": "python3"})
    commands = {}
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 3:
            commands[fields[0]] = (int(fields[1]), fields[2].split())
    return commands


@pytest.mark.parametrize("quick", [False, True])
def test_every_part_command_parses(monkeypatch, quick):
    commands = dry_run(*(["--quick"] if quick else []))
    assert tuple(commands) == PARTS
    for name, (limit, argv) in commands.items():
        assert limit > 0
        assert argv[:2] == ["python3", "-m"]
        if argv[2] == "pytest":
            assert "-m" in argv[3:] and "gpu" in argv[3:] and "tests/test_gpu.py" in argv
            continue
        args = parsed(monkeypatch, argv[2], argv[3:])
        assert str(args.out) == "/tmp/kit-out", name
    sampler = parsed(monkeypatch, "benchmarks.sampler", commands["sampler"][1][3:])
    assert set(sampler.skip) == {"correspondence", "kernels"}
    if not quick:  # the issue's settings: SD1.5's architecture at 512 px, 60 steps, 16 frames, every method
        assert sampler.backbone == "sd15_random" and sampler.steps == 60
        assert set(sampler.methods) == {"semantix", "styleid", "eye_for_an_eye", "cross_image_attention",
                                        "stylegallery"}
        video = parsed(monkeypatch, "benchmarks.video", commands["video"][1][3:])
        assert video.frames == 16
        metrics = parsed(monkeypatch, "benchmarks.metrics", commands["metrics"][1][3:])
        assert metrics.device == "cuda" and metrics.sizes == [512]
        assert "--junitxml" in commands["pytest"][1]
    else:
        assert sampler.backbone == "tiny" and "--collect-only" in commands["pytest"][1]


def test_summary_names_each_part_status(tmp_path):
    from benchmarks.gpu import kit

    out = tmp_path / "out"
    out.mkdir()
    kit.write_json(out / "sampler-cpu.json", {"benchmark": "sampler", "complete": False, "results": [
        {"backbone": "tiny", "resolution": 64, "steps": 2, "ratios": {"semantix_step_over_plain_step": 2.5},
         "seconds": {"semantix_pair_cold": 1.0}}], "correspondence": {"skipped": "--skip correspondence"}})
    kit.write_json(out / "correspondence-cpu.json", {"result": {"side": 16, "speedup": 40.0}})
    kit.write_json(out / "kernels-cpu.json", {"skipped": "no CUDA device", "result": {"skipped": "no CUDA device"}})
    status = tmp_path / "status.tsv"
    status.write_text("correspondence\tok\t0\t3.0\t60\tcmd\n"
                      "sampler\ttimeout\t124\t60.2\t60\tcmd\n"
                      "metrics\tfailed\t1\t2.0\t60\tcmd\n"
                      "video\tok\t0\t2.0\t60\tcmd\n"
                      "kernels\tok\t0\t2.0\t60\tcmd\n")
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="tests.test_gpu" name="test_a" time="1.5"/>'
                     '<testcase classname="tests.test_gpu" name="test_b" time="2"><failure message="boom"/>'
                     "</testcase></testsuite></testsuites>")
    summary = kit.main(["summary", "--out", str(out), "--status", str(status), "--junit", str(junit),
                        "--budget", "100", "--elapsed", "70", "--install-status", "ok"])
    parts = summary["parts"]
    assert {n: parts[n]["status"] for n in PARTS} == {
        "correspondence": "ok", "sampler": "timeout", "metrics": "failed",
        "video": "failed",  # exited 0 but wrote no file
        "pytest": "not run", "kernels": "skipped"}
    assert "holds what was measured" in parts["sampler"]["reason"] and parts["sampler"]["exit_code"] == 124
    assert summary["pytest"]["passed"] == 1 and summary["pytest"]["failed"] == 1
    assert summary["figures"]["sampler"]["semantix_step_over_plain_step"] == 2.5
    assert summary["figures"]["sampler"]["targets_met"]["semantix_step_over_plain_step"] is None  # a CPU
    # The sampler report now carries the correspondence the kit measured in its own process.
    sampler = json.loads((out / "sampler-cpu.json").read_text())
    assert sampler["correspondence"]["speedup"] == 40.0 and "measured_by" in sampler["correspondence"]
    assert json.loads((out / "kit-cpu.json").read_text())["device"] == "cpu"


def test_rehearsal_runs_the_entry_command_on_the_device_packages(tmp_path):
    """rehearse.sh, as a developer runs it, but in tmp_path: mimic environment, install (or link), quick kit."""
    out = tmp_path / "out"
    env = os.environ | {"SOURCE_PYTHON": sys.executable, "REHEARSAL_DIR": str(tmp_path / "rehearsal"),
                        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("OUT", None)
    run = subprocess.run(["bash", str(KIT / "rehearse.sh"), "--out", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=560)
    log = run.stdout + run.stderr
    print(log[-6000:])
    assert run.returncode == 0, log[-4000:]
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    site = tmp_path / "rehearsal" / "site"
    assert (site / "diffusers" / "__init__.py").is_file()
    if wheels:
        assert f"== install: {len(wheels)} wheels -> {site}" in log
        assert not (site / "diffusers").is_symlink()  # installed from the wheel, not linked
    else:
        assert "no wheels in .whl/: wheel install skipped" in log
    assert "mimic venv" in log and "hidden (not on the device)" in log

    files = {p.name for p in out.iterdir()}
    assert files == {"kit.log", "kit-cpu.json", "correspondence-cpu.json", "sampler-cpu.json", "metrics-cpu.json",
                     "video-cpu.json", "kernels-cpu.json"}
    assert len(files) <= 8  # the device sends back at most 8 files from its output folder
    reports = {name: json.loads((out / name).read_text()) for name in files if name.endswith(".json")}
    summary = reports["kit-cpu.json"]
    assert summary["device"] == "cpu" and summary["gpu"] is None and summary["quick"]
    assert summary["install"]["status"] == "ok" if wheels else summary["install"]["status"].startswith("skipped")
    statuses = {name: summary["parts"][name]["status"] for name in PARTS}
    assert statuses == {**dict.fromkeys(PARTS, "ok"), "kernels": "skipped"}, statuses
    assert all(summary["parts"][name]["seconds"] > 0 for name in PARTS)

    sampler = reports["sampler-cpu.json"]
    assert sampler["complete"] and sampler["results"][0]["backbone"] == "tiny"
    result = sampler["results"][0]
    assert result["ratios"]["semantix_step_over_plain_step"] > 0
    assert result["batching"]["throughput_ratio"] > 0
    assert sampler["correspondence"]["indices_agree"] == 1.0  # filled in from the kit's own part
    assert reports["correspondence-cpu.json"]["result"]["side"] == 16
    assert set(reports["metrics-cpu.json"]["image_style"]["per_size"]) == {"64"}
    assert reports["video-cpu.json"]["frames"] == 2 and "peak_cuda_gib" in reports["video-cpu.json"]
    assert "skipped" in reports["kernels-cpu.json"]
    figures = summary["figures"]
    assert set(figures) == {"sampler", "correspondence", "metrics", "video", "kernels"}
    assert figures["sampler"]["semantix_step_over_plain_step"] == result["ratios"]["semantix_step_over_plain_step"]
    kit_log = (out / "kit.log").read_text()
    for name in PARTS:
        assert f"== {name}: " in kit_log
    assert "tests/test_gpu.py::test_sd15_architecture_step_fits_and_runs_at_512" in kit_log  # collected
