"""End to end through the console scripts, as a user runs them (subprocesses, offline, CPU)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
from conftest import REPO, TESTS_DIR, run_cli, write_png
from harness import comparable

from semantix.cli import BENCH_DESCRIPTION, BENCH_EXAMPLES, method_key_problems
from semantix.store import RunStore

# conf/experiment/demo.yaml's methods, in its order
DEMO_METHODS = ("identity", "reinhard", "histogram_matching", "semantix_20steps", "semantix_zero_guidance_20steps",
                "styleid_20steps", "stylegallery_fast", "eye_for_an_eye_20steps", "cross_image_attention_20steps")


def run_dirs(results):
    return sorted(p.parent for p in (results / "runs").rglob("provenance.json"))


def test_default_demo_run_and_resume(tmp_path):
    results = tmp_path / "results"
    first = run_cli(["semantix-bench", f"paths.results_dir={results}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    dirs = run_dirs(results)
    assert {d.name.rsplit("-", 1)[0] for d in dirs} == set(DEMO_METHODS)
    assert all(d.parts[-4:-1] == ("demo", "demo", "tiny") for d in dirs)
    log = first.stdout + first.stderr
    assert str(dirs[0]) in log and "leaderboard.csv" in log
    table = pd.read_csv(results / "leaderboard.csv")
    assert len(table) == len(DEMO_METHODS) and (table["n_failed"] == 0).all()
    assert table.set_index("method").loc["semantix_20steps", "weights"] == ("tiny: trained 64 px VAE, random UNet: "
                                                                           "not a quality result")
    assert {"ssim_grey_mean", "colour_histogram_mean"} <= set(table.columns)
    by_method = table.set_index("method")
    # Real numbers: identity keeps the structure exactly; colour transfer gets closer to the references.
    assert by_method.loc["identity", "ssim_grey_mean"] == 1.0
    assert by_method.loc["reinhard", "colour_histogram_mean"] < by_method.loc["identity", "colour_histogram_mean"]
    # The reconstruction check: without guidance the sampler retraces the content's inversion, so the output is
    # the content through the trained VAE (grey SSIM 0.93 measured; a random VAE gives noise).
    assert by_method.loc["semantix_zero_guidance_20steps", "ssim_grey_mean"] > 0.8
    second = run_cli(["semantix-bench", f"paths.results_dir={results}"], cwd=tmp_path)
    assert second.returncode == 0
    n = int(table["n"].iloc[0])
    assert f"0 ok, 0 failed, {n} skipped" in second.stdout + second.stderr
    # What the user sees first: the job announced (before torch loads), each run directory named as its
    # run starts (not only in the summary), then one progress bar per method with its counts.
    assert second.stdout.splitlines()[0].endswith(f"job: experiment=demo dataset=demo backbone=tiny metrics=demo, "
                                                  f"method(s) {', '.join(DEMO_METHODS)}; loading the libraries")
    for run_dir in dirs:
        label = run_dir.name.rsplit("-", 1)[0]
        assert f"{label}: run directory {run_dir}" in second.stdout
        assert re.search(rf"{label}: 100%\|.*\| {n}/{n} .*ok=0, failed=0, skipped={n}", second.stderr), label


def test_multirun_one_job_per_method_and_failed_job_does_not_stop_others(tmp_path):
    results = tmp_path / "results"
    # One process, four jobs: the two dataset=manifest jobs cannot run (no manifest set); the two demo
    # jobs still do, one run directory per method.
    out = run_cli(["semantix-bench", "-m", "dataset=manifest,demo", "method=identity,reinhard", "backbone=tiny",
                   f"paths.results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 101, out.stderr[-3000:]
    assert "2 job(s) failed" in out.stderr
    assert sorted((d.parts[-3], d.name.rsplit("-", 1)[0]) for d in run_dirs(results)) == [("demo", "identity"),
                                                                                          ("demo", "reinhard")]


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    slow = "+method.slow={_target_: plugins_for_tests.SlowNoisyIdentity, delay_s: 0.6}"
    args = ["semantix-bench", "method=[]", slow, "runner.leaderboard=false"]
    killed_results = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    script = os.path.join(os.path.dirname(sys.executable), "semantix-bench")
    proc = subprocess.Popen([script, *args[1:], f"paths.results_dir={killed_results}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if len(list(killed_results.glob("runs/*/*/*/*/records/*.json"))) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dirs = run_dirs(killed_results)
    n_before = len(RunStore(dirs[0]).records())
    assert 2 <= n_before < 8  # killed mid-way
    resumed = run_cli([*args, f"paths.results_dir={killed_results}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{n_before} skipped" in resumed.stdout + resumed.stderr
    whole_results = tmp_path / "whole"
    whole = run_cli([*args, f"paths.results_dir={whole_results}"], cwd=tmp_path)
    assert whole.returncode == 0
    key = lambda r: r["sample_id"]  # noqa: E731
    after_kill = sorted(map(comparable, RunStore(dirs[0]).records()), key=key)
    uninterrupted = sorted(map(comparable, RunStore(run_dirs(whole_results)[0]).records()), key=key)
    assert len(after_kill) == len(uninterrupted)
    assert after_kill == uninterrupted


def write_bad_data_manifest(tmp_path):
    """A manifest with one good sample and one sample per bad-data class of docs/datasets.md."""
    from PIL import Image

    from semantix.data.manifest import write_manifest

    root = tmp_path / "data"
    good = write_png(root / "good.png", seed=1)
    style = write_png(root / "style.png", seed=2)
    write_png(root / "grey.png", mode="L")
    write_png(root / "alpha.png", mode="RGBA")
    write_png(root / "cmyk.jpg", mode="CMYK")
    write_png(root / "tiny.png", size=(40, 40))
    (root / "corrupt.png").write_bytes(b"not an image at all")
    data = good.read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("I;16", (80, 80)).save(root / "deep.png")
    (tmp_path / "outside.png").write_bytes(good.read_bytes())
    cases = {
        "ok": "good.png", "missing": "nope.png", "grey": "grey.png", "alpha": "alpha.png", "cmyk": "cmyk.jpg",
        "tiny": "tiny.png", "corrupt": "corrupt.png", "truncated": "truncated.png", "16bit": "deep.png",
        "outside": "../outside.png",
    }
    rows = [{"sample_id": sid, "content": path, "reference": style.name} for sid, path in cases.items()]
    rows.append({"sample_id": "bad_hash", "content": "good.png", "reference": style.name,
                 "content_sha256": "0" * 64})
    manifest = write_manifest(rows, root / "manifest.csv")
    return manifest, len(rows)


def test_bad_data_fails_each_sample_with_its_reason_others_finish(tmp_path):
    manifest, n_rows = write_bad_data_manifest(tmp_path)
    results = tmp_path / "results"
    out = run_cli(["semantix-bench", "dataset=manifest", f"dataset.manifest={manifest}", "method=identity",
                   f"paths.results_dir={results}"], cwd=tmp_path)
    assert out.returncode == n_rows - 1, out.stderr[-3000:]
    records = {r["sample_id"]: r for r in RunStore(run_dirs(results)[0]).records()}
    assert records["ok"]["status"] == "ok"
    expected_words = {"missing": "not found|missing|does not exist", "grey": "grey|gray", "alpha": "alpha",
                      "cmyk": "CMYK", "tiny": "small|tiny", "corrupt": "corrupt|not an image|cannot identify",
                      "truncated": "truncated", "16bit": "16-bit", "outside": "outside",
                      "bad_hash": "sha256|hash"}
    for sid, words in expected_words.items():
        record = records[sid]
        assert record["status"] == "failed", sid
        assert record["error"]["stage"] == "load"
        assert re.search(words, record["error"]["message"], re.IGNORECASE), (sid, record["error"]["message"])
    assert json.loads((run_dirs(results)[0] / "provenance.json").read_text())["invocations"][-1]["failed"] == 10


def test_gamma_sweep_multirun_shares_inversions_across_jobs(tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    out = run_cli(["semantix-bench", "-m", "experiment=semantix_gamma_sweep", "backbone=tiny", "dataset=demo", "metrics=demo",
                   "dataset.limit=1", "method.semantix.num_steps=3", "method.semantix.adain_start_step=1",
                   "method.semantix.gamma_ref=1.0,6.0", "method.semantix.gamma_c=0.9",
                   f"paths.cache_dir={cache}", f"paths.results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    dirs = run_dirs(results)
    assert len(dirs) == 2 and all(d.parts[-4] == "semantix_gamma_sweep" for d in dirs)
    images = {RunStore(d).records()[0]["image_sha256"] for d in dirs}
    assert len(images) == 2  # the two gammas give two different outputs ...
    assert len(list(cache.rglob("*.pt"))) == 2  # ... from one context and one reference inversion


def test_sweep_points_are_told_apart_by_their_overrides_in_the_leaderboard(tmp_path):
    results = tmp_path / "results"
    out = run_cli(["semantix-bench", "-m", "method=reinhard", "method.reinhard.eps=1e-6,1e-3", "dataset.limit=2",
                   f"paths.results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    table = pd.read_csv(results / "leaderboard.csv")
    assert len(table) == 2
    eps_terms = sorted(term for o in table["overrides"] for term in o.split() if term.startswith("method.reinhard.eps="))
    assert eps_terms == ["method.reinhard.eps=0.001", "method.reinhard.eps=1e-06"]


def test_calibration_sweep_warns_on_inert_guidance_and_the_report_plots_it(tmp_path):
    """experiment=semantix_calibration offline: a gain too small for the guidance to act is flagged (log
    and report), a gain at which the clamp binds is not, and the report plots metrics against both
    diagnostics."""
    from semantix.report import build_report

    results, cache = tmp_path / "results", tmp_path / "cache"
    out = run_cli(["semantix-bench", "-m", "experiment=semantix_calibration", "backbone=tiny", "dataset=demo",
                   "metrics=demo", "dataset.limit=2", "method.semantix.num_steps=4", "method.semantix.adain_start_step=2",
                   "method.semantix.energy_scale=1e-4,1000", "method.semantix.lambda_pe=3",
                   f"paths.cache_dir={cache}", f"paths.results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in (out.stdout + out.stderr).splitlines() if "guidance never reached the clamp" in line]
    assert len(warnings) == 1 and "method.semantix.energy_scale" in warnings[0], warnings
    table = pd.read_csv(results / "leaderboard.csv")
    assert sorted(table["guidance_clamp_fraction"].round(6) > 0) == [False, True]
    assert table["match_displacement"].notna().all()
    index = build_report(results / "runs", tmp_path / "report")
    text, report = index.read_text(), index.parent
    assert text.count("guidance never reached the clamp") == 1
    plots = {p.name.split("__")[-1] for p in (report / "plots").glob("*.png")}
    assert {"calibration-guidance_clamp_fraction.png", "calibration-match_displacement.png"} <= plots


# -- a CLI that explains itself ---------------------------------------------------------------------
def test_help_opens_with_what_it_does_and_the_readme_examples_then_hydras_help(tmp_path):
    out = run_cli(["semantix-bench", "--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(BENCH_DESCRIPTION)
    positions = [out.stdout.index(f"  {command}\n") for command, _ in BENCH_EXAMPLES]
    assert len(positions) == 5 and positions == sorted(positions)
    assert out.stdout.index("semantix-bench is powered by Hydra.") > positions[-1]  # Hydra's help comes after,
    assert "== Configuration groups ==" in out.stdout  # naming the command, not the module
    readme = (REPO / "README.md").read_text()
    using_it = readme[readme.index("## Using it"):].split("```")[1]
    readme_commands = [line.split("#")[0].strip() for line in using_it.splitlines()[1:6]]
    assert readme_commands == [command for command, _ in BENCH_EXAMPLES], "README's Using it block opens with them"


def test_unqualified_or_unknown_method_keys_are_told_the_right_form():
    assert method_key_problems(["method=semantix", "method.semantix.num_steps=2"]) == []
    assert method_key_problems(["dataset.limit=2", "+method.extra={_target_: x}"]) == []  # no method.* change
    [unqualified] = method_key_problems(["method=[semantix,styleid]", "method.num_steps=2,3"])
    assert "method.semantix.num_steps=2,3 or method.styleid.num_steps=2,3" in unqualified
    assert "method.<label>.<key>" in unqualified and "labels in this job: semantix, styleid" in unqualified
    [nowhere] = method_key_problems(["method=reinhard", "method.num_stepz=2"])
    assert "'num_stepz'" in nowhere and "labels in this job: reinhard" in nowhere
    [unknown] = method_key_problems(["method=reinhard", "method.reinhard.epz=1"])
    assert "method 'reinhard' has no parameter 'epz'" in unknown and "eps" in unknown
    assert method_key_problems(["method=reinhardt", "method.eps=1"]) == []  # Hydra names the bad choice


def test_unqualified_method_key_stops_before_any_work_with_the_message(tmp_path):
    out = run_cli(["semantix-bench", "method=semantix", "method.num_steps=2", f"paths.results_dir={tmp_path / 'r'}"],
                  cwd=tmp_path)
    assert out.returncode == 101
    assert "write method.semantix.num_steps=2 (the labels in this job: semantix)" in out.stderr
    assert "not in struct" not in out.stderr and not (tmp_path / "r").exists()


def test_cli_imports_no_heavy_library_before_announcing_the_job(tmp_path):
    # semantix.io: the results-directory check runs before the job is announced
    code = ("import sys, semantix.cli, semantix.io; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'pandas', 'wandb') if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"


# -- wandb: online when logged in by any of wandb's means; a resumed run continues its wandb run --------
def _wandb_auto_mode(tmp_path, **files_and_env) -> str:
    """`logger=wandb mode=auto` as a fresh process resolves it, in a home of its own (no network)."""
    home = tmp_path / "home"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home / ".config" / "wandb"), WANDB_SILENT="true",
               **files_and_env.get("env", {}))
    for name, text in files_and_env.get("files", {}).items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text)
        (home / name).chmod(0o600)
    code = "from semantix.loggers import wandb_mode; print(wandb_mode('auto'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_wandb_goes_online_when_logged_in_by_netrc_settings_or_key_else_offline(tmp_path):
    key = "0123456789abcdef0123456789abcdef01234567"  # a key's shape; never sent (no network here)
    assert _wandb_auto_mode(tmp_path / "none") == "offline"
    assert _wandb_auto_mode(tmp_path / "netrc", files={".netrc": f"machine api.wandb.ai\n  login user\n  password {key}\n"}) == "online"
    assert _wandb_auto_mode(tmp_path / "settings", files={".config/wandb/settings": f"[default]\napi_key = {key}\n"}) == "online"
    assert _wandb_auto_mode(tmp_path / "env", env={"WANDB_API_KEY": key}) == "online"


def test_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    from semantix.loggers import WandbLogger, wandb_run_id

    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "runs" / "demo" / "demo" / "tiny" / "identity-0123"
    run_dir.mkdir(parents=True)
    for _ in range(2):  # the first invocation, then a resume
        logger = WandbLogger(mode="offline")
        logger.start_run("identity", run_dir, {"seed": 0})
        logger._runs.pop("identity").finish()
    ids = {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert ids == {wandb_run_id(run_dir)}
    assert wandb_run_id(run_dir) != wandb_run_id(run_dir.with_name("identity-4567"))
