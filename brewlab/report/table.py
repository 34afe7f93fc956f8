"""report.csv: one numeric row per configuration (means and stds of every metric, its comparison
with the reference), then one row per failed and running job."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from brewlab.report.aggregate import CORE_COLUMNS, Row
from brewlab.report.comparisons import Significance
from brewlab.report.jobs import Job, by_config


def _csv_num(value: float) -> str:
    """Blank for missing; whole numbers (parameter counts, steps) without a trailing .0."""
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


SIGNIFICANCE_COLUMNS = ("reference", "test_diff", "test_diff_low", "test_diff_high", "p_value", "p_holm", "differs")


def _significance_cells(sig: Significance | None, config: str) -> list[str]:
    if sig is None or config not in sig.results:
        return [sig.reference if sig else ""] + [""] * (len(SIGNIFICANCE_COLUMNS) - 1)
    c = sig.results[config]
    return [sig.reference, *(_csv_num(v) for v in (c.difference, c.low, c.high, c.p, c.p_holm)), str(c.significant).lower()]


def write_csv(path: Path, jobs: Sequence[Job], rows: Sequence[Row], sig: Significance | None = None) -> None:
    """Numeric CSV: status=ok rows per configuration, then one row per failed and running job."""
    extra_paths = sorted({p for r in rows for p in r.extras})
    header = ["status", "configuration", "metric", "n", "seeds"]
    for col in CORE_COLUMNS:
        header += [f"{col}_mean", f"{col}_std"]
    header += SIGNIFICANCE_COLUMNS
    for p in extra_paths:
        header += [f"{p}_mean", f"{p}_std"]
    header.append("error")
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in rows:
            line = ["ok", r.config, r.metric, r.n, " ".join(str(s) for s in r.seeds)]
            for col in CORE_COLUMNS:
                line += [_csv_num(r.values[col][0]), _csv_num(r.values[col][1])]
            line += _significance_cells(sig, r.config)
            for p in extra_paths:
                mean, std, _ = r.extras.get(p, (math.nan, math.nan, 0))
                line += [_csv_num(mean), _csv_num(std)]
            writer.writerow([*line, ""])
        blank = [""] * (2 * (len(CORE_COLUMNS) + len(extra_paths)) + len(SIGNIFICANCE_COLUMNS))
        for status in ("failed", "running"):
            for j in by_config(x for x in jobs if x.status == status):
                writer.writerow([status, j.config, "", "", "" if j.seed is None else j.seed, *blank, j.error])
