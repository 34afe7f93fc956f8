"""Is a difference between two configurations real? A paired bootstrap over test examples and seeds.

Pure numpy: it reads per-example records (`num`, `den` per test example, as every task kind
writes them to `predictions/<model>/<split>.jsonl`) and never touches models or training code.

A configuration's metric on a set of examples is ``sum(num) / sum(den)``: accuracy and MRC F1
(means over examples, den = 1) as well as micro entity F1 (num = 2·tp, den = predicted + gold
entities), so the metric is recomputed on every resample, never averaged from per-example scores.

One resample draws n test examples with replacement (the same draw for the configuration and
the reference: the comparison is paired) and, independently, as many seeds as were run with
replacement (paired seed by seed when both sides ran the same seeds). Its difference is the
mean over the drawn seeds of the configuration's metric minus the reference's. The 95% interval
is the 2.5th to 97.5th percentile of those differences; the two-sided p-value for "no difference"
is twice the smaller share of resamples on either side of 0 (with the usual +1 correction), so
that p < 0.05 goes with a 95% interval that leaves 0 out. Holm's step-down correction then
adjusts the p-values over the configurations compared with one reference, and a configuration
is marked when its adjusted p is below 0.05 (the intervals themselves are not adjusted).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
ALPHA = 0.05
_CHUNK_CELLS = 4_000_000  # resamples x examples held at once (a few tens of MB)


class RecordsError(ValueError):
    """A predictions file that cannot be compared (unreadable, empty, or other examples)."""


@dataclass(frozen=True)
class Records:
    """One model's per-example records of one split."""

    ids: tuple[str, ...]
    num: np.ndarray
    den: np.ndarray

    @property
    def metric(self) -> float:
        return ratio(self.num.sum(), self.den.sum())


def ratio(num: float, den: float) -> float:
    """sum(num) / sum(den), 0 where nothing counts (e.g. no entity predicted nor gold)."""
    return float(num) / float(den) if den else 0.0


def read_records(path: Path) -> Records:
    """The records of a `predictions/.../<split>.jsonl` file."""
    ids, num, den = [], [], []
    try:
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                try:
                    ids.append(str(record["id"]))
                    num.append(float(record["num"]))
                    den.append(float(record["den"]))
                except (KeyError, TypeError, ValueError) as exc:
                    raise RecordsError(f"{path}:{line_no}: a record needs id, num and den ({exc})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordsError(f"{path}: unreadable ({exc})") from None
    if not ids:
        raise RecordsError(f"{path}: no records")
    return Records(tuple(ids), np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))


@dataclass(frozen=True)
class Comparison:
    """A configuration against the reference: mean difference over seeds, its interval, p-values."""

    difference: float
    low: float
    high: float
    p: float
    p_holm: float = float("nan")

    @property
    def significant(self) -> bool:
        """Holm-adjusted p below 0.05 over the configurations compared."""
        return bool(self.p_holm < ALPHA)


def _metrics_on_resamples(runs: Sequence[Records], weights: np.ndarray) -> np.ndarray:
    """(resamples, seeds): each seed's metric on each resample, whose example counts are `weights`."""
    num = weights @ np.stack([r.num for r in runs], axis=1)
    den = weights @ np.stack([r.den for r in runs], axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _stream(seed: int, label: str) -> np.random.Generator:
    """A generator of its own for `label`, so that no configuration's draws depend on which
    other configurations are compared (a sweep that is still running gains rows)."""
    return np.random.default_rng([seed, *label.encode("utf-8")])


def compare(
    configs: Sequence[Sequence[Records]],
    reference: Sequence[Records],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    paired_seeds: Sequence[bool] | None = None,
    labels: Sequence[str] | None = None,
) -> list[Comparison]:
    """Compare each configuration's runs (one Records per seed) with the reference's runs.

    Every configuration sees the same example resamples, and draws its seeds from a generator
    of its own (named by `labels`), so a configuration's numbers do not change when others are
    added. `paired_seeds[i]`: configuration i ran the reference's seeds in the same order, so
    a resample draws seeds for both sides together. The p-values come Holm-adjusted over the
    configurations given.
    """
    if not reference or any(not runs for runs in configs):
        raise RecordsError("every side needs at least one run")
    if resamples < 1:
        raise RecordsError(f"resamples={resamples} must be >= 1")
    paired = list(paired_seeds) if paired_seeds is not None else [False] * len(configs)
    names = list(labels) if labels is not None else [f"configuration {k}" for k in range(len(configs))]
    ids = reference[0].ids
    for runs in (*configs, reference):
        for r in runs:
            if r.ids != ids:
                raise RecordsError("the runs were scored on different test examples")
    for runs, same in zip(configs, paired, strict=True):
        if same and len(runs) != len(reference):
            raise RecordsError("paired seeds need as many runs on both sides")
    n = len(ids)
    examples, reference_seeds = _stream(seed, "examples"), _stream(seed, "reference seeds")
    seed_streams = [_stream(seed, name) for name in names]
    diffs = np.empty((len(configs), resamples))
    chunk = max(1, _CHUNK_CELLS // n)
    for begin in range(0, resamples, chunk):
        b = min(chunk, resamples - begin)
        draws = examples.integers(0, n, size=(b, n))
        weights = np.bincount((np.arange(b)[:, None] * n + draws).ravel(), minlength=b * n).reshape(b, n)
        weights = weights.astype(np.float64)
        rows = np.arange(b)[:, None]
        on_reference = _metrics_on_resamples(reference, weights)
        pick_r = reference_seeds.integers(0, len(reference), size=(b, len(reference)))
        for k, (runs, same) in enumerate(zip(configs, paired, strict=True)):
            on_config = _metrics_on_resamples(runs, weights)
            pick_c = pick_r if same else seed_streams[k].integers(0, len(runs), size=(b, len(runs)))
            diffs[k, begin : begin + b] = (
                on_config[rows, pick_c].mean(axis=1) - on_reference[rows, pick_r].mean(axis=1)
            )
    results = []
    base = float(np.mean([r.metric for r in reference]))
    for runs, d in zip(configs, diffs, strict=True):
        low, high = np.percentile(d, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
        below, above = int((d <= 0).sum()), int((d >= 0).sum())
        p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
        difference = float(np.mean([r.metric for r in runs])) - base
        results.append(Comparison(difference, float(low), float(high), p))
    adjusted = holm([c.p for c in results])
    return [Comparison(c.difference, c.low, c.high, c.p, q) for c, q in zip(results, adjusted, strict=True)]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
