"""Paired bootstrap comparisons: hand-built prediction records with known differences, metrics
that are not means (entity F1), per-example records of every task kind, and a real sweep's report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from brewlab.data.tasks import KINDS
from brewlab.data.tasks.ner import entity_scores
from brewlab.eval.significance import Records, RecordsError, compare, holm, read_records
from brewlab.report.cli import main


def _records(num, den=None) -> Records:
    num = np.asarray(num, dtype=float)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=float)
    return Records(tuple(str(i) for i in range(len(num))), num, den)


def _wrong_on(n: int, k: int) -> tuple[Records, Records]:
    """A reference right on all n examples and a configuration wrong on exactly k of them."""
    return _records([0] * k + [1] * (n - k)), _records([1] * n)


def test_interval_covers_a_known_difference_and_shrinks_with_more_examples():
    widths = []
    for n in (100, 400, 1600):
        config, reference = _wrong_on(n, n // 10)
        (c,) = compare([[config]], [reference], resamples=4000)
        assert c.difference == pytest.approx(-0.1)
        assert c.low <= -0.1 <= c.high
        widths.append(c.high - c.low)
    # a binomial proportion's interval halves when n quadruples: 1.96 * 2 * sqrt(0.09 / n)
    for n, width in zip((100, 400, 1600), widths, strict=True):
        assert width == pytest.approx(2 * 1.96 * np.sqrt(0.1 * 0.9 / n), rel=0.15)
    assert widths[0] > widths[1] > widths[2]


def test_identical_configurations_sit_on_zero_and_are_not_marked():
    rng = np.random.default_rng(3)
    runs = [_records(rng.random(300) < 0.7) for _ in range(3)]
    (c,) = compare([runs], runs, resamples=2000, paired_seeds=[True])
    assert (c.difference, c.low, c.high, c.p) == (0.0, 0.0, 0.0, 1.0)
    assert not c.significant


def test_right_where_the_reference_is_wrong_is_marked():
    reference = _records([1, 0] * 100)  # wrong on every second example
    better = _records([1] * 200)
    same = _records([1, 0] * 100)
    results = compare([[better], [same]], [reference], resamples=2000)
    assert results[0].difference == pytest.approx(0.5)
    assert results[0].low > 0 and results[0].significant
    assert results[0].p == pytest.approx(2 / 2001)  # no resample at or below 0: the +1-corrected floor
    assert not results[1].significant


def test_same_report_same_numbers_and_seeds_resampled():
    rng = np.random.default_rng(0)
    a = [_records(rng.random(500) < 0.72) for _ in range(3)]
    b = [_records(rng.random(500) < 0.70) for _ in range(3)]
    assert compare([a], b, resamples=3000) == compare([a], b, resamples=3000)
    # same mean difference (0), but one side's seeds spread from 0.6 to 0.8: resampling seeds widens its interval
    reference = [_records([1] * 700 + [0] * 300)] * 3
    spread = [_records([1] * k + [0] * (1000 - k)) for k in (600, 700, 800)]
    steady = [_records([1] * 700 + [0] * 300)] * 3
    wide, narrow = compare([spread, steady], reference, resamples=3000, paired_seeds=[True, True])
    assert wide.difference == pytest.approx(0.0) and narrow.difference == 0.0
    assert wide.high - wide.low > 0.1 and narrow.high - narrow.low == 0.0


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 -> at least 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_entity_f1_is_recomputed_not_averaged_over_sentences():
    # sentence 1: 1 gold entity, found (2·tp = 2 over 1 + 1); sentence 2: 3 gold, none found (0 over 3)
    reference = _records([2, 0], [2, 3])
    assert reference.metric == pytest.approx(2 / 5)  # micro F1 2·1 / (1 + 4); the sentence F1 mean is 0.5
    better = _records([2, 2], [2, 4])  # sentence 2: one of 3 found, no false positive: F1 of the set 4/6
    (c,) = compare([[better]], [reference], resamples=500)
    assert c.difference == pytest.approx(4 / 6 - 2 / 5)
    assert c.difference != pytest.approx((1 + 0.5) / 2 - 0.5)  # what averaging sentence F1s would say


def test_records_of_ner_give_seqeval_micro_f1_as_a_ratio():
    kind = KINDS.get("token_classification")
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rows = [{"tokens": list("abcd"), "tags": [1, 2, 0, 3]}, {"tokens": list("ef"), "tags": [3, 4]}]
    features = [{"_word_ids": [-1, 0, 1, 2, 3, -1]}, {"_word_ids": [-1, 0, 1, -1]}]
    picks = [[0, 1, 2, 0, 0, 0], [0, 1, 0, 0]]  # PER found, LOC missed; a PER where a LOC was
    logits = [np.eye(5)[p] for p in picks]
    records = kind.records(logits, features, rows, labels)
    assert [(r["num"], r["den"]) for r in records] == [(2, 3), (0, 2)]
    assert records[1]["prediction"] == ["B-PER", "O"] and records[1]["gold"] == ["B-LOC", "I-LOC"]
    gold = [[labels[t] for t in r["tags"]] for r in rows]
    f1 = entity_scores(gold, [r["prediction"] for r in records])["f1"]
    assert sum(r["num"] for r in records) / sum(r["den"] for r in records) == pytest.approx(f1) == pytest.approx(2 / 5)


def test_records_of_mrc_hold_the_span_and_the_official_scores():
    from brewlab.data.tasks.mrc import SpanExtraction

    offsets = [None, (0, 1), (1, 2), (2, 3), (3, 4)]
    feature = {"_example": 0, "_offsets": offsets, "_decode": {"n_best_size": 5, "max_answer_length": 5, "language": "zh"}}
    start, end = np.full(5, -9.0), np.full(5, -9.0)
    start[1], end[2] = 5.0, 5.0  # the span 北京 of 北京大学
    rows = [{"id": "q1", "context": "北京大学", "answers": {"text": ["北京大学", "北京"], "answer_start": [0, 0]}}]
    (record,) = SpanExtraction.records([np.stack([start, end])], [feature], rows, ["start", "end"])
    assert record == {"id": "q1", "prediction": "北京", "gold": ["北京大学", "北京"], "em": 1.0, "num": 1.0, "den": 1}


def test_read_records_names_the_bad_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"id": 0, "num": 1, "den": 1}\n{"id": 1, "num": 1}\n', encoding="utf-8")
    with pytest.raises(RecordsError, match=r"test.jsonl:2: a record needs id, num and den"):
        read_records(path)


def test_other_test_examples_are_refused():
    with pytest.raises(RecordsError, match="different test examples"):
        compare([[_records([1, 1])]], [_records([1, 1, 1])])


@pytest.mark.slow
def test_real_sweep_report_compares_with_labels_only(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    smoke = ("debug=smoke", "logger=none", "task.train_fraction=0.5")
    proc = run_cli(*smoke, "loss=hard,kd", "seed=1,2,3", run_dir=sweep, cache=cache_dir, multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kd_dir = sweep / "loss=kd,task.train_fraction=0.5"
    job = kd_dir / "seed=1"
    for model in ("student", "teacher"):
        lines = (job / "predictions" / model / "test.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 64  # debug=smoke's test slice
        assert set(json.loads(lines[0])) == {"id", "prediction", "gold", "num", "den"}
    metrics = json.loads((job / "metrics.json").read_text(encoding="utf-8"))
    records = read_records(job / "predictions" / "student" / "test.jsonl")
    assert records.metric == pytest.approx(metrics["student"]["test"]["accuracy"])
    hard = json.loads((sweep / "loss=hard,task.train_fraction=0.5" / "seed=1" / "metrics.json").read_text(encoding="utf-8"))
    assert (hard["student"]["labels_only"], metrics["student"]["labels_only"]) == (True, False)

    assert main([str(sweep), "--resamples", "2000"]) == 0
    md = (sweep / "report.md").read_text(encoding="utf-8")
    assert "## Against the reference `loss=hard`" in md
    assert "| loss=kd |" in md.split("## Against the reference")[1]
    with (sweep / "report.csv").open(encoding="utf-8") as fh:
        rows = {r["configuration"]: r for r in csv.DictReader(fh)}
    assert rows["loss=kd"]["reference"] == "loss=hard" and rows["loss=kd"]["differs"] in ("true", "false")
    assert float(rows["loss=kd"]["test_diff_low"]) <= float(rows["loss=kd"]["test_diff"]) <= float(rows["loss=kd"]["test_diff_high"])
    assert (sweep / "report.png").stat().st_size > 10_000

    # a sweep written before predictions were kept: listed, not compared
    for seed in (1, 2, 3):
        shutil.rmtree(kd_dir / f"seed={seed}" / "predictions")
    assert main([str(sweep), "--resamples", "200", "--out", str(tmp_path / "old")]) == 0
    md = (tmp_path / "old" / "report.md").read_text(encoding="utf-8")
    assert "Not compared:" in md and "`loss=kd`: seed=1: no predictions/student/test.jsonl" in md

    assert main([str(sweep), "--reference", "loss=nst"]) == 2


def test_unknown_reference_is_one_line(tmp_path, capsys):
    for config in ("loss=hard", "loss=kd"):
        run = tmp_path / config / "seed=1"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- {config}\n- seed=1\n", encoding="utf-8")
        metrics = {"task": {"main_metric": "accuracy"}, "loss": [config[5:]], "student": {"test": {"accuracy": 0.5}}}
        (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    assert main([str(tmp_path), "--reference", "loss=nst"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "brewlab: error: --reference 'loss=nst' is not a configuration of this sweep; choose one of: loss=hard, loss=kd"
    )
    assert Path(tmp_path / "report.md").exists() is False


def test_a_configuration_keeps_its_numbers_when_others_are_added():
    rng = np.random.default_rng(5)
    reference = [_records(rng.random(853) < 0.7) for _ in range(3)]
    a = [_records(rng.random(853) < 0.72) for _ in range(2)]  # other seeds than the reference: unpaired
    b = [_records(rng.random(853) < 0.75) for _ in range(3)]
    (alone,) = compare([a], reference, resamples=10_000, labels=["a"])
    with_b, _ = compare([a, b], reference, resamples=10_000, labels=["a", "b"])
    assert (alone.difference, alone.low, alone.high, alone.p) == (with_b.difference, with_b.low, with_b.high, with_b.p)


def _job(root: Path, config: str, seed: int, num: list[int], predictions: bool = True) -> None:
    run = root / config / f"seed={seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- {config}\n- seed={seed}\n", encoding="utf-8")
    metrics = {"task": {"main_metric": "accuracy"}, "loss": [config[5:]], "seed": seed,
               "student": {"test": {"accuracy": sum(num) / len(num)}}}
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    if predictions:
        lines = "".join(json.dumps({"id": f"x{i}", "num": v, "den": 1}) + "\n" for i, v in enumerate(num))
        (run / "predictions" / "student").mkdir(parents=True)
        (run / "predictions" / "student" / "test.jsonl").write_text(lines, encoding="utf-8")


def test_seeds_without_predictions_are_named_and_the_rest_compared(tmp_path):
    for seed in (1, 2):
        _job(tmp_path, "loss=hard", seed, [1, 0] * 50)
    _job(tmp_path, "loss=kd", 1, [1] * 100)
    _job(tmp_path, "loss=kd", 2, [1] * 100, predictions=False)
    assert main([str(tmp_path), "--resamples", "500"]) == 0
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| loss=kd | +50.00 |" in md  # compared over seed 1 only: 100% against 50%
    assert "`loss=kd`: seed=2: no predictions/student/test.jsonl (a run from before predictions were kept) (compared over the other seeds)" in md


def _rewrite_metrics(root: Path, config: str, seed: int, written: dict) -> None:
    """Change a run's metrics.json as another brewlab would have written it (`student.<key>` for a
    dotted key, else a top-level key)."""
    path = root / config / f"seed={seed}" / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    for key, value in written.items():
        where, _, name = key.rpartition(".")
        (metrics[where] if where else metrics)[name] = value
    path.write_text(json.dumps(metrics), encoding="utf-8")


@pytest.mark.parametrize(
    ("written", "reference"),
    [
        # what the pipeline records now, whatever `loss` says (distiller=trainer ignores it)
        ({"student.labels_only": True}, "loss=nst"),
        # a student that learnt from a teacher: no labels-only configuration, so the first row
        ({"student.labels_only": False}, "loss=kd"),
        # runs from before the flag: a distiller without a teacher said so in a note ...
        ({"student.note": "trained on labels only"}, "loss=nst"),
        # ... and a student trained with the hard-label loss alone
        ({"loss": ["hard"]}, "loss=nst"),
    ],
)
def test_the_labels_only_configuration_is_the_default_reference(tmp_path, written, reference):
    for seed in (1, 2):
        _job(tmp_path, "loss=kd", seed, [1] * 100)
        _job(tmp_path, "loss=nst", seed, [1, 0] * 50)  # rows sort by name: loss=kd comes first
        _rewrite_metrics(tmp_path, "loss=nst", seed, written)
    assert main([str(tmp_path), "--resamples", "200"]) == 0
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert f"## Against the reference `{reference}`" in md
    other = "loss=kd" if reference == "loss=nst" else "loss=nst"
    assert f"| {other} | {'+' if other == 'loss=kd' else '-'}50.00 |" in md


def _labels_only_predictions(root: Path, config: str, seed: int, num: list[int], ids: str = "x") -> None:
    lines = "".join(json.dumps({"id": f"{ids}{i}", "num": v, "den": 1}) + "\n" for i, v in enumerate(num))
    (root / config / f"seed={seed}" / "predictions" / "labels_only").mkdir(parents=True)
    (root / config / f"seed={seed}" / "predictions" / "labels_only" / "test.jsonl").write_text(lines, encoding="utf-8")


def test_runs_with_their_own_labels_only_student_are_compared_with_it(tmp_path):
    """A one-configuration sweep (no reference to compare with) still answers whether KD beat the
    labels-only student each run trained beside it; a configuration without one is left out."""
    for seed in (1, 2):
        _job(tmp_path, "loss=kd", seed, [1] * 100)
        _labels_only_predictions(tmp_path, "loss=kd", seed, [1, 0] * 50)
    assert main([str(tmp_path), "--resamples", "500"]) == 0
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Against the same runs' labels-only student" in md
    assert "| loss=kd | +50.00 |" in md  # 100% against 50% in both runs
    assert "**yes** ✱" in md
    _job(tmp_path, "loss=hard", 1, [1, 0] * 50)  # no labels-only student beside it
    assert main([str(tmp_path), "--resamples", "500"]) == 0
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    section = md.split("## Against the same runs' labels-only student")[1]
    assert "| loss=hard |" not in section.split("##")[0]


def test_labels_only_student_on_other_examples_is_one_line(tmp_path, capsys):
    _job(tmp_path, "loss=kd", 1, [1] * 10)
    _labels_only_predictions(tmp_path, "loss=kd", 1, [1] * 10, ids="y")
    assert main([str(tmp_path), "--resamples", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["brewlab: error: loss=kd: the student and the labels-only student were scored on other test examples"]
