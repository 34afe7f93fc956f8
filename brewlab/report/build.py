"""The whole report of a sweep: its jobs read, aggregated and compared, then report.md, report.csv
and report.png written (the chart once a job has finished)."""

from __future__ import annotations

import math
from pathlib import Path

from brewlab.eval.significance import DEFAULT_RESAMPLES, DEFAULT_SEED, RecordsError
from brewlab.report.aggregate import aggregate, as_number, metric_percent
from brewlab.report.chart import plot
from brewlab.report.comparisons import against_labels_only, significance
from brewlab.report.jobs import Job, ReportError, experiment_name, factor_shared, load_jobs
from brewlab.report.markdown import labels_only_md, main_table, render_markdown, significance_md
from brewlab.report.table import write_csv


def build_report(
    sweep: Path,
    out: Path | None = None,
    metric: str | None = None,
    title: str | None = None,
    reference: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[str, list[Job]]:
    """Write report.csv/.md/.png for a sweep; returns the markdown table and the jobs read.

    Raises ReportError on bad input, so library callers decide how to show it.
    """
    jobs = load_jobs(sweep)
    shared = factor_shared(jobs)
    rows = aggregate(jobs, metric)
    if metric and rows and all(math.isnan(r.values["student_test"][0]) for r in rows):
        found = sorted(
            {
                k
                for j in jobs
                if j.status == "finished"
                for k, v in (j.metrics["student"].get("test") or {}).items()
                if not math.isnan(as_number(v))
            }
        )
        raise ReportError(f"metric {metric!r} not found in {sweep}; available: {', '.join(found) or 'none'}")
    if resamples < 1:
        raise ReportError(f"--resamples={resamples} must be >= 1")
    mains = {str((j.metrics.get("task") or {}).get("main_metric")) for j in jobs if j.status == "finished"}
    if metric and metric not in mains:  # per-example records carry the main metric only
        if reference:
            raise ReportError(f"--reference compares the main metric ({', '.join(sorted(mains))}); drop --metric {metric}")
        rows_compared = []
    else:
        rows_compared = rows
    try:
        sig = significance(jobs, rows_compared, reference, resamples) if rows_compared else None
        metric_name = "/".join(sorted(mains))
        in_run = labels_only_md(
            against_labels_only(jobs, rows_compared, resamples), metric_name, metric_percent(rows), resamples, DEFAULT_SEED
        )
    except RecordsError as exc:
        raise ReportError(str(exc)) from None
    out = out or sweep
    out.mkdir(parents=True, exist_ok=True)
    name = title or experiment_name(jobs, sweep)
    (out / "report.md").write_text(render_markdown(name, sweep, jobs, rows, shared, sig, in_run), encoding="utf-8")
    write_csv(out / "report.csv", jobs, rows, sig)
    if rows:
        plot(out / "report.png", rows, f"{name}\n(all jobs: {', '.join(shared)})" if shared else name, sig)
    table = main_table(rows) if rows else "no finished jobs yet"
    if sig is not None:
        table += "\n\n" + significance_md(sig, metric_percent(rows))
    if in_run:
        table += "\n\n" + in_run
    return table, jobs
