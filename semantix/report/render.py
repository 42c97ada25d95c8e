"""The report's HTML: the page template (`templates/page.html`) with its inline stylesheet and script
(`static/report.css`, `static/report.js`), the leaderboard table, and one section per group of runs
with its sample grid and figures. Every value is escaped here; nothing in this module reads or writes
files other than the package's own templates.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from semantix import diagnostics
from semantix.leaderboard import set_cell
from semantix.report.figures import Figure
from semantix.report.inputs import InputIndex, Thumbnails
from semantix.report.runs import ReportRun, describe_rows, metric_names, missing
from semantix.store import safe_filename

GENERATOR = "semantix-report"
SMALL_IMAGE = 128  # thumbnails smaller than this are scaled up with crisp pixels
# Where a long sample id or style name may wrap: after these separators, never inside a word.
WRAP_AFTER = re.compile(r"(__|[_+-])")


def _asset(name: str) -> str:
    return resources.files("semantix.report").joinpath(name).read_text(encoding="utf-8")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def wrappable(text: str) -> str:
    """`text` escaped, with a line-break opportunity (<wbr>) after each separator (`__`, `_`, `-`, `+`)."""
    return WRAP_AFTER.sub(r"\1<wbr>", _e(text))


def _fmt(value: Any) -> str:
    if missing(value):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _arrow(name: str, metric_info: dict) -> str:
    return {True: " ↑", False: " ↓"}.get(metric_info.get(name, {}).get("higher_is_better"), "")


def _img(entry: tuple[str, int, int] | None, alt: str) -> str:
    if entry is None:
        return '<div class="absent">image not available</div>'
    src, width, height = entry
    small = ' class="small"' if max(width, height) < SMALL_IMAGE else ""
    return (f'<img src="{_e(src)}" alt="{_e(alt)}" width="{width}" height="{height}" '
            f'loading="lazy"{small}>')


def guidance_findings(run: ReportRun) -> list[str]:
    """What the run's guidance diagnostics say a reader must know (semantix.diagnostics.findings)."""
    return diagnostics.findings(diagnostics.run_summary(run.summary.records), run.name)


