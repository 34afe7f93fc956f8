"""Sweep report: one row per configuration, mean ± std over seeds, a CSV, a markdown table and a chart.

Usage: python -m brewlab.report.report <sweep-dir> [--out DIR] [--metric NAME] [--title TEXT]
       [--reference OVERRIDES] [--resamples N]

It reads run directories only (`.hydra/*.yaml`, `metrics.json`, `error.txt`) and never imports the
training code, so it works on a copied or half-finished sweep and on a machine without torch.
Job states: `metrics.json` -> finished, `error.txt` -> failed (first line is the message), neither
-> still running (counted, not averaged). Std is the sample std (n-1); it is blank when n=1.

Each configuration is also compared with a reference (the labels-only one when the sweep has
one, else the first; `--reference` names another) on the test split, by a paired bootstrap over
the students' per-example predictions (`predictions/student/test.jsonl`; see
`brewlab.eval.significance`). Runs without predictions (written before they existed) are listed,
not compared.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from brewlab.eval.significance import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Comparison,
    Records,
    RecordsError,
    compare,
    holm,
    read_records,
)

EXPECTED = "<sweep>/<overrides>/seed=<n>/metrics.json"
DEFAULT_LABEL = "(default)"
# top-level keys of metrics.json that the core columns already cover or that are not metrics
CORE_KEYS = frozenset({"task", "distiller", "loss", "seed"})
# dirs a job writes into its own directory; never job dirs themselves
SKIP_DIRS = frozenset({"wandb", "student", "__pycache__"})
SEED_DIR = re.compile(r"^seed=(-?\d+)$")
STUDENT_TEST = Path("predictions") / "student" / "test.jsonl"
LABELS_ONLY_TEST = Path("predictions") / "labels_only" / "test.jsonl"


class ReportError(Exception):
    """Bad input for the report; `main` prints it as one line and exits 2."""


# ----------------------------------------------------------------------------- reading jobs


@dataclass
class Job:
    """One job directory of the sweep and what it left behind."""

    path: Path
    config: str
    seed: int | None
    status: str  # "finished", "failed" or "running"
    num: int | None = None
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    cfg: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


def _load_yaml(path: Path) -> Any:
    """YAML or None: a job may be mid-write or hand-edited; the report must not die on it."""
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _is_job_dir(path: Path) -> bool:
    """Hydra creates `.hydra` first, so a job counts from the moment it starts."""
    return (path / ".hydra").is_dir() or (path / "metrics.json").is_file() or (path / "error.txt").is_file()


def find_job_dirs(sweep: Path) -> list[Path]:
    """Every job dir under the sweep (or the sweep itself if it is a single run)."""
    if _is_job_dir(sweep):
        return [sweep]
    found: list[Path] = []
    for root, dirs, _files in os.walk(sweep):
        here = Path(root)
        if here != sweep and _is_job_dir(here):
            found.append(here)
            dirs[:] = []  # a job's own subdirs (student/, wandb/) hold no jobs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
    return found


def _override_dirname(overrides: Sequence[str], hydra_job: Mapping[str, Any]) -> str:
    """Hydra's own rule: drop excluded keys, sort, join `k=v` with ','."""
    conf = (hydra_job.get("config") or {}).get("override_dirname") or {}
    exclude = set(conf.get("exclude_keys") or ["seed"]) | {"seed"}
    kv_sep, item_sep = str(conf.get("kv_sep", "=")), str(conf.get("item_sep", ","))
    kept = []
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") not in exclude:
            kept.append(f"{key}{kv_sep}{value}")
    return item_sep.join(sorted(kept))


