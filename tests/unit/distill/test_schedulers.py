"""Tests for brewlab.distill.schedulers: documented values at chosen steps, hand-computed
temperatures, mask handling and config validation."""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType

import pytest
import torch

from brewlab.config.schema import Scheduler
from brewlab.core.errors import BrewlabError
from brewlab.distill.schedulers import (
    LR_SCHEDULES,
    TEMPERATURES,
    WEIGHT_SCHEDULES,
    Schedules,
    build_schedules,
)

EXAMPLE_CFG = {
    "temperature": {"kind": "constant", "base": 4.0, "beta": 1.0, "gamma": 2.0},
    "kd_weight": "constant",
    "hard_weight": "linear_decay",
    "lr": {"kind": "linear", "warmup_ratio": 0.1},
    "probability_shift": False,
}


def _cfg(**overrides):
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in EXAMPLE_CFG.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def _lrs(scheduler_fn, total_steps, base_lr=1.0, **kwargs):
    """Learning rate in effect at each step 0..total_steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr)
    scheduler = scheduler_fn(optimizer, total_steps, **kwargs)
    lrs = []
    for _ in range(total_steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# ------------------------------------------------------------------------- registries


def test_registry_names():
    assert TEMPERATURES.names() == ["constant", "cwsm", "flsw"]
    assert WEIGHT_SCHEDULES.names() == ["constant", "linear_decay", "linear_growth"]
    assert LR_SCHEDULES.names() == ["constant", "linear", "slanted_triangular"]


# ------------------------------------------------------------------- weight schedules


@pytest.mark.parametrize(
    ("kind", "step", "total", "expected"),
    [
        ("constant", 0, 100, 1.0),
        ("constant", 70, 100, 1.0),
        ("linear_decay", 0, 100, 1.0),
        ("linear_decay", 25, 100, 0.75),
        ("linear_decay", 100, 100, 0.0),
        ("linear_decay", 150, 100, 0.0),
        ("linear_growth", 0, 100, 0.0),
        ("linear_growth", 25, 100, 0.25),
        ("linear_growth", 100, 100, 1.0),
        ("linear_growth", 150, 100, 1.0),
    ],
)
def test_weight_schedules(kind, step, total, expected):
    assert WEIGHT_SCHEDULES.get(kind)(step, total) == pytest.approx(expected)


def test_weight_schedule_rejects_zero_total():
    with pytest.raises(ValueError, match="total_steps"):
        WEIGHT_SCHEDULES.get("linear_decay")(0, 0)


# ----------------------------------------------------------------------- LR schedules


def test_linear_lr_warmup_then_decay():
    # warmup 10 of 100 steps: lr = s/10 for s < 10, then (100 - s) / 90
    lrs = _lrs(LR_SCHEDULES.get("linear"), 100, base_lr=0.5, warmup_ratio=0.1)
    expected = {0: 0.0, 5: 0.25, 10: 0.5, 55: 0.25, 100: 0.0}
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value), step


def test_linear_lr_without_warmup_starts_at_peak():
    lrs = _lrs(LR_SCHEDULES.get("linear"), 10, warmup_ratio=0.0)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.0)


def test_warmup_steps_tolerate_float_rounding():
    # 0.29 * 100 == 28.999999999999996 in floating point; the warmup is still 29 steps
    lrs = _lrs(LR_SCHEDULES.get("constant"), 100, warmup_ratio=0.29)
    assert lrs[28] == pytest.approx(28 / 29)
    assert lrs[29] == pytest.approx(1.0)


def test_constant_lr_warmup_then_flat():
    lrs = _lrs(LR_SCHEDULES.get("constant"), 100, warmup_ratio=0.1)
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 55: 1.0, 100: 1.0}
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value), step


def test_slanted_triangular_lr():
    # T=100, cut=10, ratio=32: eta = (1 + p * 31) / 32
    lrs = _lrs(LR_SCHEDULES.get("slanted_triangular"), 100, warmup_ratio=0.0, cut_frac=0.1, ratio=32)
    assert lrs[0] == pytest.approx(1 / 32)
    assert lrs[5] == pytest.approx((1 + 0.5 * 31) / 32)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx((1 + 0.5 * 31) / 32)
    assert lrs[100] == pytest.approx(1 / 32)
    assert max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == 10


def test_slanted_triangular_defaults_and_scaling():
    lrs = _lrs(LR_SCHEDULES.get("slanted_triangular"), 50, base_lr=0.32, warmup_ratio=0.0)
    # defaults cut_frac=0.1 -> cut=5, ratio=32
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.32)
    assert lrs[50] == pytest.approx(0.01)


# ----------------------------------------------------------------------- temperatures


def test_constant_temperature_returns_base():
    logits = torch.randn(3, 5)
    assert TEMPERATURES.get("constant")(logits, logits * 2, 4.0) == 4.0
    assert TEMPERATURES.get("constant")(logits, logits, 2.5, beta=3.0, mask=None) == 2.5


LN3, LN9, NAN = math.log(3.0), math.log(9.0), float("nan")

# Dynamic temperatures (Wen et al., 2019): tau_i = base + beta * (mean_j w_j - w_i).
# flsw: w = (1 - cos(z_s, z_t)) ** gamma. The pairs used below have cos 1 ([1,0] vs [1,0], w = 0),
# cos 0 ([1,0] vs [0,1], w = 1), cos -1 ([1,0] vs [-1,0], w = 2 ** gamma) and cos 24/25
# ([3,4] vs [4,3], 1 - cos = 0.04).
FLSW_CASES = {
    # the example: the confusing second example gets the lower temperature
    "direction": dict(s=[[3, 0, 0], [0, 0, 3]], t=[[3, 0, 0], [3, 0, 0]], base=2, beta=1, gamma=2, tau=[2.5, 1.5]),
    "beta 0 is constant": dict(s=[[3, 0, 0], [0, 0, 3]], t=[[3, 0, 0], [3, 0, 0]], base=3, beta=0, gamma=2, tau=[3, 3]),
    "full agreement gives base": dict(s=[[1, 2], [3, -1], [0, 5]], t=[[1, 2], [3, -1], [0, 5]], base=4, beta=2, gamma=2, tau=[4, 4, 4]),
    # every example disagrees as much: w = 1 each, mean 1, so no one moves (centred, not softened)
    "uniform disagreement gives base": dict(s=[[1, 0], [0, 1]], t=[[0, 1], [1, 0]], base=2, beta=1, gamma=2, tau=[2, 2]),
    # w = 0, 1, 2 (gamma 1), mean 1: 2 + (1 - 0), 2 + (1 - 1), 2 + (1 - 2)
    "three levels, gamma 1": dict(s=[[1, 0], [1, 0], [1, 0]], t=[[1, 0], [0, 1], [-1, 0]], base=2, beta=1, gamma=1, tau=[3, 2, 1]),
    # w = 0, 1, 4 (gamma 2), mean 5/3: 2 + 0.5 * (5/3 - w)
    "three levels, gamma 2": dict(
        s=[[1, 0], [1, 0], [1, 0]], t=[[1, 0], [0, 1], [-1, 0]], base=2, beta=0.5, gamma=2, tau=[17 / 6, 7 / 3, 5 / 6]
    ),
    # w = 0.04 and 0 (gamma 1), mean 0.02: 20 + 10 * (0.02 - w)
    "small disagreement": dict(s=[[3, 4], [1, 0]], t=[[4, 3], [1, 0]], base=20, beta=10, gamma=1, tau=[19.8, 20.2]),
    # (B, L, C): example 0 keeps only its agreeing position (w 0), example 1 only its orthogonal
    # one (w 1); the ruled-out positions (disagreeing, nan) must not count
    "masked positions": dict(
        s=[[[1, 0], [1, 0]], [[1, 0], [NAN, NAN]]],
        t=[[[1, 0], [0, 1]], [[0, 1], [NAN, 1]]],
        mask=[[1, 0], [1, 0]],
        base=2, beta=1, gamma=2, tau=[2.5, 1.5],
    ),
    # (B, 2, C) MRC heads with the last class outside the passage, filled with -1e4 on both
    # sides: on the allowed classes example 0 agrees (w 0 on both heads), example 1 is
    # orthogonal (w 1); with the fill inside the cosine both would look like cos = 1
    "ruled-out classes": dict(
        s=[[[1, 0, -1e4], [0, 1, -1e4]], [[1, 0, -1e4], [0, 1, -1e4]]],
        t=[[[1, 0, -1e4], [0, 1, -1e4]], [[0, 1, -1e4], [1, 0, -1e4]]],
        class_mask=[[[1, 1, 0]], [[1, 1, 0]]],
        base=2, beta=1, gamma=2, tau=[2.5, 1.5],
    ),
    # the example's w is the mean of its rows' w, not the w of its mean cosine: example 0 has rows
    # with w 0 and 4 (mean 2; its mean cosine 0 would give 1), example 1 rows with w 1 and 1;
    # batch mean 1.5: 4 + (1.5 - 2), 4 + (1.5 - 1)
    "rows averaged": dict(
        s=[[[1, 0], [1, 0]], [[1, 0], [1, 0]]], t=[[[1, 0], [-1, 0]], [[0, 1], [0, 1]]],
        mask=[[1, 1], [1, 1]], base=4, beta=1, gamma=2, tau=[3.5, 4.5],
    ),
    # MRC heads that disagree differently: example 0 start head agrees (w 0), end head is
    # opposite on the allowed classes (w 4): mean 2; example 1 both heads orthogonal (w 1);
    # batch mean 1.5
    "heads averaged": dict(
        s=[[[1, 0, -1e4], [1, 0, -1e4]], [[1, 0, -1e4], [0, 1, -1e4]]],
        t=[[[1, 0, -1e4], [-1, 0, -1e4]], [[0, 1, -1e4], [1, 0, -1e4]]],
        class_mask=[[[1, 1, 0]], [[1, 1, 0]]], base=4, beta=1, gamma=2, tau=[3.5, 4.5],
    ),
    # an example with no valid position gets base and stays out of the batch mean (0 and 1 -> 0.5)
    "empty example": dict(
        s=[[[1, 0]], [[1, 0]], [[5, 1]]], t=[[[1, 0]], [[0, 1]], [[-5, 1]]], mask=[[1], [1], [0]],
        base=2, beta=1, gamma=2, tau=[2.5, 1.5, 2.0],
    ),
}

# cwsm: w = 1 / (max_k softmax(z_s)_k + eps). Softmax tops used below: [0, 0] -> 1/2 (w 2 with
# eps 0), [ln 3, 0] -> 3/4 (w 4/3), [0, 0, 0, 0] -> 1/4 (w 4), [ln 3, 0, 0, 0] -> 1/2 (w 2),
# [ln 9, 0, 0, 0] -> 3/4 (w 4/3). The teacher logits are never read.
_T2 = [[9.0, -9.0], [-9.0, 9.0]]
CWSM_CASES = {
    # w = 2 and 4/3, mean 5/3: the unsure example gets 2 + (5/3 - 2), the confident 2 + (5/3 - 4/3)
    "direction": dict(s=[[0, 0], [LN3, 0]], t=_T2, base=2, beta=1, eps=0, tau=[5 / 3, 7 / 3]),
    # the default eps = 1e-3
    "default eps": dict(
        s=[[0, 0], [LN3, 0]], t=_T2, base=2, beta=1,
        tau=[2 + ((1 / 0.501 + 1 / 0.751) / 2 - 1 / 0.501), 2 + ((1 / 0.501 + 1 / 0.751) / 2 - 1 / 0.751)],
    ),
    "beta 0 is constant": dict(s=[[0, 0], [LN3, 0]], t=_T2, base=2.5, beta=0, eps=0, tau=[2.5, 2.5]),
    "equal confidence gives base": dict(s=[[0, 0], [5, 5]], t=_T2, base=2, beta=1, eps=0, tau=[2, 2]),
    "teacher is ignored": dict(s=[[0, 0], [LN3, 0]], t=[[0, 0], [0, 0]], base=2, beta=1, eps=0, tau=[5 / 3, 7 / 3]),
    # w = 4, 2, 4/3, mean 22/9: 3 + 0.5 * (22/9 - w)
    "three levels": dict(
        s=[[0, 0, 0, 0], [LN3, 0, 0, 0], [LN9, 0, 0, 0]], t=[[0] * 4] * 3, base=3, beta=0.5, eps=0,
        tau=[20 / 9, 29 / 9, 32 / 9],
    ),
    # (B, L, C): only the first position of each example counts (w 2 and 4/3, as in "direction")
    "masked positions": dict(
        s=[[[0, 0], [LN3, 0]], [[LN3, 0], [NAN, NAN]]], t=[[[0, 0]] * 2] * 2, mask=[[1, 0], [1, 0]],
        base=2, beta=1, eps=0, tau=[5 / 3, 7 / 3],
    ),
    # (B, L, C) with every position valid: w_0 = (2 + 4/3) / 2 = 5/3, w_1 = 4/3, mean 3/2
    "positions averaged": dict(
        s=[[[0, 0], [LN3, 0]], [[LN3, 0], [LN3, 0]]], t=[[[0, 0]] * 2] * 2, mask=[[1, 1], [1, 1]],
        base=2, beta=1, eps=0, tau=[2 + (1.5 - 5 / 3), 2 + (1.5 - 4 / 3)],
    ),
    # a large logit in a ruled-out class would make every top probability ~1
    "ruled-out classes": dict(
        s=[[[0, 0, 50.0]], [[LN3, 0, 50.0]]], t=[[[0, 0, 0]]] * 2, class_mask=[[[1, 1, 0]], [[1, 1, 0]]],
        base=2, beta=1, eps=0, tau=[5 / 3, 7 / 3],
    ),
    "empty example": dict(
        s=[[[0, 0]], [[LN3, 0]], [[7, 0]]], t=[[[0, 0]]] * 3, mask=[[1], [1], [0]],
        base=2, beta=1, eps=0, tau=[5 / 3, 7 / 3, 2.0],
    ),
}


def _run_case(kind, case):
    params = {k: case[k] for k in ("beta", "gamma", "eps") if k in case}
    optional = {k: torch.tensor(case[k]) for k in ("mask", "class_mask") if k in case}
    return TEMPERATURES.get(kind)(
        torch.tensor(case["s"], dtype=torch.float32), torch.tensor(case["t"], dtype=torch.float32),
        float(case["base"]), **optional, **params,
    )


REFERENCE_CASES = [("flsw", name) for name in FLSW_CASES] + [("cwsm", name) for name in CWSM_CASES]


@pytest.mark.parametrize("kind, name", REFERENCE_CASES, ids=[f"{k}-{n}" for k, n in REFERENCE_CASES])
def test_dynamic_temperature_reference_cases(kind, name):
    case = (FLSW_CASES if kind == "flsw" else CWSM_CASES)[name]
    tau = _run_case(kind, case)
    assert tau.shape == (len(case["tau"]),)
    assert tau.tolist() == pytest.approx(case["tau"], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kind", ["flsw", "cwsm"])
def test_dynamic_temperatures_are_centred_on_base(kind):
    torch.manual_seed(0)
    z_s, z_t = torch.randn(16, 5), torch.randn(16, 5)
    tau = TEMPERATURES.get(kind)(z_s, z_t, 3.0, beta=0.2)
    assert tau.mean().item() == pytest.approx(3.0, abs=1e-5)
    assert tau.std().item() > 0.01


def test_flsw_without_the_class_mask_sees_the_passage_fill():
    """Why MRC passes a class mask: the shared -1e4 fill makes every cosine about 1."""
    case = FLSW_CASES["ruled-out classes"]
    unmasked = {k: v for k, v in case.items() if k != "class_mask"}
    assert _run_case("flsw", unmasked).tolist() == pytest.approx([2.0, 2.0], abs=1e-6)


def test_temperatures_are_detached():
    z_s = torch.randn(3, 4, requires_grad=True)
    z_t = torch.randn(3, 4, requires_grad=True)
    for kind in ("flsw", "cwsm"):
        tau = TEMPERATURES.get(kind)(z_s, z_t, 2.0)
        assert not tau.requires_grad


def test_3d_without_mask_uses_all_positions():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    full = torch.ones(2, 3, dtype=torch.long)
    for kind in ("flsw", "cwsm"):
        fn = TEMPERATURES.get(kind)
        assert torch.allclose(fn(z_s, z_t, 2.0, beta=0.1), fn(z_s, z_t, 2.0, mask=full, beta=0.1))


def test_mask_shape_mismatch_raises():
    z = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="mask shape"):
        TEMPERATURES.get("flsw")(z, z, 2.0, mask=torch.ones(2, 4))


def test_flsw_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        TEMPERATURES.get("flsw")(torch.randn(2, 3), torch.randn(2, 4), 1.0)


# The bound: tau_i >= base - beta * (max w - min w); flsw's w lies in [0, 2 ** gamma], cwsm's
# in [1 / (1 + eps), 1 / (1 / C + eps)] for C classes.
@pytest.mark.parametrize(
    "temperature, classes, message",
    [
        ({"kind": "flsw", "base": 2.0, "beta": 1.0, "gamma": 2.0}, 2,
         "scheduler.temperature.beta=1 can drive the flsw temperature to <= 0 on the task: it needs beta * 4 "
         "(the widest spread of its weights) <= scheduler.temperature.base=2, i.e. beta <= 0.5"),
        ({"kind": "flsw", "base": 1.0, "beta": 0.3, "gamma": 2.0}, None, "i.e. beta <= 0.25"),
        # 1 / (1/7 + 0.001) - 1 / 1.001 = 5.952
        ({"kind": "cwsm", "base": 4.0, "beta": 1.0}, 7,
         "can drive the cwsm temperature to <= 0 on the task with 7 classes per logit row: it needs beta * 5.952"),
        ({"kind": "cwsm", "base": 0.25, "beta": 1.0, "eps": 0.5}, 2, "i.e. beta <= 0.75"),  # spread 1 / (0.5 + 0.5) - 1 / 1.5 = 1/3
    ],
)
def test_a_beta_that_can_reach_zero_is_refused(temperature, classes, message):
    with pytest.raises(BrewlabError) as err:
        build_schedules({"temperature": temperature}, num_classes=classes)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "temperature, classes",
    [
        ({"kind": "flsw", "base": 4.0, "beta": 1.0, "gamma": 2.0}, 2),  # the preset: exactly at the bound
        ({"kind": "cwsm", "base": 4.0, "beta": 1.0}, 2),  # spread 0.997
        ({"kind": "cwsm", "base": 0.1, "beta": 5.0}, None),  # classes unknown (MLM): checked by the loss
        ({"kind": "constant", "base": 0.1, "beta": 9.0}, 3),
    ],
)
def test_a_beta_within_the_bound_is_accepted(temperature, classes):
    build_schedules({"temperature": temperature}, num_classes=classes)


def test_at_the_bound_the_temperature_stays_positive():
    # flsw, base 4 = beta * 2 ** gamma: w = 0, 0, 0, 4 (one opposite pair), mean 1 -> 4 + (1 - 4) = 1
    s = torch.tensor([[1.0, 0.0]] * 4)
    t = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]])
    tau = TEMPERATURES.get("flsw")(s, t, 4.0, beta=1.0, gamma=2.0)
    assert tau.tolist() == pytest.approx([5.0, 5.0, 5.0, 1.0])


# ------------------------------------------------------------------------ Schedules


def test_build_from_example_config():
    sched = build_schedules(EXAMPLE_CFG)
    assert isinstance(sched, Schedules)
    assert sched.probability_shift is False
    logits = torch.randn(2, 3)
    assert sched.temperature(logits, logits) == 4.0
    assert sched.kd_weight(25, 100) == 1.0
    assert sched.hard_weight(25, 100) == pytest.approx(0.75)
    lrs = _lrs(lambda opt, total: sched.lr_scheduler(opt, total), 100)
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[55] == pytest.approx(0.5)


def test_schedules_is_frozen():
    sched = build_schedules(EXAMPLE_CFG)
    with pytest.raises(AttributeError):
        sched.temperature_base = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        sched.temperature_params["beta"] = 5.0  # type: ignore[index]


def test_build_passes_temperature_params():
    cfg = _cfg(temperature={"kind": "flsw", "base": 2.0, "beta": 0.5, "gamma": 1.0})
    sched = build_schedules(cfg)
    # w = 1 - cos = 0 and 1 (gamma 1), mean 0.5: 2 + 0.5 * (0.5 - w)
    tau = sched.temperature(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert tau.tolist() == pytest.approx([2.25, 1.75])


def test_build_passes_temperature_masks():
    sched = build_schedules(_cfg(temperature={"kind": "cwsm", "base": 2.0, "eps": 1e-9}))
    case = CWSM_CASES["masked positions"]
    tau = sched.temperature(torch.tensor(case["s"]), torch.tensor(case["t"], dtype=torch.float32), mask=torch.tensor(case["mask"]))
    assert tau.tolist() == pytest.approx(case["tau"], rel=1e-5)
    case = CWSM_CASES["ruled-out classes"]
    tau = sched.temperature(
        torch.tensor(case["s"]), torch.tensor(case["t"], dtype=torch.float32), class_mask=torch.tensor(case["class_mask"])
    )
    assert tau.tolist() == pytest.approx(case["tau"], rel=1e-5)


def test_build_passes_lr_params():
    cfg = _cfg(lr={"kind": "slanted_triangular", "cut_frac": 0.2, "ratio": 10})
    sched = build_schedules(cfg)
    lrs = _lrs(lambda opt, total: sched.lr_scheduler(opt, total), 50)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(0.1)


def test_build_defaults_are_the_schema_scheduler_section():
    """A key left out (or null) takes brewlab.config.schema.Scheduler's default: T=4, constant
    weights, linear LR with a tenth of the steps warming up, no probability shift."""
    sched = build_schedules({"temperature": {"base": None}, "lr": {"kind": "constant"}})
    assert sched.temperature(torch.randn(1, 2), torch.randn(1, 2)) == 4.0
    assert (sched.temperature_kind, sched.kd_weight_kind, sched.hard_weight_kind) == ("constant",) * 3
    assert (sched.lr_kind, sched.warmup_ratio, sched.probability_shift) == ("constant", 0.1, False)
    lrs = _lrs(lambda opt, total: build_schedules({}).lr_scheduler(opt, total), 100)
    assert (lrs[5], lrs[10], lrs[55], lrs[100]) == pytest.approx((0.5, 1.0, 0.5, 0.0))
    assert build_schedules({}) == build_schedules(dataclasses.asdict(Scheduler()))


def test_build_accepts_any_mapping_and_dictconfig():
    frozen = MappingProxyType({**EXAMPLE_CFG, "probability_shift": True})
    assert build_schedules(frozen).probability_shift is True
    omegaconf = pytest.importorskip("omegaconf")
    dc = omegaconf.OmegaConf.create(EXAMPLE_CFG)
    assert build_schedules(dc) == build_schedules(EXAMPLE_CFG)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            _cfg(temperature={"kind": "foo"}),
            "scheduler.temperature.kind='foo' is not valid; choose one of: constant, cwsm, flsw",
        ),
        (
            _cfg(kd_weight="cosine"),
            ("scheduler.kd_weight='cosine' is not valid; choose one of: constant, linear_decay, linear_growth"),
        ),
        (
            _cfg(hard_weight="step"),
            ("scheduler.hard_weight='step' is not valid; choose one of: constant, linear_decay, linear_growth"),
        ),
        (
            _cfg(lr={"kind": "cosine"}),
            ("scheduler.lr.kind='cosine' is not valid; choose one of: constant, linear, slanted_triangular"),
        ),
        (_cfg(temperature={"base": 0}), "scheduler.temperature.base=0 must be > 0"),
        (
            _cfg(temperature={"base": -1.5}),
            "scheduler.temperature.base=-1.5 must be > 0",
        ),
        (
            _cfg(temperature={"base": "hot"}),
            "scheduler.temperature.base='hot' must be a number",
        ),
        (_cfg(temperature={"beta": -1}), "scheduler.temperature.beta=-1 must be >= 0"),
        (_cfg(temperature={"gamma": 0}), "scheduler.temperature.gamma=0 must be > 0"),
        (
            _cfg(lr={"warmup_ratio": 1.0}),
            "scheduler.lr.warmup_ratio=1 must be in [0, 1)",
        ),
        (
            _cfg(lr={"warmup_ratio": -0.1}),
            "scheduler.lr.warmup_ratio=-0.1 must be in [0, 1)",
        ),
        (_cfg(lr={"cut_frac": 1.5}), "scheduler.lr.cut_frac=1.5 must be in (0, 1)"),
        (_cfg(lr={"ratio": 0.5}), "scheduler.lr.ratio=0.5 must be >= 1"),
        (
            _cfg(probability_shift="yes"),
            "scheduler.probability_shift='yes' must be true or false",
        ),
        (
            _cfg(temperature={"gama": 2.0}),
            "scheduler.temperature.gama is not a known key",
        ),
        (_cfg(lr={"warmup": 0.1}), "scheduler.lr.warmup is not a known key"),
        (_cfg(extra=1), "scheduler.extra is not a known key"),
        (_cfg(temperature=4.0), "scheduler.temperature must be a mapping"),
        (_cfg(kd_weight=1.0), "scheduler.kd_weight=1.0 must be a schedule name"),
    ],
)
def test_build_validation_errors(cfg, message):
    with pytest.raises(BrewlabError) as info:
        build_schedules(cfg)
    assert message in str(info.value)


def test_direct_construction_is_validated():
    valid = {
        "temperature_kind": "constant",
        "temperature_base": 2.0,
        "kd_weight_kind": "constant",
        "hard_weight_kind": "constant",
        "lr_kind": "linear",
        "warmup_ratio": 0.0,
        "probability_shift": False,
    }
    assert Schedules(**valid).temperature(torch.zeros(1, 2), torch.zeros(1, 2)) == 2.0
    with pytest.raises(BrewlabError, match=r"scheduler\.temperature\.base=0 must be > 0"):
        Schedules(**{**valid, "temperature_base": 0.0})
    with pytest.raises(BrewlabError, match=r"scheduler\.lr\.kind='nope'"):
        Schedules(**{**valid, "lr_kind": "nope"})
