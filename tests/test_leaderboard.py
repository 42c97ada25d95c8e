"""Leaderboard aggregation from run directories, checked against hand-computed numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from semantix.cli import leaderboard as leaderboard_cli
from semantix.io import atomic_write_json
from semantix.leaderboard import build_table, mean_ci, write_leaderboard

# Student-t quantile t_{0.975, 3} from statistical tables.
T_975_DF3 = 3.182446305284263


def make_run(root, name, *, method, backbone, weights, values, failed=0, n_samples=None):
    run_dir = root / "runs" / "exp" / "demo" / backbone / name
    atomic_write_json(run_dir / "provenance.json", {
        "experiment": "exp", "dataset": "demo", "method": method, "backbone": backbone,
        "metrics_preset": "demo", "config_hash": name[-6:], "git": {"commit": "abc123", "dirty": False},
        "backbone_weights": weights, "data": {"n_samples": n_samples or len(values) + failed},
    })
    atomic_write_json(run_dir / "metrics.json", {"score": {"higher_is_better": True}})
    for i, v in enumerate(values):
        atomic_write_json(run_dir / "records" / f"s{i}.json",
                          {"sample_id": f"s{i}", "status": "ok", "metrics": {"score": v}})
    for i in range(failed):
        atomic_write_json(run_dir / "records" / f"f{i}.json",
                          {"sample_id": f"f{i}", "status": "failed", "metrics": {}, "error": {"message": "x"}})
    return run_dir


def test_mean_ci_matches_hand_computation():
    mean, half = mean_ci([0.2, 0.4, 0.6, 0.8])
    sd = math.sqrt((0.3**2 + 0.1**2 + 0.1**2 + 0.3**2) / 3)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(T_975_DF3 * sd / 2)  # 0.410852...
    assert half == pytest.approx(0.410852, abs=1e-6)
    assert math.isnan(mean_ci([1.0])[1])
    assert all(math.isnan(v) for v in mean_ci([]))


def test_table_rows_counts_and_backbone_labels(tmp_path):
    make_run(tmp_path, "reinhard-aaaaaa", method="reinhard", backbone="tiny", weights=None,
             values=[0.2, 0.4, 0.6, 0.8], failed=1)
    make_run(tmp_path, "semantix-bbbbbb", method="semantix", backbone="tiny",
             weights={"weights": "random (seed 0)", "random_weights": True}, values=[1.0, 3.0], n_samples=5)
    make_run(tmp_path, "semantix-cccccc", method="semantix", backbone="sd15",
             weights={"pretrained": "stable-diffusion-v1-5/stable-diffusion-v1-5", "revision": "451f4fe"},
             values=[2.0, 2.0])
    table, info = build_table(tmp_path / "runs")
    assert len(table) == 3
    rows = {(r.method, r.backbone): r for r in table.itertuples()}
    reinhard = rows[("reinhard", "tiny")]
    assert (reinhard.n, reinhard.n_ok, reinhard.n_failed, reinhard.n_missing) == (5, 4, 1, 0)
    assert reinhard.score_mean == pytest.approx(0.5)
    assert reinhard.score_ci95 == pytest.approx(0.410852, abs=1e-6)
    assert reinhard.weights.startswith("none")
    tiny = rows[("semantix", "tiny")]
    assert tiny.weights.startswith("RANDOM")
    assert tiny.n_missing == 3
    assert rows[("semantix", "sd15")].weights == "stable-diffusion-v1-5/stable-diffusion-v1-5@451f4fe"
    assert rows[("semantix", "sd15")].score_ci95 == pytest.approx(0.0)
    assert info["score"]["higher_is_better"] is True


def test_written_csv_and_markdown(tmp_path):
    make_run(tmp_path, "reinhard-aaaaaa", method="reinhard", backbone="tiny", weights=None,
             values=[0.2, 0.4, 0.6, 0.8])
    make_run(tmp_path, "semantix-bbbbbb", method="semantix", backbone="tiny",
             weights={"weights": "random (seed 0)"}, values=[1.0, 3.0])
    write_leaderboard(tmp_path / "runs", tmp_path / "lb.csv", tmp_path / "lb.md")
    csv = pd.read_csv(tmp_path / "lb.csv")
    for column in ("experiment", "dataset", "method", "backbone", "weights", "config_hash", "commit", "n",
                   "n_failed", "score_mean", "score_ci95"):
        assert column in csv.columns
    markdown = (tmp_path / "lb.md").read_text()
    assert "score ↑" in markdown
    assert "0.5 ± 0.4109" in markdown
    assert "tiny (random weights)" in markdown
    assert "Student-t" in markdown


def test_cli_scans_runs_and_reports_missing_folder(tmp_path, monkeypatch, capsys):
    make_run(tmp_path, "reinhard-aaaaaa", method="reinhard", backbone="tiny", weights=None, values=[0.5])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no runs folder"):
        leaderboard_cli([])
    (tmp_path / "results").mkdir()
    (tmp_path / "runs").rename(tmp_path / "results" / "runs")
    leaderboard_cli([])
    assert "1 row(s)" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "results" / "leaderboard.csv")) == 1
