"""Tests for brewlab.schedulers: documented values at chosen steps, hand-computed
temperatures, mask handling and config validation."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest
import torch

from brewlab.errors import BrewlabError
from brewlab.schedulers import (
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
    lrs = _lrs(LR_SCHEDULES.get("linear"), 10)
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
    lrs = _lrs(LR_SCHEDULES.get("slanted_triangular"), 100, cut_frac=0.1, ratio=32)
    assert lrs[0] == pytest.approx(1 / 32)
    assert lrs[5] == pytest.approx((1 + 0.5 * 31) / 32)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx((1 + 0.5 * 31) / 32)
    assert lrs[100] == pytest.approx(1 / 32)
    assert max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == 10


def test_slanted_triangular_defaults_and_scaling():
    lrs = _lrs(LR_SCHEDULES.get("slanted_triangular"), 50, base_lr=0.32)
    # defaults cut_frac=0.1 -> cut=5, ratio=32
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.32)
    assert lrs[50] == pytest.approx(0.01)


# ----------------------------------------------------------------------- temperatures


def test_constant_temperature_returns_base():
    logits = torch.randn(3, 5)
    assert TEMPERATURES.get("constant")(logits, logits * 2, 4.0) == 4.0
    assert TEMPERATURES.get("constant")(logits, logits, 2.5, beta=3.0, mask=None) == 2.5


def test_flsw_equal_logits_gives_base():
    logits = torch.randn(4, 6)
    tau = TEMPERATURES.get("flsw")(logits, logits.clone(), 3.0, beta=2.0, gamma=2.0)
    assert tau.shape == (4,)
    assert torch.allclose(tau, torch.full((4,), 3.0), atol=1e-5)


def test_flsw_hand_computed():
    s1, t1 = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]  # cos = 10/14
    s2, t2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]  # cos = 0
    base, beta, gamma = 2.0, 1.5, 2.0
    tau = TEMPERATURES.get("flsw")(torch.tensor([s1, s2]), torch.tensor([t1, t2]), base, beta=beta, gamma=gamma)
    expected = [base + beta * (1 - _cos(s, t)) ** gamma for s, t in ((s1, t1), (s2, t2))]
    assert expected[0] == pytest.approx(2.0 + 1.5 * (4 / 14) ** 2)
    assert tau.tolist() == pytest.approx(expected, rel=1e-6)


def test_flsw_defaults_and_opposite_logits():
    # opposite directions: cos = -1 -> base + beta * 2 ** gamma with beta=1, gamma=2
    z = torch.tensor([[1.0, -2.0, 0.5]])
    tau = TEMPERATURES.get("flsw")(z, -z, 1.0)
    assert tau.tolist() == pytest.approx([1.0 + 4.0])


def test_cwsm_hand_computed():
    # example 1: logits [0, 0]     -> softmax [1/2, 1/2], c = 1/2
    # example 2: logits [ln 3, 0]  -> softmax [3/4, 1/4], c = 3/4
    z_s = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    z_t = torch.randn(2, 2)
    c = [
        1 / (1 + math.exp(0.0)),
        math.exp(math.log(3.0)) / (math.exp(math.log(3.0)) + 1),
    ]
    inv = [1 / ci for ci in c]
    w = [x / (sum(inv) / len(inv)) for x in inv]
    assert w == pytest.approx([6 / 5, 4 / 5])
    for beta in (1.0, 2.0, 0.5):
        tau = TEMPERATURES.get("cwsm")(z_s, z_t, 2.0, beta=beta)
        assert tau.tolist() == pytest.approx([2.0 * wi**beta for wi in w], rel=1e-6)


def test_cwsm_default_beta_keeps_batch_mean_at_base():
    tau = TEMPERATURES.get("cwsm")(torch.randn(5, 7), torch.randn(5, 7), 3.0)
    assert tau.mean().item() == pytest.approx(3.0, rel=1e-5)


def test_temperatures_are_detached():
    z_s = torch.randn(3, 4, requires_grad=True)
    z_t = torch.randn(3, 4, requires_grad=True)
    for kind in ("flsw", "cwsm"):
        tau = TEMPERATURES.get(kind)(z_s, z_t, 2.0)
        assert not tau.requires_grad


def _masked_pair():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    return z_s, z_t, mask


@pytest.mark.parametrize("kind", ["flsw", "cwsm"])
def test_masked_positions_do_not_matter(kind):
    z_s, z_t, mask = _masked_pair()
    fn = TEMPERATURES.get(kind)
    tau = fn(z_s, z_t, 2.0, mask=mask)
    assert tau.shape == (2,)

    pad = mask == 0
    z_s2, z_t2 = z_s.clone(), z_t.clone()
    z_s2[pad] = torch.randn(int(pad.sum()), 4) * 100
    z_t2[pad] = float("inf")
    assert torch.allclose(fn(z_s2, z_t2, 2.0, mask=mask), tau)
    assert torch.allclose(fn(z_s2, z_t2, 2.0, mask=mask.bool()), tau)

    # without the mask the padded positions do count
    assert not torch.allclose(fn(z_s2, z_t, 2.0), tau)


def test_flsw_3d_averages_cosine_over_valid_positions():
    z_s, z_t, mask = _masked_pair()
    base, beta, gamma = 1.0, 2.0, 1.5
    tau = TEMPERATURES.get("flsw")(z_s, z_t, base, mask=mask, beta=beta, gamma=gamma)
    expected = []
    for b in range(2):
        cosines = [_cos(z_s[b, i].tolist(), z_t[b, i].tolist()) for i in range(3) if mask[b, i]]
        mean_cos = sum(cosines) / len(cosines)
        expected.append(base + beta * (1 - mean_cos) ** gamma)
    assert tau.tolist() == pytest.approx(expected, rel=1e-5)


def test_cwsm_3d_averages_confidence_over_valid_positions():
    z_s, z_t, mask = _masked_pair()
    tau = TEMPERATURES.get("cwsm")(z_s, z_t, 2.0, mask=mask)
    conf = []
    for b in range(2):
        tops = []
        for i in range(3):
            if mask[b, i]:
                exps = [math.exp(x) for x in z_s[b, i].tolist()]
                tops.append(max(exps) / sum(exps))
        conf.append(sum(tops) / len(tops))
    inv = [1 / c for c in conf]
    expected = [2.0 * x / (sum(inv) / 2) for x in inv]
    assert tau.tolist() == pytest.approx(expected, rel=1e-5)


def test_3d_without_mask_uses_all_positions():
    z_s, z_t, _ = _masked_pair()
    full = torch.ones(2, 3, dtype=torch.long)
    for kind in ("flsw", "cwsm"):
        fn = TEMPERATURES.get(kind)
        assert torch.allclose(fn(z_s, z_t, 2.0), fn(z_s, z_t, 2.0, mask=full))


def test_example_without_valid_positions_gets_base_under_flsw():
    z_s, z_t, _ = _masked_pair()
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    tau = TEMPERATURES.get("flsw")(z_s, z_t, 2.0, mask=mask)
    assert tau[1].item() == pytest.approx(2.0)


def test_mask_shape_mismatch_raises():
    z_s, z_t, _ = _masked_pair()
    with pytest.raises(ValueError, match="mask shape"):
        TEMPERATURES.get("flsw")(z_s, z_t, 2.0, mask=torch.ones(2, 4))


def test_flsw_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        TEMPERATURES.get("flsw")(torch.randn(2, 3), torch.randn(2, 4), 1.0)


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
    cfg = _cfg(temperature={"kind": "flsw", "base": 2.0, "beta": 1.5, "gamma": 2.0})
    sched = build_schedules(cfg)
    s, t = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]
    tau = sched.temperature(torch.tensor([s]), torch.tensor([t]))
    assert tau.tolist() == pytest.approx([2.0 + 1.5 * (1 - _cos(s, t)) ** 2.0])


def test_build_passes_temperature_mask():
    z_s, z_t, mask = _masked_pair()
    sched = build_schedules(_cfg(temperature={"kind": "cwsm", "base": 2.0}))
    expected = TEMPERATURES.get("cwsm")(z_s, z_t, 2.0, mask=mask, beta=1.0)
    assert torch.allclose(sched.temperature(z_s, z_t, mask=mask), expected)


def test_build_passes_lr_params():
    cfg = _cfg(lr={"kind": "slanted_triangular", "cut_frac": 0.2, "ratio": 10})
    sched = build_schedules(cfg)
    lrs = _lrs(lambda opt, total: sched.lr_scheduler(opt, total), 50)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(0.1)


def test_build_defaults():
    sched = build_schedules({})
    assert sched == Schedules()
    assert sched.temperature(torch.randn(1, 2), torch.randn(1, 2)) == 1.0
    assert sched.lr_kind == "linear"
    assert sched.probability_shift is False


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
    with pytest.raises(BrewlabError, match=r"scheduler\.temperature\.base=0 must be > 0"):
        Schedules(temperature_base=0.0)
    with pytest.raises(BrewlabError, match=r"scheduler\.lr\.kind='nope'"):
        Schedules(lr_kind="nope")
