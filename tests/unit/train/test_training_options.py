"""Gradient accumulation, mixed precision and torch.compile in the shared training loop, on tiny
in-memory models (dropout off, so runs are comparable step for step)."""

from __future__ import annotations

import pytest
import torch
from conftest import KD_HARD, batch, read_metrics, tiny

from brewlab.config.schema import TrainerSettings
from brewlab.data.tasks.classification import Classification
from brewlab.distill.distillers import DISTILLERS
from brewlab.distill.objective import parse_objective
from brewlab.distill.schedulers import build_schedules
from brewlab.models.adaptors import HFAdaptor


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def distiller(trainer_cfg: dict, compile_student: bool = False):
    teacher = HFAdaptor(no_dropout(tiny(2, 32, seed=7)), Classification)
    model = no_dropout(tiny(2, 16, seed=0))
    student = HFAdaptor(torch.compile(model) if compile_student else model, Classification)
    return DISTILLERS.get("basic")(
        student=student,
        objective=parse_objective(KD_HARD, teacher, student),
        schedules=build_schedules({"temperature": {"kind": "constant", "base": 2.0}}),
        trainer=TrainerSettings(**{"epochs": 1, "cache_teacher_outputs": False, "log_every": 1, "grad_clip": None, **trainer_cfg}),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        kind=Classification,
        teacher=teacher,
    )


def fit(d, data) -> list[torch.Tensor]:
    result = d.fit(data, evaluate=lambda: {"accuracy": 0.0}, main_metric="accuracy", progress=False)
    return result, [p.detach().clone() for p in d.student.model.parameters()]


def joined(*batches: dict) -> dict:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_two_accumulated_batches_make_the_step_of_their_union():
    b1, b2 = batch(1), batch(2)
    b2["idx"] = b2["idx"] + 4
    accumulated, params_a = fit(distiller({"grad_accum": 2}), [b1, b2])
    single, params_s = fit(distiller({"grad_accum": 1}), [joined(b1, b2)])
    assert accumulated.steps == single.steps == 1
    assert accumulated.final_losses["loss"] == pytest.approx(single.final_losses["loss"], rel=1e-5)
    for a, s in zip(params_a, params_s, strict=True):
        assert torch.allclose(a, s, atol=1e-5)
    untouched = [p.detach() for p in no_dropout(tiny(2, 16, seed=0)).parameters()]
    assert any(not torch.allclose(a, u) for a, u in zip(params_a, untouched, strict=True))


def test_a_short_last_group_still_steps():
    result, _ = fit(distiller({"grad_accum": 2, "epochs": 2}), [batch(i) for i in range(3)])
    assert result.steps == 4  # ceil(3 / 2) per epoch


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(precision):
    data = [batch(i) for i in range(4)]
    full, params_f = fit(distiller({"precision": "fp32", "epochs": 2}), data)
    mixed, params_m = fit(distiller({"precision": precision, "epochs": 2}), data)
    assert set(mixed.final_losses) == {"kd", "hard", "loss"}
    assert mixed.final_losses["loss"] == pytest.approx(full.final_losses["loss"], abs=0.05)
    assert mixed.final_losses["loss"] != full.final_losses["loss"]  # the forward really ran in low precision
    for m, f in zip(params_m, params_f, strict=True):
        assert m.dtype == torch.float32 and torch.allclose(m, f, atol=0.05)


def test_compiled_student_trains_like_the_eager_one():
    data = [batch(i) for i in range(2)]
    eager, params_e = fit(distiller({}), data)
    compiled, params_c = fit(distiller({}, compile_student=True), data)
    assert compiled.final_losses["loss"] == pytest.approx(eager.final_losses["loss"], rel=1e-4)
    for c, e in zip(params_c, params_e, strict=True):
        assert torch.allclose(c, e, atol=1e-4)


def test_cli_bf16_with_accumulation(cli):
    _, run_dir = cli("debug=smoke", "trainer.precision=bf16", "trainer.grad_accum=2", "trainer.max_steps=3")
    m = read_metrics(run_dir)
    assert m["student"]["steps"] == 3 and 0 <= m["student"]["test"]["accuracy"] <= 1
    assert (run_dir / "student" / "model.safetensors").is_file()
