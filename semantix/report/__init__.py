"""`semantix-report`: a static HTML report of run directories (no server, no network).

    semantix-report [--runs results/runs] [--out results/report] [--filter KEY=VALUE ...]
                    [--order semantix,styleid,...] [--thumbnail-size 256] [--wandb PROJECT]

The report shows the leaderboard of the selected runs (sortable, filterable by dataset, domain and
style) and, per group of runs (experiment x dataset x backbone x manifest), a sample grid (content,
reference(s) and every run's output with its metric values), then bar charts of every metric with
95% confidence intervals (for an ablation job: the ablation chart), the style/structure trade-off,
each metric against each swept parameter and the per-step diagnostics of one sample of every guided
run. Methods appear in a fixed order (`runs.METHOD_ORDER`, `--order`): the headline method, then
the baselines, then the classical references. Every table and figure names its backbone (with the
weights warning of a random-weight backbone) and metric preset. Numbers come from `semantix.leaderboard`; nothing is
re-run or re-scored. The report sits below `semantix.loggers` (which reuses its thumbnails and
plots) and knows nothing of wandb: `semantix.cli.report` adds the --wandb upload.

The folder is self-contained (move or zip it and it still works)::

    index.html                 the page (inline CSS and JS, from this package's templates/ and static/)
    leaderboard.csv            the leaderboard rows of the selected runs, in the page's order
    images/inputs/<sha>-<px>.png   content and reference images as the methods saw them, once each
    images/outputs/<experiment>/<dataset>/<backbone>/<run>/<sample>.png   outputs (thumbnails; a video
                               output: its looping GIF preview, <sample>.gif)
    plots/<group>__<kind>.png  the figures, also shown in the page

Modules: `runs` (selection, order, names, swept parameters), `inputs` (manifests, thumbnails),
`figures` (which figures, written as files) drawn by `plots` (matplotlib), `render` (HTML), `build`
(the folder and the command's options). See docs/report.md.
"""

from semantix.report.build import build_report
from semantix.report.runs import METHOD_ORDER, ReportError

__all__ = ["METHOD_ORDER", "ReportError", "build_report"]
