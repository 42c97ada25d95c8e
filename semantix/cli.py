"""Console entry points.

- `semantix-bench [overrides]`: a Hydra app over `conf/` (default experiment `demo`). Each job
  writes one run directory per method and refreshes the leaderboard. Exit status: 0 when every
  sample succeeded; otherwise the number of failed samples (capped at 100); 101 when a whole job
  could not run (the error is printed; in a multirun the other jobs still run) or a `method.*`
  override names no method parameter of the job (`method_key_problems`). This accounting
  covers the jobs run in this process (Hydra's default basic launcher). With an out-of-process
  launcher (`hydra/launcher=submitit_slurm` or `submitit_local`) each job's outcome stays in its own
  process: the exit status is 0 once every job returned (non-zero only when Hydra/submitit itself
  fails), and the results tell the rest (leaderboard `n_failed`/`n_missing`, `invocations/*.json`,
  the `.submitit/` logs). Every job still rewrites the leaderboard when it ends.
- `semantix-leaderboard [--runs DIR] [--out CSV] [--markdown MD] [--table styleid]`: aggregate run
  directories; `--table` also writes a paper's table (column order, units, published values beside).
- `semantix-report [--runs DIR] [--out DIR] [--filter KEY=VALUE] [--order LABELS] [--wandb PROJECT]`:
  the static HTML report of run directories (`semantix.report`, docs/report.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig

from semantix.runtime import config_dir

log = logging.getLogger("semantix")

JOB_FAILED_EXIT = 101
MAX_FAILED_EXIT = 100

# Outcomes of the jobs this process ran (Hydra's basic launcher runs a multirun in-process; the
# submitit launcher runs jobs elsewhere, whose outcomes never reach this list).
_job_outcomes: list[int] = []


def root_cause(error: BaseException) -> BaseException:
    """The plugin's own error behind Hydra's instantiation wrapper (its message is what users need)."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _leaderboard_paths(results_dir: Path) -> tuple[Path, Path, Path]:
    return results_dir / "runs", results_dir / "leaderboard.csv", results_dir / "leaderboard.md"


class ResultsDirCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): before Hydra creates its output folder under
    `paths.results_dir`, check that the results directory can be written; when it cannot, print a
    message naming it and exit with status 101 (a job that could not run)."""

    @staticmethod
    def _check(config: DictConfig) -> None:
        from semantix.io import ResultsNotWritable, check_writable_directory

        try:
            check_writable_directory(Path(config.paths.results_dir))
        except ResultsNotWritable as e:
            print(f"semantix-bench: {e}", file=sys.stderr)
            sys.exit(JOB_FAILED_EXIT)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config)


# What `semantix-bench --help` prints before Hydra's own help; README's "Using it" block shows the same examples.
BENCH_DESCRIPTION = """\
semantix-bench: run style-transfer methods on a dataset, score every output with a metric preset, and
write one resumable run directory per method under <paths.results_dir>/runs/ plus the leaderboard
(<paths.results_dir>/leaderboard.csv and .md). Arguments are Hydra overrides of conf/; a method's
parameters sit under method.<label>.<key>."""
BENCH_EXAMPLES = (
    ("semantix-bench", "default experiment: demo (9 methods, tiny backbone, CPU)"),
    ("semantix-bench method=reinhard dataset.limit=2", "one method, first two samples"),
    ("semantix-bench method=semantix method.semantix.num_steps=10", "a method's parameter: method.<label>.<key>"),
    ("semantix-bench -m method=identity,reinhard", "Hydra multirun: one job (and run dir) per method"),
    ("semantix-bench dataset=manifest dataset.manifest=/data/pairs/manifest.csv", "your own content/reference pairs"),
)


def bench_help() -> str:
    examples = "\n".join(f"  {command}\n      {what}" for command, what in BENCH_EXAMPLES)
    return f"{BENCH_DESCRIPTION}\n\nExamples:\n{examples}\n\nHydra's help for this app follows.\n"


def _override_as_first_job(override: Override) -> str:
    """The override as the first job of a sweep sees it (`a=1,2` -> `a=1`); other overrides unchanged."""
    if not override.is_sweep_override():
        return override.input_line
    return f"{override.get_key_element()}={next(override.sweep_string_iterator())}"


def method_key_problems(overrides: list[str]) -> list[str]:
    """What is wrong with the `method.*` overrides among `overrides`, told in this project's terms.

    Method parameters sit under `method.<label>.<key>`, one node per method of the job. Hydra rejects
    `method.num_steps=2` (no label) or a key no method has with a generic "not in struct" message;
    this names the right form and the labels of the job. Empty when nothing is wrong, or when the job
    does not compose without the `method.*` overrides (Hydra then reports that error itself).
    """
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - a syntax error: Hydra's own message is the one to show
        return []
    method_keys = [o for o in parsed if o.type == OverrideType.CHANGE and o.key_or_group.startswith("method.")]
    if not method_keys:
        return []  # the common case costs nothing
    try:
        from semantix.config import compose_config

        methods = compose_config([_override_as_first_job(o) for o in parsed if o not in method_keys]).method
    except Exception:  # noqa: BLE001 - left to Hydra, which reports it with the user's full command line
        return []
    labels = ", ".join(methods) or "none"
    problems = []
    for override in method_keys:
        _, label, *rest = override.key_or_group.split(".")
        value = override.input_line.split("=", 1)[1]
        if label in methods:
            if rest and rest[0] not in methods[label]:
                problems.append(f"{override.input_line}: method {label!r} has no parameter {rest[0]!r} "
                                f"(its parameters: {', '.join(k for k in methods[label] if k != '_target_')})")
            continue
        owners = [name for name, node in methods.items() if label in node]
        if owners:
            right = " or ".join(f"method.{name}.{'.'.join([label, *rest])}={value}" for name in owners)
            problems.append(f"{override.input_line}: a method's parameters sit under method.<label>.<key>; "
                            f"write {right} (the labels in this job: {labels})")
        else:
            problems.append(f"{override.input_line}: no method in this job is labelled {label!r} or has a "
                            f"parameter {label!r}; a method's parameters sit under method.<label>.<key> (the labels "
                            f"in this job: {labels}; add a method with method=[...] or an experiment)")
    return problems


def _run_job(cfg: DictConfig) -> None:
    from semantix.config import job_labels

    labels = job_labels(HydraConfig.get())
    # The first line within a second or two of the start: importing torch, diffusers and the methods
    # takes several seconds more, and a silent terminal looks like a hang.
    log.info("job: experiment=%s dataset=%s backbone=%s metrics=%s, method(s) %s; loading the libraries",
             labels.experiment, labels.dataset, labels.backbone, labels.metrics, ", ".join(cfg.method) or "none")
    from semantix.leaderboard import write_leaderboard
    from semantix.runner import Runner

    logger = instantiate(cfg.logger)
    try:
        result = Runner(cfg, labels, logger=logger).run()
    except Exception as e:  # noqa: BLE001 - report the job's failure clearly, let other jobs run
        log.debug("job failed", exc_info=True)
        cause = root_cause(e)
        log.error("job failed: %s: %s", type(cause).__name__, cause)
        _job_outcomes.append(JOB_FAILED_EXIT)
        return
    for run in result.runs:
        log.info(
            "%s: %d ok, %d failed, %d skipped (already done), %d re-scored -> %s",
            run.label, run.ok, run.failed, run.skipped, run.rescored, run.run_dir,
        )
        for error in run.errors[:10]:
            log.info("  failed: %s", error)
    if cfg.runner.leaderboard:
        runs_root, csv_path, md_path = _leaderboard_paths(Path(cfg.paths.results_dir))
        write_leaderboard(runs_root, csv_path, md_path)
        log.info("leaderboard: %s (and %s)", csv_path, md_path.name)
    _job_outcomes.append(min(result.n_failed, MAX_FAILED_EXIT))


def bench() -> None:
    try:
        conf = config_dir()  # the checkout's conf/, or the copy an installed wheel ships
    except FileNotFoundError as e:
        sys.exit(f"semantix-bench: {e}")
    from semantix.config import HYDRA_VERSION_BASE  # after the check: semantix.config locates conf/ on import

    arguments = sys.argv[1:]
    if "--help" in arguments or "-h" in arguments:
        print(bench_help())
    problems = method_key_problems([a for a in arguments if "=" in a and not a.startswith("-")])
    if problems:
        print("semantix-bench: " + "\n".join(problems), file=sys.stderr)
        sys.exit(JOB_FAILED_EXIT)
    hydra.main(version_base=HYDRA_VERSION_BASE, config_path=str(conf), config_name="config")(_run_job)()
    failed_jobs = _job_outcomes.count(JOB_FAILED_EXIT)
    failed_samples = sum(o for o in _job_outcomes if o != JOB_FAILED_EXIT)
    if failed_jobs:
        print(f"semantix-bench: {failed_jobs} job(s) failed; {failed_samples} failed sample(s) in the others",
              file=sys.stderr)
        sys.exit(JOB_FAILED_EXIT)
    sys.exit(min(failed_samples, MAX_FAILED_EXIT))


def leaderboard(argv: list[str] | None = None) -> None:
    from semantix.leaderboard import write_leaderboard
    from semantix.tables import TABLES

    default_runs, default_csv, default_md = _leaderboard_paths(Path("results"))
    parser = argparse.ArgumentParser(prog="semantix-leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=default_runs, help="folder of run directories")
    parser.add_argument("--out", type=Path, default=default_csv, help="CSV to write")
    parser.add_argument("--markdown", type=Path, default=default_md, help="Markdown table to write")
    parser.add_argument("--table", choices=sorted(TABLES), default=None,
                        help="also write a paper table (its column order and units, beside the published "
                             "values) to <out folder>/table_<name>.csv and .md, and print it")
    parser.add_argument("--published", type=Path, default=None,
                        help="CSV of published values (default: results/published/<table>.csv)")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        sys.exit(f"semantix-leaderboard: no runs folder at {args.runs} (run semantix-bench first)")
    table = write_leaderboard(args.runs, args.out, args.markdown)
    print(f"{len(table)} row(s) -> {args.out} and {args.markdown}")
    if args.table:
        print(write_paper_table(table, args.table, args.out.parent, args.published), end="")


def write_paper_table(leaderboard_table, name: str, out_dir: Path, published: Path | None = None) -> str:
    """`semantix-leaderboard --table NAME`: table_<name>.csv and .md beside the leaderboard; returns the Markdown."""
    from semantix.io import atomic_write_bytes
    from semantix.tables import TABLES, paper_table, read_published, to_markdown

    spec = TABLES[name]
    frame = paper_table(leaderboard_table, spec, read_published(published or spec.published_path()))
    markdown = to_markdown(frame, spec)
    atomic_write_bytes(Path(out_dir) / f"table_{name}.csv", frame.to_csv(index=False).encode())
    atomic_write_bytes(Path(out_dir) / f"table_{name}.md", markdown.encode())
    return markdown


def report(argv: list[str] | None = None) -> None:
    """`semantix-report` (docs/report.md): build the HTML report of run directories
    (`semantix.report`), then with `--wandb PROJECT` log its leaderboard and plots as one wandb run
    (`semantix.loggers`; the report package stays below the loggers and knows nothing of wandb)."""
    from semantix.loggers import log_report_to_wandb
    from semantix.report import build

    args = build.parser().parse_args(argv)
    index = build.build_from_options(args)
    if args.wandb:
        print(f"wandb -> {log_report_to_wandb(index.parent, args.wandb)}")
