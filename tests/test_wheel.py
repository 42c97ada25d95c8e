"""A normal (non-editable) install runs: the built wheel ships the configs and `semantix-bench` runs the demo.

The wheel is built from a copy of the checkout's packaged files and installed into a fresh virtual
environment that sees the test environment's dependencies (a path file), but not the checkout: what
runs is the installed package, configs included. No network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
# What `pip install .` reads: the build files and the packaged folders.
SOURCE = ["setup.py", "pyproject.toml", "README.md", "semantix", "data_prep", "conf"]


def _fresh_venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies (torch, diffusers, hydra, ...) of the environment running the tests. A plain path
    # entry: the checkout's editable-install hook in that folder is not run, so `semantix` comes from the wheel.
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_wheel_installs_and_runs_the_demo(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCE:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")} if (REPO / name).is_dir() else {}
        copy(REPO / name, source / name, **kwargs)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("semantix-*.whl"))

    python = _fresh_venv(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "SEMANTIX_OFFLINE": "1"}
    where = subprocess.run(
        [str(python), "-c", "import json, semantix, semantix.runtime as r; "
                            "print(json.dumps([semantix.__file__, str(r.config_dir())]))"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    package_file, conf = map(Path, json.loads(where.stdout))
    installed = tmp_path / "venv"
    assert installed in package_file.parents and conf == package_file.parent / "conf"
    assert (conf / "config.yaml").is_file() and (conf / "metrics" / "image_style.yaml").is_file()

    results = tmp_path / "results"
    run = subprocess.run(
        [str(installed / "bin" / "semantix-bench"), "dataset.limit=1", "method=identity",
         f"paths.results_dir={results}", "runner.progress=false"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    weights = subprocess.run([str(installed / "bin" / "semantix-weights"), "list", "metrics=image_style"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert weights.returncode == 0 and "metrics.gram.weights" in weights.stdout, weights.stdout + weights.stderr
    table = pd.read_csv(results / "leaderboard.csv")
    assert list(table["method"]) == ["identity"] and list(table["n"]) == [1] and list(table["n_failed"]) == [0]
    assert table["ssim_grey_mean"].iloc[0] == 1.0  # identity keeps the structure exactly: a real score
