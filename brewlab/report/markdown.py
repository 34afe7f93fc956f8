"""report.md: the table of configurations (also printed), the comparisons, other metrics, and
the failed and running jobs. Metrics in 0..1 are shown as percent."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from brewlab.eval.significance import Comparison
from brewlab.report.aggregate import Row, is_fraction, metric_percent
from brewlab.report.comparisons import Significance
from brewlab.report.jobs import Job, by_config


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
    pct = is_fraction(r.extras[p][0] for r in rows for p in paths if p in r.extras)
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
        body = [[j.config, "–" if j.seed is None else j.seed, j.error] for j in by_config(failed)]
        parts += ["## Failed", "", _md_table(["configuration", "seed", "error"], body), ""]
    if running:
        listed = ", ".join(f"{j.config} seed={j.seed}" for j in by_config(running))
        parts += ["## Running", "", f"{len(running)} job(s) still running: {listed}", ""]
    return "\n".join(parts)
