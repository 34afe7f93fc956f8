"""Sweep report: one row per configuration, mean ± std over seeds, a CSV, a markdown table and a chart.

Usage: python -m brewlab.report <sweep-dir> [--out DIR] [--metric NAME] [--title TEXT]
       [--reference OVERRIDES] [--resamples N]

It reads run directories only (`.hydra/*.yaml`, `metrics.json`, `error.txt`; see
`brewlab.core.layout`) and never imports the training code, so it works on a copied or
half-finished sweep and on a machine without torch. Job states: `metrics.json` -> finished,
`error.txt` -> failed (first line is the message), neither -> still running (counted, not
averaged). Std is the sample std (n-1); it is blank when n=1.

Each configuration is also compared with a reference (the labels-only one when the sweep has
one, else the first; `--reference` names another) on the test split, by a paired bootstrap over
the students' per-example predictions (`predictions/student/test.jsonl`; see
`brewlab.eval.significance`). Runs without predictions (written before they existed) are listed,
not compared.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brewlab.eval.significance import DEFAULT_RESAMPLES
from brewlab.report.build import build_report
from brewlab.report.jobs import ReportError, by_config


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; bad input is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m brewlab.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="sweep dir (hydra.sweep.dir) or a single run dir")
    parser.add_argument("--out", type=Path, default=None, help="where to write report.* (default: the sweep dir)")
    parser.add_argument("--metric", default=None, help="metric to report (default: the task's main metric)")
    parser.add_argument("--title", default=None, help="chart/report title (default: experiment or sweep name)")
    parser.add_argument(
        "--reference",
        default=None,
        help="configuration the others are compared with, as its overrides (default: the labels-only one, else the first)",
    )
    parser.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help=f"bootstrap resamples (default {DEFAULT_RESAMPLES:,}; the generator seed is fixed, so a report repeats exactly)",
    )
    args = parser.parse_args(argv)
    try:
        table, jobs = build_report(args.sweep, args.out, args.metric, args.title, args.reference, args.resamples)
    except ReportError as exc:
        print(f"brewlab: error: {exc}", file=sys.stderr)
        return 2
    counts = {s: sum(1 for j in jobs if j.status == s) for s in ("finished", "failed", "running")}
    print(table)
    for job in by_config(j for j in jobs if j.status == "failed"):
        print(f"failed: {job.config} seed={job.seed}: {job.error}")
    print(
        f"\n{counts['finished']} finished, {counts['failed']} failed, {counts['running']} running; "
        f"wrote report.csv, report.md"
        + (", report.png" if counts["finished"] else "")
        + f" to {args.out or args.sweep}"
    )
    return 0

