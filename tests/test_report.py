"""`semantix-report` on real run directories: valid self-contained HTML with every sample and method,
methods in the configured order, sweep / comparison / trade-off / diagnostics plots, run filters,
headless-Chromium checks (the page fits a 1400 px window, every image renders, the table sorts and
filters), and the wandb logger's end-of-run table and plot.

Chromium is a system package that `.ci/run` installs; without it on PATH the browser tests fail."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from harness import composed, run_job
from hydra.utils import instantiate
from PIL import Image

from semantix.cli import report as report_command
from semantix.leaderboard import is_quality_result
from semantix.report.figures import pick_metric
from semantix.report.inputs import input_strip
from semantix.report.runs import (
    METHOD_ORDER,
    group_runs_by_key,
    load_runs,
    method_rank,
    sweep_lines,
    swept_parameters,
)
from semantix.runner import Runner
from semantix.store import find_runs

CLASSICAL = "method=[identity,reinhard,histogram_matching]"
# Semantix on the tiny backbone in 2 steps: fast, and it records per-step diagnostics.
FAST_SEMANTIX = ["method=semantix_20steps", "method.semantix_20steps.num_steps=2",
                 "method.semantix_20steps.adain_start_step=1"]
DEMO_SAMPLES = 8
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
WINDOW = (1400, 900)  # a laptop browser window: the page must fit its width
SELFTEST = Path(__file__).with_name("report_selftest.js")
# The fixture's runs in the default method order: the headline method, the Reinhard sweep, the rest.
ORDERED_LABELS = ["semantix_20steps", "reinhard", "reinhard", "histogram_matching", "identity"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """The demo set with the classical methods (8 samples, one multi-reference), Semantix on its first
    sample only (an incomplete run), and Reinhard with a second eps: a one-parameter sweep."""
    root = tmp_path_factory.mktemp("report") / "results"
    run_job(["experiment=demo", CLASSICAL], root)
    run_job(["experiment=demo", "dataset.limit=1", *FAST_SEMANTIX], root)
    run_job(["experiment=demo", "method=reinhard", "method.reinhard.eps=0.5"], root)
    return root


@pytest.fixture(scope="module")
def report(results) -> Path:
    report_command(["--runs", str(results / "runs"), "--out", str(results / "report")])
    return results / "report"


# -- HTML structure ----------------------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
PARENTS = {"tr": {"thead", "tbody"}, "td": {"tr"}, "th": {"tr"}, "thead": {"table"}, "tbody": {"table"},
           "caption": {"table"}, "option": {"select"}, "li": {"ul", "ol"}, "figcaption": {"figure"}}


class Page(HTMLParser):
    """The parsed page: elements with their attributes and ancestors, and every structural error
    (unclosed or misnested tags, elements outside their required parent, duplicate ids)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.doctype: str | None = None
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.elements: list[tuple[str, dict, tuple[str, ...]]] = []
        self.texts: dict[str, str] = {}
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")
        ids = Counter(attrs["id"] for _, attrs, _ in self.elements if "id" in attrs)
        self.errors += [f"duplicate id {i}" for i, n in ids.items() if n > 1]

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        parent = self.stack[-1] if self.stack else None
        if tag in PARENTS and parent not in PARENTS[tag]:
            self.errors.append(f"<{tag}> inside <{parent}>")
        self.elements.append((tag, dict(attrs), tuple(self.stack)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        if self.elements and self.elements[-1][1].get("id"):
            key = self.elements[-1][1]["id"]
            self.texts[key] = self.texts.get(key, "") + data

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a, _ in self.elements
                if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def references(self) -> list[str]:
        return [a[key] for _, a, _ in self.elements for key in ("src", "href") if a.get(key)]


def parse(index: Path) -> Page:
    page = Page(index.read_text(encoding="utf-8"))
    assert page.doctype and page.doctype.lower() == "doctype html"
    assert not page.errors, page.errors[:10]
    for tag in ("html", "head", "body", "title"):
        assert len(page.find(tag)) == 1, tag
    return page


def test_demo_report_is_valid_self_contained_and_complete(results, report):
    page = parse(report / "index.html")
    references = page.references()
    assert references
    for ref in references:
        assert "://" not in ref and not ref.startswith("/"), ref  # relative: the folder is portable
        target = (report / ref).resolve()
        assert target.is_relative_to(report.resolve()) and target.is_file(), ref
    for png in (report / "images").rglob("*.png"):
        assert png.relative_to(report).as_posix() in references, f"{png} written but not used"
    assert (report / "leaderboard.csv").is_file()

    runs = find_runs(results / "runs")
    assert len(runs) == 5
    leaderboard_rows = [a for t, a, parents in page.elements if t == "tr" and "tbody" in parents
                        and "td" not in parents and "data-sample" not in a]
    assert len(leaderboard_rows) == len(runs)
    columns = [a["data-run"] for a in page.find("th") if "data-run" in a]
    assert set(columns) == {"identity", "histogram_matching", "reinhard (eps=0.5)", "reinhard (eps=1e-06)",
                            "semantix_20steps"}
    # the headline method first, then the other labels in METHOD_ORDER; the leaderboard in the same order
    assert [name.split(" (")[0] for name in columns] == ORDERED_LABELS
    assert [a["data-sort"] for t, a, parents in page.elements
            if t == "td" and a.get("class") == "pin" and "tbody" in parents] == columns
    rows = {a["data-sample"] for a in page.find("tr") if "data-sample" in a}
    assert len(rows) == DEMO_SAMPLES
    for run in runs:
        for record in run.records:
            assert record["sample_id"] in rows
            image = f"images/outputs/demo/demo/tiny/{run.run_dir.name}/{record['sample_id']}.png"
            assert image in references, image
    statuses = Counter(a["data-status"] for a in page.find("td") if "data-status" in a)
    assert statuses == {"ok": 4 * DEMO_SAMPLES + 1, "missing": DEMO_SAMPLES - 1}

    # every input once (4 contents, 4 styles), the multi-reference sample with both references
    inputs = {r for r in references if r.startswith("images/inputs/")}
    assert len(inputs) == 8
    multi = next(a for a in page.find("tr") if a.get("data-sample") == "rocket__sunset_strokes+teal_mosaic")
    assert multi["data-domain"] == "vehicles"
    text = (report / "index.html").read_text()
    assert "<b>rocket__<wbr>sunset_<wbr>strokes+<wbr>teal_<wbr>mosaic</b>" in text  # wraps at separators only
    assert "selftest" not in text  # the browser check is the test's, never shipped
    # the backbone, its weights warning and the metric preset on every table and figure
    captions = [a for t, a, _ in page.elements if t == "caption"]
    assert len(captions) == 2
    # the tiny backbone's exact weights label (it is no quality result) as the leaderboard has it
    (label,) = {w for w in pd.read_csv(report / "leaderboard.csv")["weights"] if not is_quality_result(w)}
    assert label.startswith(("RANDOM", "tiny"))
    assert text.count(f"backbone tiny ({label}) · metrics demo") >= 2 + 4
    assert {a["data-filter"] for a in page.find("select")} == {"dataset", "domain", "style"}


def test_sweep_comparison_tradeoff_and_diagnostics_plots(results, report):
    runs, metric_info = load_runs(results / "runs", {})
    (group,) = group_runs_by_key(runs).values()
    assert swept_parameters(group) == ["method.eps"]
    (line,) = sweep_lines(group, "method.eps").items()
    assert line[0] == "reinhard" and sorted(v for v, _ in line[1]) == [1e-6, 0.5]
    plots = sorted(p.name.split("__")[-1] for p in (report / "plots").glob("*.png"))
    assert plots == ["comparison.png", "diagnostics-semantix_20steps.png", "sweep-method.eps.png", "tradeoff.png"]
    text = (report / "index.html").read_text()
    for path in (report / "plots").glob("*.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
        assert f'src="plots/{path.name}"' in text


def test_tradeoff_metric_preference():
    info = {"gram": {"compares": "output-reference"}, "x_struct": {"compares": "output-content"}}
    assert pick_metric(["colour_histogram", "clip_style", "ssim_grey"], ("clip_style", "colour_histogram"),
                       info, "output-reference") == "clip_style"
    assert pick_metric(["x_struct", "gram"], ("structure_dino",), info, "output-content") == "x_struct"
    assert pick_metric(["gram"], ("structure_dino",), info, "output-content") is None


def test_reference_strip_puts_references_side_by_side(tmp_path):
    from conftest import write_png

    paths = [write_png(tmp_path / f"r{i}.png", size=(96, 80), seed=i) for i in range(2)]
    assert input_strip(paths, 64).size == (128, 64)


def test_filters_select_runs_and_bad_requests_fail_clearly(results, tmp_path):
    out = tmp_path / "only-reinhard"
    report_command(["--runs", str(results / "runs"), "--out", str(out), "--filter", "method=rein*"])
    page = parse(out / "index.html")
    assert {a["data-run"] for a in page.find("th") if "data-run" in a} == {"reinhard (eps=0.5)",
                                                                           "reinhard (eps=1e-06)"}
    assert not list((out / "images/outputs/demo/demo/tiny").glob("identity-*"))
    report_command(["--runs", str(results / "runs"), "--out", str(out), "--filter", "method=identity"])  # replaces it
    assert {a["data-run"] for a in parse(out / "index.html").find("th") if "data-run" in a} == {"identity"}
    for argv, message in [
        (["--filter", "colour=red"], "unknown key 'colour'"),
        (["--filter", "method=nothing"], "matches the filters"),
        (["--filter", "method"], "expected KEY=VALUE"),
    ]:
        with pytest.raises(SystemExit, match=message):
            report_command(["--runs", str(results / "runs"), "--out", str(tmp_path / "x"), *argv])
    precious = tmp_path / "precious"
    (precious / "notes.txt").parent.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not an earlier report"):
        report_command(["--runs", str(results / "runs"), "--out", str(precious)])
    assert (precious / "notes.txt").read_text() == "mine"


def test_moved_manifest_leaves_outputs_and_says_why(results, tmp_path):
    runs = tmp_path / "runs"
    run_dir = next((results / "runs").rglob("identity-*"))
    copy = runs / run_dir.relative_to(results / "runs")
    shutil.copytree(run_dir, copy)
    provenance = json.loads((copy / "provenance.json").read_text())
    provenance["data"]["manifest"] = str(tmp_path / "gone" / "manifest.csv")
    (copy / "provenance.json").write_text(json.dumps(provenance))
    report_command(["--runs", str(runs), "--out", str(tmp_path / "report")])
    page = parse(tmp_path / "report" / "index.html")
    text = (tmp_path / "report" / "index.html").read_text()
    assert "inputs not shown: manifest" in text
    sources = [a["src"] for a in page.find("img")]
    assert not [s for s in sources if s.startswith("images/inputs/")]
    assert len([s for s in sources if s.startswith("images/outputs/")]) == DEMO_SAMPLES
    assert all((tmp_path / "report" / s).is_file() for s in sources)


# -- the page in a browser ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium: a system package (.ci/run installs it); a missing one fails, it is never skipped."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("`chromium` is not on PATH: the report's browser tests need it; install the system package "
                    "(`apt-get install chromium`, as .ci/run does) and run the tests again")
    return found


def _chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def browser_selftest(chromium: str, index: Path, profile: Path) -> dict:
    """Open a copy of the page with tests/report_selftest.js injected (beside it, so its relative
    links still resolve) at the WINDOW size, and return the checks the script wrote into the DOM."""
    page = index.with_name("selftest.html")
    script = f"<script>{SELFTEST.read_text(encoding='utf-8')}</script></body>"
    page.write_text(index.read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    try:
        done = _chromium(chromium, profile, "--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri())
    finally:
        page.unlink()
    result = Page(done.stdout).texts.get("selftest-result", "")
    assert result, f"no self-test result (exit {done.returncode}): {done.stderr[-1500:]}"
    return json.loads(result)


def test_page_fits_a_1400px_window_and_every_image_loads(report, chromium, tmp_path):
    """The screenshot test: at 1400x900 the page has no horizontal overflow (wide tables scroll inside
    their own box), every image decodes, and sample images are shown at a legible size."""
    n_images = len(parse(report / "index.html").find("img"))
    result = browser_selftest(chromium, report / "index.html", tmp_path / "profile")
    assert result["viewport_width"] == WINDOW[0]
    assert result["scroll_width"] <= result["client_width"] <= WINDOW[0], result
    assert result["images"] == n_images and result["broken"] == []
    # contents, references (one sample has two), outputs
    assert len(result["grid_image_widths"]) == DEMO_SAMPLES + DEMO_SAMPLES + 1 + 4 * DEMO_SAMPLES + 1
    assert min(result["grid_image_widths"]) >= 150
    screenshot = tmp_path / "report-1400.png"
    done = _chromium(chromium, tmp_path / "profile", f"--screenshot={screenshot}", (report / "index.html").resolve().as_uri())
    assert screenshot.is_file(), done.stderr[-1500:]
    with Image.open(screenshot) as image:
        assert image.size == WINDOW


def test_page_sorts_and_filters_in_chromium_and_the_checks_can_fail(report, chromium, tmp_path):
    result = browser_selftest(chromium, report / "index.html", tmp_path / "profile-1")
    sort = result["sort"]
    assert sort["ascending"] == sorted(sort["ascending"]) and sort["descending"] == sorted(sort["descending"])[::-1]
    assert sort["ascending_ok"] and sort["descending_ok"] and len(sort["ascending"]) == 5
    assert result["filter"] == {"key": "domain", "value": "animals", "shown": 2, "hidden": DEMO_SAMPLES - 2,
                                "all_match": True}
    # a corrupt thumbnail is reported, and so is an element wider than the window
    broken = tmp_path / "broken"
    shutil.copytree(report, broken)
    victim = next((broken / "images" / "inputs").glob("*.png"))
    victim.write_bytes(b"not a png")
    index = broken / "index.html"
    index.write_text(index.read_text().replace("</body>", '<div style="width:2000px">wide</div></body>'))
    result = browser_selftest(chromium, index, tmp_path / "profile-2")
    assert victim.relative_to(broken).as_posix() in result["broken"]
    assert result["scroll_width"] > result["client_width"]


def test_method_order_puts_variants_after_their_base_and_is_configurable(results, tmp_path):
    order = ("semantix", "styleid", "eye_for_an_eye", "reinhard")
    labels = ["reinhard", "zeta", "styleid_20steps", "frames_semantix", "semantix", "eye_for_an_eye_20steps",
              "alpha", "semantix_no_adain"]
    ranked = sorted(labels, key=lambda label: method_rank(label, order))  # stable: ties keep this order
    assert ranked == ["semantix", "frames_semantix", "semantix_no_adain", "styleid_20steps",
                      "eye_for_an_eye_20steps", "reinhard", "zeta", "alpha"]
    assert METHOD_ORDER[0] == "semantix"
    out = tmp_path / "ordered"
    report_command(["--runs", str(results / "runs"), "--out", str(out), "--order", "identity,reinhard"])
    columns = [a["data-run"] for a in parse(out / "index.html").find("th") if "data-run" in a]
    # named labels first; the others (histogram_matching, semantix_20steps) after, in leaderboard order
    assert [name.split(" (")[0] for name in columns] == ["identity", "reinhard", "reinhard", "histogram_matching",
                                                        "semantix_20steps"]


# -- wandb -------------------------------------------------------------------------------------------
def test_wandb_logs_table_with_images_and_diagnostics_offline(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[dict] = []
    original = wandb.Run.log

    def capture(self, data, *args, **kwargs):
        logged.append(data)
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", capture)
    cfg, labels = composed(["experiment=demo", "dataset.limit=1", *FAST_SEMANTIX, "logger=wandb"],
                           tmp_path / "results")
    logger = instantiate(cfg.logger)
    assert logger.mode == "offline"
    run = Runner(cfg, labels, logger=logger).run().runs[0]
    assert run.ok == 1
    final = next(payload for payload in logged if "records" in payload)
    table = final["records"]
    assert table.columns == ["sample_id", "status", "error", "output", "content", "reference",
                             "colour_histogram", "ssim_grey"]
    row = dict(zip(table.columns, table.data[0], strict=True))
    for column in ("output", "content", "reference"):
        assert isinstance(row[column], wandb.Image), column
    record = json.loads(next((run.run_dir / "records").glob("*.json")).read_text())
    assert row["colour_histogram"] == record["metrics"]["colour_histogram"]
    assert isinstance(final["diagnostics"], wandb.Image)
    # The table's media file is written by the SDK when logging (the .wandb data file is written
    # asynchronously by wandb's service, so it is not read here).
    (table_file,) = run.run_dir.glob("wandb/offline-run-*/files/media/table/records_*.table.json")
    assert json.loads(table_file.read_text())["columns"] == table.columns


def test_report_plots_and_leaderboard_go_to_wandb_offline(report, tmp_path, monkeypatch):
    import shutil

    from semantix.loggers import log_report_to_wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    copy = tmp_path / "report"
    shutil.copytree(report, copy)
    run_dir = Path(log_report_to_wandb(copy, "semantix-test"))
    logged = {p.name.split("_")[0] for p in (run_dir / "media" / "images" / "plots").glob("*.png")}
    assert logged == {p.stem.split("_")[0] for p in (copy / "plots").glob("*.png")}
    tables = list((run_dir / "media" / "table").glob("leaderboard_*.table.json"))
    assert len(tables) == 1 and "method" in json.loads(tables[0].read_text())["columns"]
    assert not (copy / "wandb").exists()  # the report folder stays portable


def _semantix_imports(module: str) -> set[str]:
    """The semantix modules a module's source imports anywhere (top level or inside functions)."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in (n for n in names if n.split(".")[0] == "semantix"):
        try:
            if importlib.util.find_spec(name) is not None:
                found.add(name)
        except ModuleNotFoundError:  # `from module import function`: the function is no module
            pass
    return found


def test_report_package_sits_below_the_loggers():
    """Nothing the report package imports, directly or through other modules, even inside a function,
    is semantix.loggers or the CLI (loggers use the report, never the reverse)."""
    package = Path(importlib.util.find_spec("semantix.report").origin).parent
    pending = [f"semantix.report.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"]
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(_semantix_imports(module))
    assert "semantix.report.render" in seen and "semantix.store" in seen  # the walk follows imports
    assert not seen & {"semantix.loggers", "semantix.cli"}