def _config_label(path: Path, sweep: Path, overrides: Sequence[str] | None, hydra_job: Mapping[str, Any]) -> str:
    """The configuration a job belongs to: Hydra's override_dirname, else its dir minus `seed=<n>`."""
    recorded = hydra_job.get("override_dirname")
    if isinstance(recorded, str) and recorded != "???":
        return recorded or DEFAULT_LABEL
    if overrides is not None:
        return _override_dirname(overrides, hydra_job) or DEFAULT_LABEL
    rel = path.relative_to(sweep).parts if path != sweep else ()
    if rel and SEED_DIR.match(rel[-1]):
        rel = rel[:-1]
    return "/".join(rel) or DEFAULT_LABEL


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _seed_of(path: Path, metrics: Mapping[str, Any], cfg: Mapping[str, Any], overrides: Sequence[str]) -> int | None:
    """Seed from metrics.json, the resolved config, the overrides or the `seed=<n>` dir, in that order."""
    for value in (metrics.get("seed"), cfg.get("seed")):
        if _as_int(value) is not None:
            return _as_int(value)
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key == "seed" and _as_int(value) is not None:
            return _as_int(value)
    match = SEED_DIR.match(path.name)
    return int(match.group(1)) if match else None


def _first_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        return f"unreadable error.txt: {exc}"
    return text.splitlines()[0].strip() if text else "(empty error.txt)"


def read_job(path: Path, sweep: Path) -> Job:
    """Classify and load one job dir without ever raising on its contents."""
    hydra_dir = path / ".hydra"
    overrides = _load_yaml(hydra_dir / "overrides.yaml")
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else None
    cfg = _load_yaml(hydra_dir / "config.yaml")
    cfg = cfg if isinstance(cfg, dict) else {}
    hydra_job = _load_yaml(hydra_dir / "hydra.yaml")
    for key in ("hydra", "job"):
        hydra_job = hydra_job.get(key) if isinstance(hydra_job, dict) else None
    hydra_job = hydra_job if isinstance(hydra_job, dict) else {}
    config = _config_label(path, sweep, overrides, hydra_job)
    status, error, metrics = "running", "", {}
    if (path / "metrics.json").is_file():
        try:
            loaded = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
            if not isinstance(loaded, dict) or not isinstance(loaded.get("student"), dict):
                raise ValueError("no 'student' object")
            status, metrics = "finished", loaded
        except (OSError, ValueError) as exc:
            status, error = "failed", f"report: unreadable metrics.json ({exc})"
    elif (path / "error.txt").is_file():
        status, error = "failed", _first_line(path / "error.txt")
    seed = _seed_of(path, metrics, cfg, overrides or [])
    return Job(path, config, seed, status, _as_int(hydra_job.get("num")), error, metrics, cfg, overrides or [])


def load_jobs(sweep: Path) -> list[Job]:
    """All jobs of a sweep; raises ReportError when there is nothing that looks like a run."""
    if not sweep.is_dir():
        raise ReportError(f"{sweep}: no runs found (expected {EXPECTED})")
    jobs = [read_job(p, sweep) for p in find_job_dirs(sweep)]
    if not jobs:
        raise ReportError(f"{sweep}: no runs found (expected {EXPECTED})")
    return jobs


# ----------------------------------------------------------------------------- numbers


