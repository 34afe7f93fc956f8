"""Multi-task distillation: task sampling by size^tau, one shared encoder, a vocabulary shared by
the tasks, and an end-to-end run that reports and saves every task."""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import read_metrics

from brewlab.data.batching import TaskMixture


@pytest.mark.parametrize(("tau", "expected"), [(1.0, 0.8), (0.0, 0.5), (0.5, 2 / 3)])
def test_tasks_are_drawn_by_size_to_the_tau(tau, expected):
    loaders = {"big": [{"x": torch.tensor(i)} for i in range(400)], "small": [{"x": torch.tensor(i)} for i in range(100)]}
    mixture = TaskMixture(loaders, {"big": 4000, "small": 1000}, tau, seed=0)
    assert len(mixture) == 500
    counts = collections.Counter(b["task"] for _ in range(4) for b in mixture)
    assert counts["big"] / 2000 == pytest.approx(expected, abs=0.03)


def test_an_exhausted_task_restarts_and_the_order_is_seeded():
    loaders = {"a": [{"x": torch.tensor(i)} for i in range(3)], "b": [{"x": torch.tensor(10)}]}
    first = [(b["task"], int(b["x"])) for b in TaskMixture(loaders, {"a": 1, "b": 100}, 1.0, seed=3)]
    again = [(b["task"], int(b["x"])) for b in TaskMixture(loaders, {"a": 1, "b": 100}, 1.0, seed=3)]
    assert first == again and len(first) == 4
    assert sum(t == "b" for t, _ in first) >= 3  # "b" (one batch) was drawn again and again


def test_multi_task_run_shares_the_encoder_and_reports_each_task(cli):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    _, run_dir = cli("debug=smoke", "distiller=multi_task", "distiller.tau=0.5")
    m = read_metrics(run_dir)
    assert m["task"]["tasks"] == ["reviews_zh", "pd98_ner"] and m["task"]["main_metric"] == "score"
    per_task = {n: m["tasks"][n]["student"]["test"][m["tasks"][n]["main_metric"]] for n in ("reviews_zh", "pd98_ner")}
    assert m["student"]["test"]["score"] == pytest.approx(sum(per_task.values()) / 2)
    assert {m["tasks"][n]["teacher"]["source"] for n in per_task} <= {"trained", "cache"}
    cls = AutoModelForSequenceClassification.from_pretrained(run_dir / "student" / "reviews_zh")
    ner = AutoModelForTokenClassification.from_pretrained(run_dir / "student" / "pd98_ner")
    for name, value in ner.bert.embeddings.state_dict().items():
        assert torch.equal(value, cls.bert.embeddings.state_dict()[name])  # one encoder, saved in each task
    shared = cls.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(shared, ner.bert.encoder.layer[0].attention.self.query.weight)
    assert cls.config.vocab_size == ner.config.vocab_size
    # the student counts the shared encoder once: fewer parameters than two single-task students
    assert m["student"]["parameters"]["total"] < cls.num_parameters() + ner.num_parameters()


def test_multi_task_with_several_teachers_per_task(cli):
    _, run_dir = cli("debug=smoke", "distiller=multi_task", "distiller.teachers=[{seed:1},{seed:2}]", name="mt")
    m = read_metrics(run_dir)
    for name in ("reviews_zh", "pd98_ner"):
        assert m["tasks"][name]["teacher"]["source"] == "ensemble" and len(m["tasks"][name]["teachers"]) == 2


@pytest.mark.parametrize(
    ("distiller", "message"),
    [
        ({"tasks": {}, "tau": 1.0}, "distiller.tasks={} must map task names to task configs"),
        ({"tasks": {"x": {"name": "x"}}, "tau": 1.0}, "distiller.tasks.x is not a task config (no `kind`)"),
        ({"tasks": {"x": {"kind": "regression"}}, "tau": 1.0}, "distiller.tasks.x.kind='regression' is not valid"),
        ({"tasks": {"x": {"kind": "classification"}}, "tau": -1}, "distiller.tau=-1 must be a number >= 0"),
    ],
)
def test_task_list_errors(distiller, message):
    import re

    from brewlab.core.errors import BrewlabError
    from brewlab.run.validate import check_tasks

    with pytest.raises(BrewlabError, match=re.escape(message)):
        check_tasks({"distiller": distiller, "augmentation": {"ops": {}}})
