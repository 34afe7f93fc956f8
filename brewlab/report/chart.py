"""report.png: each configuration's student test metric (mean ± std over seeds) beside its
teacher and, when configurations were compared, each one's difference from the reference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brewlab.report.aggregate import Row, metric_percent
from brewlab.report.comparisons import Significance


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