def _num(value: Any) -> float:
    """A float or NaN: bools, strings and missing keys are not metrics."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _get(tree: Any, *keys: str) -> float:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return math.nan
        tree = tree[key]
    return _num(tree)


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
    elif not math.isnan(_num(tree)):
        yield prefix, float(tree)


# ----------------------------------------------------------------------------- aggregation


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


# ----------------------------------------------------------------------------- significance


@dataclass
class Significance:
    """Every configuration against the reference on the test split (see `brewlab.eval.significance`)."""

    reference: str
    metric: str
    resamples: int
    seed: int
    results: dict[str, Comparison]
    skipped: dict[str, str]  # configuration -> why it is not compared


def _labels_only(job: Job) -> bool:
    return job.metrics.get("loss") == ["hard"] or (job.metrics.get("student") or {}).get("note") == "trained on labels only"


def _same_config(a: str, b: str) -> bool:
    """Override lists name one configuration whatever their order."""
    return sorted(a.split(",")) == sorted(b.split(","))


def _runs_of(jobs: Sequence[Job]) -> tuple[list[tuple[int | None, Records]], str]:
    """(seed, records) of the jobs that kept test predictions, and why the others cannot count."""
    runs, problems = [], []
    for job in jobs:
        path = job.path / STUDENT_TEST
        if (job.metrics.get("task") or {}).get("tasks"):
            problems.append(f"seed={job.seed}: a multi-task run, whose score is a mean over its tasks")
            continue
        if not path.is_file():
            problems.append(f"seed={job.seed}: no {STUDENT_TEST} (a run from before predictions were kept)")
            continue
        try:
            runs.append((job.seed, read_records(path)))
        except RecordsError as exc:
            problems.append(str(exc))
    return runs, "; ".join(problems)


def _members(jobs: Sequence[Job], rows: Sequence[Row]) -> dict[str, list[Job]]:
    """Each configuration's finished jobs, in seed order."""
    return {
        r.config: sorted((j for j in jobs if j.status == "finished" and j.config == r.config), key=lambda j: (j.seed is None, j.seed or 0))
        for r in rows
    }