def leaderboard_html(runs: list[ReportRun], metric_info: dict) -> str:
    """The sortable leaderboard of the selected runs (the rows of leaderboard.csv). Columns: the
    method (pinned), the sample counts and the numbers first, then where the numbers come from."""
    metrics = metric_names(runs)
    set_names = sorted({c[: -len("_set")] for r in runs for c in r.row if c.endswith("_set")})
    guidance = [n for n in diagnostics.LEADERBOARD_COLUMNS if any(not missing(r.row.get(n)) for r in runs)]
    cells = '<th class="pin">method</th>' + "".join(f"<th>{h}</th>" for h in ("n", "ok", "failed", "missing"))
    cells += "".join(f'<th data-metric="{_e(n)}_set">{_e(n)} (set){_e(_arrow(n, metric_info))}</th>' for n in set_names)
    cells += "".join(f'<th data-metric="{_e(n)}">{_e(n)}{_e(_arrow(n, metric_info))}</th>' for n in metrics)
    cells += "".join(f'<th title="{_e(diagnostics.LEADERBOARD_COLUMNS[n])}">{_e(n)}</th>' for n in guidance)
    cells += "".join(f"<th>{h}</th>" for h in ("experiment", "dataset", "backbone", "weights", "metrics",
                                                 "config", "commit"))
    body = []
    for run in runs:
        row = run.row
        warnings = "".join(f'<div class="warn guidance-warning">{_e(f)}</div>' for f in guidance_findings(run))
        out = [f'<td class="pin" data-sort="{_e(run.name)}">{wrappable(run.name)}{warnings}</td>']
        for column in ("n", "n_ok", "n_failed", "n_missing"):
            out.append(f'<td class="num" data-sort="{_e(row[column])}">{_e(row[column])}</td>')
        if row.get("partial"):
            out[-1] = out[-1].replace("</td>", f' <span class="warn">partial: {_e(row.get("n_ok"))} of '
                                               f'{_e(row.get("n_manifest"))}</span></td>')
        for name in set_names:
            value = row.get(f"{name}_set")
            out.append(f'<td class="num" data-sort="{_e(_fmt(value))}">{_e(set_cell(row, name))}</td>')
        for name in metrics:
            mean, half = row.get(f"{name}_mean"), row.get(f"{name}_ci95")
            value = _fmt(mean) + (f" ± {_fmt(half)}" if _fmt(mean) and _fmt(half) else "")
            sort = repr(float(mean)) if not missing(mean) else ""
            out.append(f'<td class="num" data-sort="{_e(sort)}">{_e(value)}</td>')
        for name in guidance:
            value = row.get(name)
            out.append(f'<td class="num" data-sort="{_e(_fmt(value))}">{_e(_fmt(value))}</td>')
        backbone = _e(row["backbone"]) + (f' <span class="warn">{_e(run.caveat)}</span>' if run.caveat else "")
        text = {"experiment": _e(row["experiment"]), "dataset": _e(row["dataset"]), "backbone": backbone,
                "weights": _e(row["weights"]), "metrics_preset": _e(row["metrics_preset"])}
        out += [f'<td data-sort="{_e(row[c])}">{text[c]}</td>' for c in text]
        out.append(f'<td data-sort="{_e(row["config_hash"])}"><code>{_e(row["config_hash"])}</code></td>')
        out.append(f'<td data-sort="{_e(row["commit"])}"><code>{_e(str(row["commit"])[:12])}</code></td>')
        css = ' class="random"' if run.caveat else ""
        body.append(f'<tr data-filterable data-dataset="{_e(row["dataset"])}"{css}>{"".join(out)}</tr>')
    caveats = {str(r.row["backbone"]): r.caveat for r in runs if r.caveat}
    backbones = ", ".join(b + (f" ({caveats[b]})" if b in caveats else "")
                          for b in sorted({str(r.row["backbone"]) for r in runs}))
    presets = ", ".join(sorted({str(r.row["metrics_preset"]) for r in runs}))
    caption = (f"Backbone(s): {backbones} · metric preset(s): {presets} · values: mean ± half-width of the "
               "95% Student-t CI over samples; (set) = one value per run. Click a header to sort.")
    return (f'<div class="scroll"><table class="sortable" id="leaderboard-table"><caption>{_e(caption)}</caption>'
            f"<thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def grid_html(runs: list[ReportRun], metric_info: dict, index: InputIndex, thumbs: Thumbnails,
              note: str) -> tuple[str, list[dict]]:
    """The comparison grid of one group, and the labels of its samples (for the filters).

    One row per sample (manifest order): its id and labels, the content, the reference(s) (stacked in
    one column), then each run's output with its metric values, runs in the group's order."""
    records = {run.name: {r["sample_id"]: r for r in run.summary.records} for run in runs}
    data = runs[0].data
    manifest = index.manifest(data) if data.get("manifest") else None
    order = {sample_id: i for i, sample_id in enumerate(manifest.sample_ids)} if manifest else {}
    sample_ids = sorted({s for by_id in records.values() for s in by_id},
                        key=lambda s: (order.get(s, len(order)), s))
    resolution = int(data.get("resolution") or thumbs.size)
    head = ('<th class="pin pin-sample">sample</th><th class="pin pin-content">content</th>'
            '<th class="pin pin-reference">reference</th>')
    head += "".join(f'<th class="output" data-run="{_e(run.name)}">{wrappable(run.name)}</th>' for run in runs)
    body, labels = [], []
    for sample_id in sample_ids:
        inputs = index.inputs(data, sample_id)
        domain = (inputs.domain if inputs else None) or ""
        style = inputs.style if inputs else ""
        labels.append({"domain": domain, "style": style})
        info = [f"<b>{wrappable(sample_id)}</b>"]
        if domain:
            info.append(f"domain: {_e(domain)}")
        if style:
            info.append(f"style: {wrappable(style)}")
        if inputs and inputs.prompt:
            info.append(f"prompt: {_e(inputs.prompt)}")
        cells = [f'<td class="pin pin-sample">{"<br>".join(info)}</td>']
        content = thumbs.input(inputs.content, resolution) if inputs and inputs.content else None
        cells.append(f'<td class="pin pin-content">{_img(content, f"content of {sample_id}")}</td>')
        references = "".join(_img(thumbs.input(path, resolution), f"reference of {sample_id}")
                             for path in (inputs.references if inputs else []))
        cells.append(f'<td class="pin pin-reference">{references}</td>')
        for run in runs:
            cells.append(_output_cell(run, records[run.name].get(sample_id), metric_info, thumbs))
        body.append(f'<tr data-filterable data-sample="{_e(sample_id)}" data-dataset="{_e(runs[0].row["dataset"])}" '
                    f'data-domain="{_e(domain)}" data-style="{_e(style)}">{"".join(cells)}</tr>')
    table = (f'<div class="scroll samples"><table class="grid"><caption>{_e(note)}</caption>'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    return table, labels


def _output_cell(run: ReportRun, record: dict | None, metric_info: dict, thumbs: Thumbnails) -> str:
    run_attr = f'data-run="{_e(run.name)}"'
    if record is None:
        return f'<td class="output absent" {run_attr} data-status="missing">not run</td>'
    if record.get("status") != "ok":
        error = record.get("error") or {}
        return (f'<td class="output failed" {run_attr} data-status="failed">failed at {_e(error.get("stage", "?"))}: '
                f'{_e(error.get("type", ""))}: {_e(error.get("message", ""))}</td>')
    source = run.summary.run_dir / record.get("image", "")
    relative = f"images/outputs/{run.slug}/{safe_filename(record['sample_id'])}"
    preview = run.summary.run_dir / record["preview"] if record.get("preview") else None
    if preview is not None and preview.is_file():  # a video: its looping GIF
        image = thumbs.copy(preview, f"{relative}.gif")
    else:
        image = thumbs.output(source, f"{relative}.png") if source.is_file() else None
    values = "".join(f"<tr><td>{_e(name)}{_e(_arrow(name, metric_info))}</td><td>{_e(_fmt(value))}</td></tr>"
                     for name, value in sorted(record.get("metrics", {}).items()))
    alt = f"{run.name} on {record['sample_id']}"
    return (f'<td class="output" {run_attr} data-status="ok">{_img(image, alt)}'
            f'<table class="values"><tbody>{values}</tbody></table></td>')


def section_html(group: list[ReportRun], grid: str, figures: list[Figure], warnings: list[str]) -> str:
    """One group of runs: its heading and provenance note, warnings, sample grid, then its figures."""
    experiment, dataset, backbone, manifest = group[0].group
    note = describe_rows([r.row for r in group])
    caveat = next((r.caveat for r in group if r.caveat), None)
    random = (f'<p class="warn">{_e(caveat)}: these outputs and numbers exercise the code and say '
              "nothing about quality.</p>" if caveat else "")
    figures_html = "".join(
        f'<figure><img src="{_e(f.path)}" alt="{_e(f.caption)}" loading="lazy">'
        f"<figcaption>{_e(f.caption)} {_e(note)}</figcaption></figure>" for f in figures)
    return (f'<section class="group" data-filterable data-dataset="{_e(dataset)}">'
            f"<h2>{_e(experiment)} / {_e(dataset)} / {_e(backbone)}</h2>"
            f'<p class="note">{_e(note)}<br>manifest: <code>{_e(manifest or "unknown")}</code></p>{random}'
            + "".join(f'<p class="warn">{_e(w)}</p>' for w in warnings)
            + f"<h3>Samples</h3>{grid}"
            + (f'<h3>Plots</h3><div class="figures">{figures_html}</div>' if figures else "")
            + "</section>")


def _select(key: str, values: set[str]) -> str:
    options = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in sorted(values) if v)
    return (f'<label>{_e(key)} <select data-filter="{_e(key)}"><option value="">all</option>{options}'
            "</select></label>")


def page_html(runs: list[ReportRun], metric_info: dict, runs_root: Path, filters: dict[str, list[str]],
              sections: list[str], filter_values: dict[str, set[str]]) -> str:
    """The whole page: header, filters (`filter_values`: dataset, domain, style), leaderboard, sections."""
    filter_text = "; ".join(f"{k} in {v}" for k, v in filters.items()) or "none"
    random_banner = ('<p class="warn">Some runs use RANDOM or partly random weights, or metric weights other than '
                     "the preset's (backbone or metrics; marked below): their numbers test the code, not quality.</p>"
                     if any(r.caveat for r in runs) else "")
    return Template(_asset("templates/page.html")).substitute(
        generator=GENERATOR,
        title=f"semantix report: {len(runs)} run(s)",
        generated=_e(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        runs_root=_e(runs_root),
        filters=_e(filter_text),
        random=random_banner,
        selects="".join(_select(key, values) for key, values in filter_values.items()),
        leaderboard=leaderboard_html(runs, metric_info),
        sections="".join(sections),
        css=_asset("static/report.css"),
        script=_asset("static/report.js"),
    )
