"""Build a report folder from run directories, and the `semantix-report` command line.

The folder is built in a hidden sibling folder and then moved into place; an existing folder at
--out is replaced only when it is an earlier report (its index.html carries this generator's
`<meta name="generator">`) or is empty, so a typo cannot delete other files.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from semantix.report.figures import make_plots
from semantix.report.inputs import InputIndex, Thumbnails
from semantix.report.render import GENERATOR, grid_html, page_html, section_html
from semantix.report.runs import (
    FILTER_KEYS,
    METHOD_ORDER,
    ReportError,
    ReportRun,
    describe_rows,
    group_runs_by_key,
    load_runs,
    parse_filters,
    slug,
)


def build_report(runs_root: Path, out: Path, filters: dict[str, list[str]] | None = None,
                 thumbnail_size: int = 256, order: tuple[str, ...] | list[str] = METHOD_ORDER) -> Path:
    """Write the report of the runs under `runs_root` (selected by `filters`, methods in `order`) to
    `out`; return its index.html."""
    runs_root, out = Path(runs_root), Path(out)
    runs, metric_info = load_runs(runs_root, filters or {}, order)
    _check_replaceable(out)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_report(runs, metric_info, runs_root, staging, filters or {}, thumbnail_size)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"


def _write_report(runs: list[ReportRun], metric_info: dict, runs_root: Path, out: Path,
                  filters: dict[str, list[str]], thumbnail_size: int) -> None:
    index, thumbs = InputIndex(), Thumbnails(out, thumbnail_size)
    pd.DataFrame([r.row for r in runs]).to_csv(out / "leaderboard.csv", index=False)
    sections: list[str] = []
    filter_values: dict[str, set[str]] = {"dataset": set(), "domain": set(), "style": set()}
    for key, group in group_runs_by_key(runs).items():
        experiment, dataset, backbone, manifest = key
        manifest_hash = hashlib.sha256(manifest.encode()).hexdigest()[:6]
        figures = make_plots(group, metric_info, out, slug(f"{experiment}__{dataset}__{backbone}__{manifest_hash}"))
        grid, labels = grid_html(group, metric_info, index, thumbs, describe_rows([r.row for r in group]))
        filter_values["dataset"].add(dataset)
        filter_values["domain"].update(label["domain"] for label in labels)
        filter_values["style"].update(label["style"] for label in labels)
        warnings = [index.warnings[k] for k in index.warnings if k[0] == manifest]
        warnings += [f"{r.name}: {r.row['n_missing']} sample(s) not run yet" for r in group if r.row["n_missing"]]
        sections.append(section_html(group, grid, figures, warnings))
    page = page_html(runs, metric_info, runs_root, filters, sections, filter_values)
    (out / "index.html").write_text(page, encoding="utf-8")


def _is_report(folder: Path) -> bool:
    index = folder / "index.html"
    return index.is_file() and f'<meta name="generator" content="{GENERATOR}">' in index.read_text(errors="replace")[:2000]


def _check_replaceable(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_report(out))):
        raise ReportError(f"{out} exists and is not an earlier report; choose another --out")


def _replace(staging: Path, out: Path) -> None:
    """Move the finished report into place; the earlier one (if any) is removed afterwards."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    """The `semantix-report` options (the command itself is `semantix.cli.report`, which adds the
    wandb upload of --wandb through `semantix.loggers`)."""
    from semantix.report import __doc__ as overview

    parser = argparse.ArgumentParser(prog="semantix-report", description=overview.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of run directories")
    parser.add_argument("--out", type=Path, default=Path("results/report"), help="report folder to write")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help=f"select runs by {', '.join(FILTER_KEYS)} (shell patterns; repeatable)")
    parser.add_argument("--order", default=",".join(METHOD_ORDER), metavar="LABEL,LABEL,...",
                        help="method labels in column order; a label's variants (semantix_20steps) follow it, "
                             "labels not named come last (default: %(default)s)")
    parser.add_argument("--thumbnail-size", type=int, default=256, help="longest side of image thumbnails, px")
    parser.add_argument("--wandb", metavar="PROJECT", default=None,
                        help="also log the leaderboard and every plot to this wandb project (online or offline as "
                             "for logger=wandb): the multi-run figures that no single run's logger can see")
    return parser


def build_from_options(args: argparse.Namespace) -> Path:
    """Build the report `args` ask for (parsed by `parser()`); return its index.html. Exits with a
    message when the runs folder is missing or the report cannot be made as asked."""
    if args.thumbnail_size < 16:
        raise SystemExit("semantix-report: --thumbnail-size must be at least 16 px")
    order = [label.strip() for label in args.order.split(",") if label.strip()]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.runs.is_dir():
        raise SystemExit(f"semantix-report: no runs folder at {args.runs} (run semantix-bench first)")
    try:
        index = build_report(args.runs, args.out, parse_filters(args.filter), args.thumbnail_size, order)
    except ReportError as e:
        raise SystemExit(f"semantix-report: {e}") from e
    print(f"report -> {index}")
    return index