def significance(
    jobs: Sequence[Job],
    rows: Sequence[Row],
    reference: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Significance | None:
    """Paired-bootstrap comparison of every configuration with the reference (None: fewer than 2 rows)."""
    finished = [j for j in jobs if j.status == "finished"]
    members = _members(jobs, rows)
    if reference is not None:
        chosen = [r.config for r in rows if _same_config(r.config, reference)]
        if not chosen:
            raise ReportError(f"--reference {reference!r} is not a configuration of this sweep; choose one of: {', '.join(r.config for r in rows)}")
        ref = chosen[0]
    elif len(rows) < 2:
        return None
    else:
        ref = next((r.config for r in rows if all(_labels_only(j) for j in members[r.config])), rows[0].config)
    metrics = sorted({str((j.metrics.get("task") or {}).get("main_metric")) for j in finished})
    out = Significance(ref, "/".join(metrics), resamples, seed, {}, {})
    ref_runs, problem = _runs_of(members[ref])
    if problem:
        out.skipped[ref] = f"(the reference) {problem}"
    if not ref_runs or any(x.ids != ref_runs[0][1].ids for _, x in ref_runs):
        why = "the reference has no predictions" if not ref_runs else "the reference's seeds were scored on different test examples"
        out.skipped.update({r.config: why for r in rows if r.config != ref})
        return out
    names, groups, paired = [], [], []
    for r in rows:
        if r.config == ref:
            continue
        runs, problem = _runs_of(members[r.config])
        if not runs:
            out.skipped[r.config] = problem
            continue
        if any(x.ids != ref_runs[0][1].ids for _, x in runs):
            out.skipped[r.config] = "scored on other test examples than the reference"
            continue
        if problem:  # compared over the seeds that kept predictions; the others are named
            out.skipped[r.config] = f"{problem} (compared over the other seeds)"
        names.append(r.config)
        groups.append([x for _, x in runs])
        paired.append([s for s, _ in runs] == [s for s, _ in ref_runs])
    if groups:
        found = compare(groups, [x for _, x in ref_runs], resamples, seed, paired, names)
        out.results = dict(zip(names, found, strict=True))
    return out


def against_labels_only(
    jobs: Sequence[Job], rows: Sequence[Row], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> dict[str, Comparison]:
    """Each configuration whose every run also trained the labels-only student
    (`baselines.labels_only`): its student against that one, paired run by run, so a sweep of
    one configuration still gets a pooled answer. Holm-adjusted over the configurations."""
    found: dict[str, Comparison] = {}
    for config, members in _members(jobs, rows).items():
        pairs = [(j.path / STUDENT_TEST, j.path / LABELS_ONLY_TEST) for j in members]
        if not pairs or not all(a.is_file() and b.is_file() for a, b in pairs):
            continue
        ours, theirs = [read_records(a) for a, _ in pairs], [read_records(b) for _, b in pairs]
        if any(x.ids != y.ids for x, y in zip(ours, theirs, strict=True)):
            raise RecordsError(f"{config}: the student and the labels-only student were scored on other test examples")
        (found[config],) = compare([ours], theirs, resamples, seed, [True], [config])
    adjusted = holm([c.p for c in found.values()])
    return {name: replace(c, p_holm=p) for (name, c), p in zip(found.items(), adjusted, strict=True)}


def _comparison_rows(found: Mapping[str, Comparison], scale: float) -> list[list[str]]:
    return [
        [
            config,
            f"{scale * c.difference:+.2f}",
            f"[{scale * c.low:+.2f}, {scale * c.high:+.2f}]",
            f"{c.p:.4f}",
            f"{c.p_holm:.4f}",
            "**yes** ✱" if c.significant else "no",
        ]
        for config, c in found.items()
    ]


def labels_only_md(found: Mapping[str, Comparison], metric: str, pct: bool, resamples: int, seed: int) -> str:
    """The in-run comparison table (empty when no run trained the labels-only student)."""
    if not found:
        return ""
    scale, unit = (100.0, " (points)") if pct else (1.0, "")
    head = ["configuration", f"test {metric} − labels only{unit}", "95% interval", "p", "p (Holm)", "differs"]
    return "\n".join(
        [
            "## Against the same runs' labels-only student",
            "",
            f"Each run also trained its student on labels only (`baselines.labels_only`). Paired bootstrap over test "
            f"examples and the runs' seeds ({resamples:,} resamples, generator seed {seed}); ✱ marks a Holm-adjusted "
            "p below 0.05.",
            "",
            _md_table(head, _comparison_rows(found, scale)),
            "",
        ]
    )


def significance_md(sig: Significance, pct: bool) -> str:
    """The comparison table: difference in the test metric, 95% interval, p and Holm's p."""
    scale, unit = (100.0, " (points)") if pct else (1.0, "")
    head = [
        "configuration",
        f"test {sig.metric} − reference{unit}",
        "95% interval",
        "p",
        "p (Holm)",
        "differs",
    ]
    body = _comparison_rows(sig.results, scale)
    text = [
        f"## Against the reference `{sig.reference}`",
        "",
        f"Paired bootstrap over test examples and seeds ({sig.resamples:,} resamples, generator seed {sig.seed}; "
        "`brewlab.eval.significance`): the metric is recomputed on each resample. ✱ marks a Holm-adjusted p below "
        "0.05 over the configurations below; the intervals are not adjusted.",
        "",
    ]
    if body:
        text += [_md_table(head, body), ""]
    if sig.skipped:
        text += ["Not compared:", ""] + [f"- `{config}`: {why}" for config, why in sig.skipped.items()] + [""]
    return "\n".join(text)


def experiment_name(jobs: Sequence[Job], sweep: Path) -> str:
    """`experiment` / `study` from a job's config or `+experiment=` override, else the sweep dir name."""
    for job in jobs:
        for key in ("experiment", "study"):
            value = job.cfg.get(key)
            if isinstance(value, dict):
                value = value.get("name")
            if isinstance(value, str | int | float) and str(value).strip():
                return str(value)
        for item in job.overrides:
            key, _, value = item.partition("=")
            if key.lstrip("+~") in ("experiment", "study") and value:
                return value
    return sweep.resolve().name


# ----------------------------------------------------------------------------- formatting


def _is_fraction(values: Iterable[float]) -> bool:
    kept = [v for v in values if not math.isnan(v)]
    return bool(kept) and all(0.0 <= v <= 1.0 for v in kept)


def _fmt(value: float, percent: bool) -> str:
    """Percent with 2 decimals for 0..1 metrics; otherwise as many digits as the size needs."""
    if math.isnan(value):
        return "–"
    if percent:
        return f"{100 * value:.2f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"


def _fmt_ms(stat: tuple[float, float, int], percent: bool) -> str:
    mean, std, _ = stat
    if math.isnan(mean):
        return "–"
    return _fmt(mean, percent) if math.isnan(std) else f"{_fmt(mean, percent)} ± {_fmt(std, percent)}"


def _fmt_int(value: float) -> str:
    return "–" if math.isnan(value) else f"{round(value):,d}"


def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], body: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def metric_percent(rows: Sequence[Row]) -> bool:
    """Metrics in 0..1 are shown as percent (all rows agree, so one column has one unit)."""
    return _is_fraction(
        v for r in rows for c in ("student_dev", "student_test", "teacher_test") for v in r.values[c][:2]
    )


def main_table(rows: Sequence[Row]) -> str:
    """The markdown table of configurations (also printed to the terminal)."""
    pct = metric_percent(rows)
    metrics = sorted({r.metric for r in rows})
    name = metrics[0] if len(metrics) == 1 else "main metric"
    unit = " (%)" if pct else ""
    header = [
        "configuration",
        "n",
        f"dev {name}{unit}",
        f"test {name}{unit}",
        f"teacher test{unit}",
        "student/teacher (test)",
        "params",
        "non-emb params",
        "train s",
        "ex/s (student)",
    ]
    if len(metrics) > 1:
        header.insert(2, "metric")
    body = []
    for r in rows:
        v = r.values
        ratio = v["ratio_test"][0]
        line: list[object] = [
            r.config,
            r.n,
            _fmt_ms(v["student_dev"], pct),
            _fmt_ms(v["student_test"], pct),
            _fmt(v["teacher_test"][0], pct),
            "–" if math.isnan(ratio) else f"{100 * ratio:.2f}%",
            _fmt_int(v["student_params_total"][0]),
            _fmt_int(v["student_params_non_embedding"][0]),
            _fmt(v["train_seconds"][0], False),
            _fmt_int(v["student_examples_per_second"][0]),
        ]
        if len(metrics) > 1:
            line.insert(2, r.metric)
        body.append(line)
    return _md_table(header, body)


def _extra_md(rows: Sequence[Row]) -> str:
    """Main-metric numbers from objects beyond teacher/student (ensembles, teacher lists, ...)."""
    paths = sorted(
        {
            p
            for r in rows
            for p in r.extras
            if not p.startswith(("student.", "teacher.")) and p.rsplit(".", 1)[-1] in r.metric.split("/")
        }
    )
    if not paths:
        return ""
    pct = _is_fraction(r.extras[p][0] for r in rows for p in paths if p in r.extras)
    body = [[r.config, *(_fmt_ms(r.extras[p], pct) if p in r.extras else "–" for p in paths)] for r in rows]
    unit = " (%)" if pct else ""
    return "## Other metrics\n\n" + _md_table(["configuration", *(p + unit for p in paths)], body) + "\n"


def render_markdown(
    title: str,
    sweep: Path,
    jobs: Sequence[Job],
    rows: Sequence[Row],
    shared: Sequence[str] = (),
    sig: Significance | None = None,
    in_run: str = "",
) -> str:
    """The whole report.md: summary line, table, failures, running jobs."""
    failed = [j for j in jobs if j.status == "failed"]
    running = [j for j in jobs if j.status == "running"]
    finished = sum(1 for j in jobs if j.status == "finished")
    tasks = sorted({str((j.metrics.get("task") or {}).get("name")) for j in jobs if j.status == "finished"})
    parts = [f"# {title}", ""]
    summary = f"Sweep `{sweep}` · jobs: {finished} finished, {len(failed)} failed, {len(running)} running"
    if tasks:
        summary += " · task: " + ", ".join(tasks)
    parts += [summary, ""]
    if shared:
        parts += ["Every job also ran with: " + ", ".join(f"`{x}`" for x in shared), ""]
    parts += ["Student numbers are mean ± sample std over seeds; the others are means.", ""]
    parts += [main_table(rows) if rows else "_No finished jobs yet._", ""]
    if sig is not None:
        parts += [significance_md(sig, metric_percent(rows))]
    if in_run:
        parts += [in_run]
    extra = _extra_md(rows)
    if extra:
        parts += [extra]
    if failed:
        body = [[j.config, "–" if j.seed is None else j.seed, j.error] for j in _by_config(failed)]
        parts += ["## Failed", "", _md_table(["configuration", "seed", "error"], body), ""]
    if running:
        listed = ", ".join(f"{j.config} seed={j.seed}" for j in _by_config(running))
        parts += ["## Running", "", f"{len(running)} job(s) still running: {listed}", ""]
    return "\n".join(parts)


def _by_config(jobs: Iterable[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: (j.config, j.seed is None, j.seed or 0))


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
            for j in _by_config(x for x in jobs if x.status == status):
                writer.writerow([status, j.config, "", "", "" if j.seed is None else j.seed, *blank, j.error])


# ----------------------------------------------------------------------------- chart


def _tick_label(config: str, width: int = 22) -> str:
    """Long override lists break after each ',' so every bar keeps a legible, unrotated name."""
    if len(config) <= width:
        return config
    lines, line = [], ""
    for part in config.split(","):
        if line and len(line) + 1 + len(part) > width:
            lines.append(line + ",")
            line = part
        else:
            line = f"{line},{part}" if line else part
    return "\n".join([*lines, line])


def y_limits(means: Sequence[float], stds: Sequence[float], known: Sequence[float]) -> tuple[float, float] | None:
    """Value-axis range: from 0 with headroom for labels, unless the results sit close together
    far from zero (e.g. 80.4 vs 80.7), where an axis from 0 would hide every difference."""
    pairs = [(m, s) for m, s in zip(means, stds, strict=True) if not math.isnan(m)]
    tops = [m + s for m, s in pairs] + list(known)
    lows = [m - s for m, s in pairs] + list(known)
    if not tops:
        return None
    span = max(tops) - min(lows)
    if min(lows) > 0 and span > 0 and min(lows) > 4 * span:
        return min(lows) - span, max(tops) + 1.2 * span
    if max(tops) > 0 and min([m for m, _ in pairs] + list(known)) >= 0:
        return 0.0, max(tops) * 1.25
    return None


def plot(path: Path, rows: Sequence[Row], title: str, sig: Significance | None = None) -> None:
    """Bar chart of student test metric ± std, with the teacher as a labelled reference; below
    it, when configurations were compared, each one's difference from the reference with its
    95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pct = metric_percent(rows)
    scale = 100.0 if pct else 1.0
    means = [scale * r.values["student_test"][0] for r in rows]
    stds = [0.0 if math.isnan(r.values["student_test"][1]) else scale * r.values["student_test"][1] for r in rows]
    teachers = [scale * r.values["teacher_test"][0] for r in rows]
    known = [t for t in teachers if not math.isnan(t)]

    width = max(10.0, min(1.1 * len(rows) + 2, 30.0))
    compared = sig is not None and bool(sig.results)
    if compared:
        fig, (ax, ax_diff) = plt.subplots(2, 1, figsize=(width, 8.5), dpi=120, height_ratios=[5, 3], sharex=True)
    else:
        fig, ax = plt.subplots(figsize=(width, 5), dpi=120)
    xs = list(range(len(rows)))
    bars = ax.bar(xs, means, yerr=stds, capsize=4, color="#4C72B0", label="student (mean ± std over seeds)")
    for bar, mean, std, r in zip(bars, means, stds, rows, strict=True):
        if not math.isnan(mean):  # value above the error bar, boxed so a reference line cannot hide it
            ax.annotate(
                f"{mean:.2f} (n={r.n})",
                (bar.get_x() + bar.get_width() / 2, mean + std),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            )
    if known and max(known) - min(known) <= 1e-9 * max(1.0, abs(max(known))):
        ax.axhline(known[0], color="#C44E52", linestyle="--", linewidth=1.5, label=f"teacher ({known[0]:.2f})")
    elif known:  # teachers differ between configurations: one marker per bar
        for x, t in zip(xs, teachers, strict=True):
            if not math.isnan(t):
                ax.hlines(t, x - 0.45, x + 0.45, colors="#C44E52", linestyles="--", linewidth=1.5)
        ax.plot([], [], color="#C44E52", linestyle="--", label="teacher (per configuration)")

    metrics = sorted({r.metric for r in rows})
    ax.set_ylabel(f"student test {'/'.join(metrics)}" + (" (%)" if pct else ""))
    ax.set_title(title)
    bottom = ax
    if compared:
        _plot_differences(ax_diff, rows, sig, scale)
        bottom = ax_diff
    bottom.set_xlabel("configuration")
    bottom.set_xticks(xs)
    labels = [_tick_label(r.config) for r in rows]
    crowded = len(rows) > 8
    bottom.set_xticklabels(labels, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
    limits = y_limits(means, stds, known)
    if limits is not None:
        ax.set_ylim(*limits)
        if limits[0] > 0:
            ax.set_ylabel(ax.get_ylabel() + " (axis zoomed, not from 0)")
    pad = max(0.75, (4 - len(rows)) / 2 + 0.5)  # a lone bar stays bar-shaped instead of filling the axes
    ax.set_xlim(-pad, len(rows) - 1 + pad)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_differences(ax: Any, rows: Sequence[Row], sig: Significance, scale: float) -> None:
    """Each compared configuration's test difference from the reference with its 95% interval."""
    ax.axhline(0.0, color="#555555", linewidth=1)
    for x, r in enumerate(rows):
        c = sig.results.get(r.config)
        if r.config == sig.reference:
            ax.annotate("reference", (x, 0.0), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
        if c is None:
            continue
        color = "#DD8452" if c.significant else "#4C72B0"
        d, low, high = scale * c.difference, scale * c.low, scale * c.high
        ax.errorbar([x], [d], yerr=[[d - low], [high - d]], fmt="o", color=color, capsize=4)
        ax.annotate(f"{d:+.2f}" + (" ✱" if c.significant else ""), (x, high), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8)
    unit = " (points)" if scale == 100.0 else ""
    ax.margins(y=0.18)  # room for the value labels above the intervals
    ax.set_ylabel(f"test − reference{unit}\n95% paired bootstrap")
    ax.plot([], [], "o", color="#DD8452", label="differs (Holm-adjusted p < 0.05)")
    ax.plot([], [], "o", color="#4C72B0", label="no clear difference")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


# ----------------------------------------------------------------------------- entry


def factor_shared(jobs: Sequence[Job]) -> list[str]:
    """Overrides every job of a multi-configuration sweep shares (e.g. `trainer.epochs=1` for a
    reduced-size study): taken out of the configuration labels and returned, so the report
    states them once and the rows show only what varies."""
    parts = [j.config.split(",") for j in jobs]
    if len({j.config for j in jobs}) < 2 or not all(all("=" in x for x in ps) for ps in parts):
        return []
    shared = set(parts[0]).intersection(*parts[1:])
    if not shared:
        return []
    for job, ps in zip(jobs, parts, strict=True):
        job.config = ",".join(x for x in ps if x not in shared) or DEFAULT_LABEL
    return sorted(shared)


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
                if not math.isnan(_num(v))
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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; bad input is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m brewlab.report.report", description=__doc__.splitlines()[0])
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
    for job in _by_config(j for j in jobs if j.status == "failed"):
        print(f"failed: {job.config} seed={job.seed}: {job.error}")
    print(
        f"\n{counts['finished']} finished, {counts['failed']} failed, {counts['running']} running; "
        f"wrote report.csv, report.md"
        + (", report.png" if counts["finished"] else "")
        + f" to {args.out or args.sweep}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
