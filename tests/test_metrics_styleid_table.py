"""metrics=styleid end to end (random weights: styleid_tiny), honest set-metric N, the paper-table export."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import compose
from harness import run_job

from semantix.cli import leaderboard, write_paper_table
from semantix.leaderboard import build_table, to_markdown
from semantix.tables import TABLES, paper_table, read_published
from semantix.tables import to_markdown as table_markdown


def test_styleid_preset_is_the_protocol():
    metrics = compose(["metrics=styleid"]).metrics
    assert set(metrics) == {"artfid", "fid", "lpips", "cfsd"}
    for name in ("artfid", "fid"):
        assert metrics[name].network == "art"
        assert metrics[name].references == "per_output"
        assert metrics[name].short_side == 512
        assert metrics[name].min_n == 800
    assert metrics.artfid.inception_weights == metrics.fid.weights == "art"
    assert metrics.cfsd.size is None
    extended = compose(["metrics=image_style"]).metrics
    assert extended.fid.weights == "art" and extended.fid_imagenet.weights == "torch-fidelity"
    assert extended.fid_imagenet.name == "fid_imagenet"


@pytest.fixture(scope="module")
def limited_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("styleid")
    result = run_job(["dataset=demo", "dataset.limit=2", "method=reinhard", "metrics=styleid_tiny"], root / "r")
    return root, result.runs[0]


def test_styleid_tiny_runs_end_to_end_and_a_limited_run_is_partial_with_its_n(limited_run):
    root, run = limited_run
    assert (run.ok, run.failed) == (2, 0), run.errors
    summary = json.loads((run.run_dir / "summary.json").read_text())["set_metrics"]
    for name in ("artfid", "fid"):
        entry = summary[name]
        assert entry["n"] == 2 and entry["n_outputs"] == 2 and entry["n_references"] == 2  # one per output
        assert entry["inception"] == "random-art" and entry["references"] == "per_output"
        assert entry["n_manifest"] > 2 and entry["partial"] is True and entry["comparable"] is False
        assert entry["min_n"] == 800

    # A random-weight run never claims the published networks: its metric descriptions say RANDOM.
    info_fid = json.loads((run.run_dir / "metric_info" / "fid.json").read_text())
    assert info_fid["pretrained"].startswith("seeded RANDOM weights (weights=random), not ")
    info_artfid = json.loads((run.run_dir / "metric_info" / "artfid.json").read_text())
    assert "inception_weights=random" in info_artfid["pretrained"] and "lpips_weights=random" in info_artfid["pretrained"]

    table, info = build_table(root / "r" / "runs")
    row = table.iloc[0]
    assert bool(row["random_metric_weights"])
    assert bool(row["partial"]) and row["n_ok"] == 2 and row["n_manifest"] == entry["n_manifest"]
    assert row["fid_n"] == 2 and not bool(row["fid_comparable"])
    markdown = to_markdown(table, info)
    assert f"(partial: 2 of {entry['n_manifest']})" in markdown
    assert "(N=2, not comparable)" in markdown


def test_table_export_in_the_papers_column_order_beside_the_published_values(limited_run, tmp_path):
    root, _ = limited_run
    table, _ = build_table(root / "r" / "runs")
    published = tmp_path / "styleid.csv"
    published.write_text("# source line\nmethod,ArtFID ↓,FID ↓,LPIPS ↓,CFSD ↓,source\n"
                         "SomeMethod,30.12345,20.5,0.51234,0.23456,made-up test row\n")
    frame = paper_table(table, TABLES["styleid"], read_published(published))
    assert list(frame.columns) == ["method", "row", "ArtFID ↓", "FID ↓", "LPIPS ↓", "CFSD ↓", "N", "comparable",
                                   "note"]
    ours, theirs = frame.iloc[0], frame.iloc[1]
    assert ours["row"] == "ours" and ours["N"] == 2 and not ours["comparable"]
    assert "partial: 2 of" in ours["note"] and "RANDOM weights" in ours["note"]
    assert ours["ArtFID ↓"] == pytest.approx(table.iloc[0]["artfid_set"], abs=1e-3)
    assert theirs["row"] == "published" and theirs["ArtFID ↓"] == 30.123 and theirs["LPIPS ↓"] == 0.5123
    markdown = table_markdown(frame, TABLES["styleid"])
    assert "| SomeMethod | published | 30.123 | 20.500 | 0.5123 | 0.2346 | 800 | yes | made-up test row |" in markdown
    assert "| **no** |" in markdown

    # the CLI writes table_styleid.csv/.md beside the leaderboard
    write_paper_table(table, "styleid", tmp_path, published)
    assert pd.read_csv(tmp_path / "table_styleid.csv").shape == (2, 9)
    assert (tmp_path / "table_styleid.md").read_text() == markdown


def test_cli_table_flag_and_the_shipped_published_file(limited_run, tmp_path, capsys):
    root, _ = limited_run
    leaderboard(["--runs", str(root / "r" / "runs"), "--out", str(tmp_path / "lb.csv"),
                 "--markdown", str(tmp_path / "lb.md"), "--table", "styleid"])
    assert "ArtFID ↓ | FID ↓ | LPIPS ↓ | CFSD ↓" in capsys.readouterr().out
    assert (tmp_path / "table_styleid.md").is_file()
    shipped = read_published(TABLES["styleid"].published_path())  # results/published/styleid.csv: layout only
    assert list(shipped.columns) == ["method", "ArtFID ↓", "FID ↓", "LPIPS ↓", "CFSD ↓", "source"]


def test_a_complete_real_weight_row_is_comparable_and_random_overrides_are_not():
    base = {"method": "m", "metrics_preset": "styleid", "dataset": "coco_wikiart_styleid", "weights": "sd15",
            "overrides": "", "partial": False, "n_ok": 800, "n_manifest": 800, "artfid_set": 28.8, "fid_set": 18.1,
            "lpips_mean": 0.5, "cfsd_mean": 0.2, "artfid_n": 800, "fid_n": 800, "artfid_comparable": True,
            "fid_comparable": True}
    random = {**base, "method": "r", "overrides": "metrics.fid.weights=random", "random_metric_weights": True,
              "metric_weights_overridden": True}
    other_preset = {**base, "method": "o", "metrics_preset": "appearance"}
    frame = paper_table(pd.DataFrame([base, random, other_preset]), TABLES["styleid"])
    assert list(frame["method"]) == ["m", "r"]
    assert list(frame["comparable"]) == [True, False]
    assert "RANDOM weights" in frame.iloc[1]["note"] and "metric weights set on the command line" in frame.iloc[1]["note"]
    assert "RANDOM weights" not in frame.iloc[0]["note"]
