"""One row per configuration: its finished seeds' numbers as mean, sample std (n-1; NaN when
n=1) and count, for the core columns and, generically, every other number in metrics.json."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brewlab.report.jobs import Job

# top-level keys of metrics.json that the core columns already cover or that are not metrics
CORE_KEYS = frozenset({"task", "distiller", "loss", "seed"})


def as_number(value: Any) -> float:
    """A float or NaN: bools, strings and missing keys are not metrics."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _get(tree: Any, *keys: str) -> float:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return math.nan
        tree = tree[key]
    return as_number(tree)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample std (NaN for one value) and count, ignoring NaN."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan, 0
    std = statistics.stdev(kept) if len(kept) > 1 else math.nan
    return statistics.fmean(kept), std, len(kept)


def numeric_leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Dotted paths of every number in a JSON tree, so unknown distiller outputs still get reported."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numeric_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from numeric_leaves(value, f"{prefix}.{i}" if prefix else str(i))
    elif not math.isnan(as_number(tree)):
        yield prefix, float(tree)


@dataclass
class Row:
    """One configuration: aggregated finished seeds."""

    config: str
    metric: str
    seeds: list[int | None]
    values: dict[str, tuple[float, float, int]]  # column -> (mean, std, count)
    extras: dict[str, tuple[float, float, int]]
    order: tuple[float, str]

    @property
    def n(self) -> int:
        return len(self.seeds)


CORE_COLUMNS = (
    "student_dev",
    "student_test",
    "teacher_test",
    "ratio_test",
    "student_params_total",
    "student_params_non_embedding",
    "train_seconds",
    "student_examples_per_second",
)


def _job_metric(job: Job, metric: str | None) -> str:
    return metric or str((job.metrics.get("task") or {}).get("main_metric") or "accuracy")


def _core_values(m: Mapping[str, Any], metric: str) -> dict[str, float]:
    s_test, t_test = _get(m, "student", "test", metric), _get(m, "teacher", "test", metric)
    return {
        "student_dev": _get(m, "student", "validation", metric),
        "student_test": s_test,
        "teacher_test": t_test,
        "ratio_test": s_test / t_test if t_test and not math.isnan(t_test) else math.nan,
        "student_params_total": _get(m, "student", "parameters", "total"),
        "student_params_non_embedding": _get(m, "student", "parameters", "non_embedding"),
        "train_seconds": _get(m, "student", "train_seconds"),
        "student_examples_per_second": _get(m, "student", "examples_per_second"),
    }


# leaves the core columns already hold, so the extras are only what is new
_CORE_LEAVES = (
    "student.parameters.total",
    "student.parameters.non_embedding",
    "student.train_seconds",
    "student.examples_per_second",
)


def aggregate(jobs: Sequence[Job], metric: str | None = None) -> list[Row]:
    """Finished jobs grouped by configuration, in sweep order (Hydra job number, then name)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if job.status == "finished":
            groups.setdefault(job.config, []).append(job)
    rows = []
    for config, members in groups.items():
        members.sort(key=lambda j: (j.seed is None, j.seed or 0))
        metrics = sorted({_job_metric(j, metric) for j in members})
        name = metrics[0] if len(metrics) == 1 else "/".join(metrics)
        per_job = [_core_values(j.metrics, _job_metric(j, metric)) for j in members]
        values = {col: mean_std(v[col] for v in per_job) for col in CORE_COLUMNS}
        skip = {
            f"{where}.{_job_metric(j, metric)}"
            for j in members
            for where in ("student.validation", "student.test", "teacher.test")
        } | set(_CORE_LEAVES)
        leaves: dict[str, list[float]] = {}
        for j in members:
            for key, value in j.metrics.items():
                if key not in CORE_KEYS:
                    for path, number in numeric_leaves(value, key):
                        if path not in skip:
                            leaves.setdefault(path, []).append(number)
        extras = {path: mean_std(v) for path, v in sorted(leaves.items())}
        nums = [j.num for j in members if j.num is not None]
        order = (float(min(nums)) if nums else math.inf, config)
        rows.append(Row(config, name, [j.seed for j in members], values, extras, order))
    rows.sort(key=lambda r: r.order)
    return rows


def is_fraction(values: Iterable[float]) -> bool:
    """Every known value lies in 0..1: a share, shown as percent."""
    kept = [v for v in values if not math.isnan(v)]
    return bool(kept) and all(0.0 <= v <= 1.0 for v in kept)


def metric_percent(rows: Sequence[Row]) -> bool:
    """Metrics in 0..1 are shown as percent (all rows agree, so one column has one unit)."""
    return is_fraction(
        v for r in rows for c in ("student_dev", "student_test", "teacher_test") for v in r.values[c][:2]
    )
