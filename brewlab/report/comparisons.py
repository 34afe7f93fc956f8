"""Is a configuration's difference real? Every configuration against the sweep's reference, and
against the same runs' own labels-only students, by the paired bootstrap of
`brewlab.eval.significance` over the students' per-example test records. Runs without records
(written before they were kept) are named, not compared."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from brewlab.core import layout
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
from brewlab.report.aggregate import Row
from brewlab.report.jobs import Job, ReportError

# the note runs wrote before metrics.json's `student.labels_only`, on a distiller without a teacher
LEGACY_NOTE = "trained on labels only"


@dataclass
class Significance:
    """Every configuration against the reference on the test split (see `brewlab.eval.significance`)."""

    reference: str
    metric: str
    resamples: int
    seed: int
    results: dict[str, Comparison]
    skipped: dict[str, str]  # configuration -> why it is not compared


def trained_on_labels_only(job: Job) -> bool:
    """The run's student learnt from gold labels alone: what the pipeline records in
    `student.labels_only`; a run from before it counts when it used only the hard-label loss or
    a distiller without a teacher (which said so in `student.note`)."""
    student = job.metrics.get("student") or {}
    if isinstance(student.get("labels_only"), bool):
        return student["labels_only"]
    return job.metrics.get("loss") == ["hard"] or student.get("note") == LEGACY_NOTE


def _same_config(a: str, b: str) -> bool:
    """Override lists name one configuration whatever their order."""
    return sorted(a.split(",")) == sorted(b.split(","))


def _runs_of(jobs: Sequence[Job]) -> tuple[list[tuple[int | None, Records]], str]:
    """(seed, records) of the jobs that kept test predictions, and why the others cannot count."""
    runs, problems = [], []
    for job in jobs:
        path = layout.records(job.path, layout.STUDENT, "test")
        if (job.metrics.get("task") or {}).get("tasks"):
            problems.append(f"seed={job.seed}: a multi-task run, whose score is a mean over its tasks")
            continue
        if not path.is_file():
            problems.append(f"seed={job.seed}: no {path.relative_to(job.path)} (a run from before predictions were kept)")
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
        ref = next((r.config for r in rows if all(trained_on_labels_only(j) for j in members[r.config])), rows[0].config)
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
        pairs = [(layout.records(j.path, layout.STUDENT, "test"), layout.records(j.path, layout.LABELS_ONLY, "test")) for j in members]
        if not pairs or not all(a.is_file() and b.is_file() for a, b in pairs):
            continue
        ours, theirs = [read_records(a) for a, _ in pairs], [read_records(b) for _, b in pairs]
        if any(x.ids != y.ids for x, y in zip(ours, theirs, strict=True)):
            raise RecordsError(f"{config}: the student and the labels-only student were scored on other test examples")
        (found[config],) = compare([ours], theirs, resamples, seed, [True], [config])
    adjusted = holm([c.p for c in found.values()])
    return {name: replace(c, p_holm=p) for (name, c), p in zip(found.items(), adjusted, strict=True)}
