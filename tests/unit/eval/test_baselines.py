"""Baselines beside the teacher and the student: the same student on labels only, and the linear model."""

from __future__ import annotations

import pytest
from conftest import read_metrics


def test_a_run_adds_the_labels_only_student_and_the_linear_baseline(cli):
    proc, run_dir = cli("debug=smoke", "logger=none", "baselines.labels_only=true", "baselines.linear=true")
    metrics = read_metrics(run_dir)
    plain, student = metrics["labels_only"], metrics["student"]
    assert plain["parameters"] == student["parameters"]  # the same student architecture
    assert plain["steps"] == student["steps"] == 6  # debug=smoke's trainer.max_steps, for both
    assert 0.0 <= plain["test"]["accuracy"] <= 1.0
    gap = plain["student_minus_labels_only"]
    assert gap["difference"] == pytest.approx(student["test"]["accuracy"] - plain["test"]["accuracy"])
    assert gap["low"] <= gap["difference"] <= gap["high"] and 0.0 < gap["p"] <= 1.0
    linear = metrics["linear_baseline"]
    assert linear["method"] == "char 1-2-gram TF-IDF + logistic regression (zh)"
    assert 0.5 < linear["test"]["accuracy"] <= 1.0  # 192 reviews already carry signal; chance is 0.5
    assert (run_dir / "predictions" / "labels_only" / "test.jsonl").read_text(encoding="utf-8").count("\n") == 64
    lines = proc.stdout.splitlines()
    assert any(line.startswith("labels only ") for line in lines)
    assert any(line.startswith("linear ") and "TF-IDF" in line for line in lines)
    assert any("student − labels only on test:" in line and "95% interval" in line for line in lines)


def test_baselines_are_off_by_default(cli):
    _, run_dir = cli("debug=smoke", "logger=none")
    metrics = read_metrics(run_dir)
    assert "labels_only" not in metrics and "linear_baseline" not in metrics
