"""Multi-teacher distillation: how teacher logits combine, the ensemble adaptor, its config
checks and an end-to-end run that reports every teacher and the ensemble."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import KD_HARD, batch, read_metrics, tiny

from brewlab.config.schema import TrainerSettings
from brewlab.core.errors import BrewlabError
from brewlab.data.tasks.classification import Classification
from brewlab.distill.distillers import DISTILLERS
from brewlab.distill.ensemble import TeacherEnsemble
from brewlab.distill.losses import mean_logits, mean_probs
from brewlab.distill.objective import parse_objective
from brewlab.distill.schedulers import build_schedules
from brewlab.models.adaptors import HFAdaptor
from brewlab.run.validate import check_teachers


def test_mean_logits_is_the_weighted_mean():
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 0.0, -1.0]])
    assert torch.allclose(mean_logits([a, b], torch.tensor([1.0, 1.0])), torch.tensor([[2.0, 1.0, 1.0]]))
    # weights are normalised: 3:1 is 0.75/0.25
    assert torch.allclose(mean_logits([a, b], torch.tensor([3.0, 1.0])), 0.75 * a + 0.25 * b)


def test_mean_probs_softmax_is_the_mean_distribution_and_stays_finite():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    a[:, :, 0] = -1e4  # a position both teachers rule out (MRC padding)
    b[:, :, 0] = -1e4
    w = torch.tensor([0.2, 0.8])
    combined = mean_probs([a, b], w)
    expected = 0.2 * a.softmax(-1) + 0.8 * b.softmax(-1)
    assert torch.isfinite(combined).all()
    assert torch.allclose(combined.softmax(-1), expected, atol=1e-6)
    assert not torch.allclose(combined.softmax(-1), mean_logits([a, b], w).softmax(-1), atol=1e-3)


@pytest.mark.parametrize(
    ("logits", "weights", "message"),
    [
        ([torch.zeros(2, 3)], torch.tensor([1.0, 1.0]), "1 teacher logits but 2 weights"),
        ([torch.zeros(2, 3), torch.zeros(2, 4)], torch.tensor([1.0, 1.0]), "teacher logits differ in shape"),
        ([torch.zeros(2, 3), torch.zeros(2, 3)], torch.tensor([0.0, 0.0]), "weights must be >= 0 with a positive sum"),
    ],
)
def test_combiner_errors(logits, weights, message):
    with pytest.raises(BrewlabError, match=message):
        mean_logits(logits, weights)


def test_ensemble_adaptor_combines_members_and_distils_like_one_teacher():
    members = [HFAdaptor(tiny(2, 32, seed=s), Classification) for s in (1, 2, 3)]
    ensemble = TeacherEnsemble(members, "logits", [1.0, 2.0, 1.0])
    b = batch()
    with torch.no_grad():
        expected = (members[0](b).logits + 2 * members[1](b).logits + members[2](b).logits) / 4
        view = ensemble(b)
    assert torch.allclose(view.logits, expected, atol=1e-6)
    assert torch.equal(view.labels, b["labels"])
    assert len(list(ensemble.model.parameters())) == 3 * len(list(members[0].model.parameters()))
    with pytest.raises(ValueError, match="combined logits only"):
        ensemble(b, hidden=True)

    student = HFAdaptor(tiny(2, 16, seed=0), Classification)
    distiller = DISTILLERS.get("multi_teacher")(
        student=student,
        objective=parse_objective(KD_HARD, ensemble, student),
        schedules=build_schedules({"temperature": {"kind": "constant", "base": 2.0}}),
        trainer=TrainerSettings(epochs=1, cache_teacher_outputs=False, grad_clip=None),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        kind=Classification,
        teacher=ensemble,
    )
    _, parts = distiller.compute_loss(b, 0, 10)
    with torch.no_grad():
        s_logits = student(b).logits
    from brewlab.distill.losses import kd_ce

    assert torch.allclose(parts["kd"], kd_ce(s_logits, expected, 2.0), atol=1e-6)


TEACHER = {"name": "scratch", "kind": "scratch", "seed": 0, "arch": {}, "train": {}}


@pytest.mark.parametrize(
    ("d_cfg", "message"),
    [
        ({"teachers": [], "combine": "logits"}, "distiller.teachers=[] must be a non-empty list"),
        ({"teachers": [{"sede": 1}], "combine": "logits"}, "distiller.teachers[0] overrides unknown teacher keys ['sede']"),
        ({"teachers": [3], "combine": "logits"}, "distiller.teachers[0]=3 must be a mapping"),
        ({"teachers": ["/nonexistent/t"], "combine": "logits"}, "distiller.teachers[0]='/nonexistent/t': directory not found"),
        ({"teachers": [{"seed": 1}], "combine": "vote"}, "distiller.combine='vote' is not valid; choose one of: logits, probs"),
        (
            {"teachers": [{"seed": 1}, {"seed": 2}], "combine": "logits", "weights": [1.0]},
            "distiller.weights=[1.0] must hold one number >= 0 per teacher (2)",
        ),
        (
            {"teachers": [{"seed": 1}], "combine": "logits", "weights": [-1]},
            "distiller.weights=[-1] must hold one number >= 0 per teacher (1)",
        ),
    ],
)
def test_teacher_list_errors(d_cfg, message):
    with pytest.raises(BrewlabError, match=re.escape(message)):
        check_teachers(d_cfg, TEACHER)


def test_multi_teacher_run_reports_each_teacher_and_the_ensemble(cli):
    _, run_dir = cli(
        "debug=smoke", "distiller=multi_teacher", "distiller.teachers=[{seed:1},{seed:2}]", "distiller.combine=probs"
    )
    m = read_metrics(run_dir)
    assert m["distiller"] == "multi_teacher" and len(m["teachers"]) == 2
    assert m["teacher"]["source"] == "ensemble" and m["teacher"]["members"] == 2
    assert {t["source"] for t in m["teachers"]} <= {"trained", "cache"}
    one = m["teachers"][0]["parameters"]["total"]
    assert m["teacher"]["parameters"]["total"] == 2 * one
    for entry in (*m["teachers"], m["teacher"], m["student"]):
        assert 0.0 <= entry["test"]["accuracy"] <= 1.0
    assert (run_dir / "student" / "config.json").is_file()
    # the two teachers differ (seeded apart), so they are two cache entries, not one
    assert m["teachers"][0]["training"]["key"] != m["teachers"][1]["training"]["key"]
