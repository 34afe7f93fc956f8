"""Schedules used while distilling: the softmax temperature, the loss-weight multipliers
and the learning-rate schedule, each picked by name from the `scheduler` config section.

Pure code: depends on torch (and transformers' LR-schedule helpers, imported lazily),
never on models or tasks.

Three registries hold the pluggable pieces:

* `TEMPERATURES` -- ``fn(logits_s, logits_t, base, *, mask, class_mask, **params) -> float | Tensor(B,)``
* `WEIGHT_SCHEDULES` -- ``fn(step, total_steps) -> float`` (a multiplier of a loss weight)
* `LR_SCHEDULES` -- ``fn(optimizer, total_steps, warmup_ratio=0.0, **params) -> LRScheduler``

`build_schedules` turns a plain mapping (or an OmegaConf ``DictConfig``) into a validated,
immutable `Schedules` object that the trainer calls.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry

TemperatureFn = Callable[..., "float | torch.Tensor"]
WeightFn = Callable[[int, int], float]
LRScheduleFn = Callable[..., LRScheduler]

TEMPERATURES: Registry[TemperatureFn] = Registry("scheduler.temperature.kind")
WEIGHT_SCHEDULES: Registry[WeightFn] = Registry("scheduler.<kd|hard>_weight")
LR_SCHEDULES: Registry[LRScheduleFn] = Registry("scheduler.lr.kind")

# Small slack so that e.g. 0.29 * 100 counts as 29 steps, not 28.
_FLOOR_SLACK = 1e-9


# --------------------------------------------------------------------------- helpers


def _floor_steps(fraction: float, total_steps: int) -> int:
    """``floor(fraction * total_steps)``, tolerant of binary floating-point error."""
    return max(math.floor(fraction * total_steps + _FLOOR_SLACK), 0)


def _rows_and_examples(
    logits: torch.Tensor, mask: torch.Tensor | None, class_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which logit rows count (shape logits.shape[:-1]) and the allowed classes (logits' shape).

    A row is a distribution over classes: one per example for (B, C) logits, one per position
    for (B, L, C). `mask` (B, L) rules out positions of 3-D logits (it is ignored for 2-D ones,
    which have one row per example); `class_mask`, broadcastable to the logits, rules out
    classes (MRC's positions outside the passage). A row without any allowed class is out too.
    """
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (B, C) or (B, L, C), got shape {tuple(logits.shape)}")
    rows = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if logits.dim() == 3 and mask is not None:
        if tuple(mask.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits (B, L) {tuple(logits.shape[:2])}")
        rows = mask.detach().to(device=logits.device) != 0
    classes = None
    if class_mask is not None:
        classes = torch.broadcast_to(class_mask.detach().to(device=logits.device) != 0, logits.shape)
        rows = rows & classes.any(dim=-1)
    return rows, classes


def _centred(base: float, beta: float, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tau_i = base + beta * (mean_j w_j - w_i)`` per example from per-row weights `w`.

    An example's w_i is the mean of its rows' weights (its only row for (B, C) logits, its valid
    positions for (B, L, C)); the batch mean runs over the examples that have a valid row, so
    it is exactly `base` over them. Examples without one get `base`.
    """
    if w.dim() == 2:
        count = rows.sum(dim=1)
        w = torch.where(rows, w, torch.zeros_like(w)).sum(dim=1) / count.clamp(min=1).to(w.dtype)
        present = count > 0
    else:
        present = rows
    if not bool(present.any()):
        return torch.full_like(w, float(base))
    mean = w[present].mean()
    return torch.where(present, base + beta * (mean - w), torch.full_like(w, float(base)))


# ------------------------------------------------------------------------ temperatures


@TEMPERATURES.register("constant")
def constant_temperature(logits_s: torch.Tensor, logits_t: torch.Tensor, base: float, **_unused: Any) -> float:
    """The same temperature `base` for every example and every step."""
    return float(base)


@TEMPERATURES.register("flsw")
def flsw_temperature(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    base: float,
    *,
    mask: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
    beta: float = 1.0,
    gamma: float = 2.0,
    **_unused: Any,
) -> torch.Tensor:
    """Per-example temperature that falls as student and teacher disagree (Wen et al., 2019,
    "Preparing Lessons", focal-loss-style sample weighting).

        w_i   = (1 - cos(z_s_i, z_t_i)) ** gamma        (cosine of the L2-normalised logits)
        tau_i = base + beta * (mean_j w_j - w_i)

    An example the two disagree on gets a *lower* temperature, i.e. sharper, more
    discriminative targets; one they agree on a higher one; the batch mean is exactly `base`.
    w_i lies in [0, 2 ** gamma], so ``beta * 2 ** gamma <= base`` keeps every tau_i > 0
    (checked at startup). For (B, L, C) logits w is taken per valid row and averaged per
    example; classes ruled out by `class_mask` are left out of both vectors of the cosine.

    Computed without gradient on detached logits, in float32. Returns a (B,) tensor.
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(
            f"student logits {tuple(logits_s.shape)} and teacher logits "
            f"{tuple(logits_t.shape)} must have the same shape"
        )
    rows, classes = _rows_and_examples(logits_s, mask, class_mask)
    with torch.no_grad():
        z_s = logits_s.detach().float()
        z_t = logits_t.detach().float().to(z_s.device)
        if classes is not None:
            z_s = torch.where(classes, z_s, torch.zeros_like(z_s))
            z_t = torch.where(classes, z_t, torch.zeros_like(z_t))
        # Rounding can push cos a hair outside [-1, 1]; a negative base with a fractional
        # exponent would turn into nan.
        cos = F.cosine_similarity(z_s, z_t, dim=-1)
        w = (1.0 - cos).clamp(min=0.0, max=2.0).pow(gamma)
        return _centred(base, beta, w, rows)


@TEMPERATURES.register("cwsm")
def cwsm_temperature(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    base: float,
    *,
    mask: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
    beta: float = 1.0,
    eps: float = 1e-3,
    **_unused: Any,
) -> torch.Tensor:
    """Per-example temperature that falls as the student is less confident (Wen et al., 2019,
    confidence-weighted by student max).

        w_i   = 1 / (max_k softmax(z_s_i)_k + eps)
        tau_i = base + beta * (mean_j w_j - w_i)

    An example the student is unsure of gets a *lower* temperature, a confident one a higher
    one; the batch mean is exactly `base`. With C allowed classes w_i lies in
    [1 / (1 + eps), 1 / (1 / C + eps)], which bounds the `beta` that keeps every tau_i > 0
    (checked at startup from the task's classes). The teacher's logits are not used. For
    (B, L, C) logits w is taken per valid row and averaged per example; classes ruled out by
    `class_mask` are left out of the softmax.

    Computed without gradient on detached logits, in float32. Returns a (B,) tensor.
    """
    rows, classes = _rows_and_examples(logits_s, mask, class_mask)
    with torch.no_grad():
        z_s = logits_s.detach().float()
        # Keep ruled-out rows (whatever they hold, even inf/nan) and classes out of the softmax.
        z_s = torch.where(rows.unsqueeze(-1), z_s, torch.zeros_like(z_s))
        if classes is not None:
            z_s = z_s.masked_fill(~classes & rows.unsqueeze(-1), float("-inf"))
        w = 1.0 / (z_s.softmax(dim=-1).amax(dim=-1) + eps)
        return _centred(base, beta, w, rows)


def _flsw_spread(num_classes: int | None, *, gamma: float, **_unused: Any) -> float:
    return 2.0**gamma


def _cwsm_spread(num_classes: int | None, *, eps: float, **_unused: Any) -> float | None:
    if num_classes is None:
        return None
    return 1.0 / (1.0 / num_classes + eps) - 1.0 / (1.0 + eps)


# Largest possible difference between two examples' weights w, per dynamic temperature (called
# with the temperature's parameters, defaults filled in): given it, ``beta * spread <= base``
# keeps every temperature above 0 (at least base / batch size). A temperature kind of the form
# base + beta * (mean w - w_i) registers its spread here, or its bound goes unchecked.
WEIGHT_SPREADS: dict[str, Callable[..., float | None]] = {"flsw": _flsw_spread, "cwsm": _cwsm_spread}


# ------------------------------------------------------------------ weight schedules


def _progress(step: int, total_steps: int) -> float:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    return min(max(step / total_steps, 0.0), 1.0)


@WEIGHT_SCHEDULES.register("constant")
def constant_weight(step: int, total_steps: int) -> float:
    """Always 1.0: the configured loss weight is used as is."""
    return 1.0


@WEIGHT_SCHEDULES.register("linear_decay")
def linear_decay_weight(step: int, total_steps: int) -> float:
    """``1 - step / total_steps``, from 1.0 at the first step down to 0.0 (and no lower)."""
    return 1.0 - _progress(step, total_steps)


@WEIGHT_SCHEDULES.register("linear_growth")
def linear_growth_weight(step: int, total_steps: int) -> float:
    """``step / total_steps``, from 0.0 at the first step up to 1.0 (and no higher)."""
    return _progress(step, total_steps)


# ----------------------------------------------------------------------- LR schedules


@LR_SCHEDULES.register("linear")
def linear_lr(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.0, **_unused: Any) -> LRScheduler:
    """Linear warmup from 0 over ``floor(warmup_ratio * total_steps)`` steps, then linear
    decay to 0 at `total_steps` (transformers' `get_linear_schedule_with_warmup`)."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(
        optimizer,
        num_warmup_steps=_floor_steps(warmup_ratio, total_steps),
        num_training_steps=total_steps,
    )


@LR_SCHEDULES.register("constant")
def constant_lr(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.0, **_unused: Any) -> LRScheduler:
    """Linear warmup from 0 over ``floor(warmup_ratio * total_steps)`` steps, then the
    optimizer's learning rate unchanged (transformers' `get_constant_schedule_with_warmup`)."""
    from transformers import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=_floor_steps(warmup_ratio, total_steps))


@LR_SCHEDULES.register("slanted_triangular")
def slanted_triangular_lr(
    optimizer: Optimizer,
    total_steps: int,
    warmup_ratio: float = 0.0,
    *,
    cut_frac: float = 0.1,
    ratio: float = 32.0,
    **_unused: Any,
) -> LRScheduler:
    """Slanted triangular learning rate (Howard & Ruder, 2018, ULMFiT).

    A short linear climb followed by a long linear descent. With T = `total_steps`,
    cut = ``floor(T * cut_frac)`` and the optimizer's rate eta_max, at step t:

        p = t / cut                     if t < cut
        p = 1 - (t - cut) / (T - cut)   otherwise (never below 0)
        eta_t = eta_max * (1 + p * (ratio - 1)) / ratio

    so the rate starts at eta_max / ratio, peaks at eta_max at step `cut` and is back to
    eta_max / ratio at step T. `warmup_ratio` is not used: `cut_frac` is this schedule's
    warmup. (The paper writes the descent denominator as ``cut * (1 / cut_frac - 1)``,
    which equals T - cut when T * cut_frac is a whole number.)
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0.0 < cut_frac < 1.0:
        raise ValueError(f"cut_frac must be in (0, 1), got {cut_frac}")
    if ratio < 1.0:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    cut = min(_floor_steps(cut_frac, total_steps), total_steps - 1)
    descent = total_steps - cut

    def factor(step: int) -> float:
        if step < cut:
            p = step / cut
        else:
            p = max(1.0 - (step - cut) / descent, 0.0)
        return (1.0 + p * (ratio - 1.0)) / ratio

    return LambdaLR(optimizer, factor)


# --------------------------------------------------------------------- config / facade


def _tunable_params(registry: Registry[Any], skip: frozenset[str]) -> set[str]:
    """Names of the keyword parameters (with defaults) that the registry's entries take."""
    names: set[str] = set()
    for kind in registry.names():
        for p in inspect.signature(registry.get(kind)).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and p.name not in skip:
                names.add(p.name)
    return names


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BrewlabError(f"{key}={value!r} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise BrewlabError(f"{key}={value!r} must be a finite number")
    return number


def _freeze(params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(params or {}))


@dataclass(frozen=True)
class Schedules:
    """The validated `scheduler` config section, with one method per schedule.

    Constructing one (directly or through `build_schedules`) checks every field and raises
    `BrewlabError` naming the offending config key.
    """

    temperature_kind: str = "constant"
    temperature_base: float = 1.0
    temperature_params: Mapping[str, float] = field(default_factory=dict)
    kd_weight_kind: str = "constant"
    hard_weight_kind: str = "constant"
    lr_kind: str = "linear"
    warmup_ratio: float = 0.0
    lr_params: Mapping[str, float] = field(default_factory=dict)
    probability_shift: bool = False

    def __post_init__(self) -> None:
        TEMPERATURES.get(self.temperature_kind, "scheduler.temperature.kind")
        WEIGHT_SCHEDULES.get(self.kd_weight_kind, "scheduler.kd_weight")
        WEIGHT_SCHEDULES.get(self.hard_weight_kind, "scheduler.hard_weight")
        LR_SCHEDULES.get(self.lr_kind, "scheduler.lr.kind")

        base = _number("scheduler.temperature.base", self.temperature_base)
        if base <= 0:
            raise BrewlabError(f"scheduler.temperature.base={base:g} must be > 0")
        object.__setattr__(self, "temperature_base", base)

        t_params = {k: _number(f"scheduler.temperature.{k}", v) for k, v in dict(self.temperature_params).items()}
        if t_params.get("beta", 0.0) < 0:
            raise BrewlabError(f"scheduler.temperature.beta={t_params['beta']:g} must be >= 0")
        if t_params.get("gamma", 1.0) <= 0:
            raise BrewlabError(f"scheduler.temperature.gamma={t_params['gamma']:g} must be > 0")
        if t_params.get("eps", 1.0) <= 0:
            raise BrewlabError(f"scheduler.temperature.eps={t_params['eps']:g} must be > 0")
        object.__setattr__(self, "temperature_params", _freeze(t_params))

        warmup = _number("scheduler.lr.warmup_ratio", self.warmup_ratio)
        if not 0.0 <= warmup < 1.0:
            raise BrewlabError(f"scheduler.lr.warmup_ratio={warmup:g} must be in [0, 1)")
        object.__setattr__(self, "warmup_ratio", warmup)

        lr_params = {k: _number(f"scheduler.lr.{k}", v) for k, v in dict(self.lr_params).items()}
        if "cut_frac" in lr_params and not 0.0 < lr_params["cut_frac"] < 1.0:
            raise BrewlabError(f"scheduler.lr.cut_frac={lr_params['cut_frac']:g} must be in (0, 1)")
        if "ratio" in lr_params and lr_params["ratio"] < 1.0:
            raise BrewlabError(f"scheduler.lr.ratio={lr_params['ratio']:g} must be >= 1")
        object.__setattr__(self, "lr_params", _freeze(lr_params))

        if not isinstance(self.probability_shift, bool):
            raise BrewlabError(f"scheduler.probability_shift={self.probability_shift!r} must be true or false")

    def check_temperature_bound(self, num_classes: int | None, where: str = "the task") -> None:
        """Refuse a dynamic-temperature `beta` that could drive some example's temperature to <= 0.

        `num_classes` is the most classes a logit row of the task can have (None when unknown
        before the models are built, which skips the kinds whose bound depends on it).
        """
        spread_fn = WEIGHT_SPREADS.get(self.temperature_kind)
        if spread_fn is None:
            return
        fn = TEMPERATURES.get(self.temperature_kind, "scheduler.temperature.kind")
        params = {
            p.name: p.default
            for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
        } | dict(self.temperature_params)
        beta = params["beta"]
        spread = spread_fn(num_classes, **params)
        if spread is None or beta * spread <= self.temperature_base:
            return
        classes = f" with {num_classes} classes per logit row" if self.temperature_kind == "cwsm" else ""
        raise BrewlabError(
            f"scheduler.temperature.beta={beta:g} can drive the {self.temperature_kind} temperature to <= 0 on "
            f"{where}{classes}: it needs beta * {spread:.4g} (the widest spread of its weights) <= "
            f"scheduler.temperature.base={self.temperature_base:g}, i.e. beta <= {self.temperature_base / spread:.4g}"
        )

    def temperature(
        self,
        logits_s: torch.Tensor,
        logits_t: torch.Tensor,
        mask: torch.Tensor | None = None,
        class_mask: torch.Tensor | None = None,
    ) -> float | torch.Tensor:
        """Temperature for this batch: a float, or a (B,) tensor for per-example kinds."""
        fn = TEMPERATURES.get(self.temperature_kind, "scheduler.temperature.kind")
        return fn(
            logits_s,
            logits_t,
            self.temperature_base,
            mask=mask,
            class_mask=class_mask,
            **self.temperature_params,
        )

    def kd_weight(self, step: int, total: int) -> float:
        """Multiplier of the distillation-loss weight at `step` of `total`."""
        return WEIGHT_SCHEDULES.get(self.kd_weight_kind, "scheduler.kd_weight")(step, total)

    def hard_weight(self, step: int, total: int) -> float:
        """Multiplier of the hard-label-loss weight at `step` of `total`."""
        return WEIGHT_SCHEDULES.get(self.hard_weight_kind, "scheduler.hard_weight")(step, total)

    def lr_scheduler(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        """A fresh LR scheduler for `optimizer`, to be stepped once per optimizer step."""
        fn = LR_SCHEDULES.get(self.lr_kind, "scheduler.lr.kind")
        return fn(optimizer, total_steps, self.warmup_ratio, **self.lr_params)


_TOP_KEYS = ("temperature", "kd_weight", "hard_weight", "lr", "probability_shift")


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BrewlabError(f"scheduler.{key} must be a mapping, got {value!r}")
    return value


def _check_keys(section: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in section:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise BrewlabError(f"{where}.{key} is not a known key; known keys: {known}")


def _kind_name(cfg: Mapping[str, Any], key: str, where: str) -> str | None:
    """The schedule named at `key`, or None when the section leaves it out."""
    value = cfg.get(key)
    if value is not None and not isinstance(value, str):
        raise BrewlabError(f"{where}={value!r} must be a schedule name")
    return value


def build_schedules(cfg: Mapping[str, Any], num_classes: int | None = None, where: str = "the task") -> Schedules:
    """Validate the `scheduler` config section and return a `Schedules`.

    Expected shape (every key optional: a missing one takes the `Schedules` field's neutral
    default; a composed run carries every key, from conf/scheduler_base.yaml)::

        temperature: {kind, base, beta, gamma, eps}
        kd_weight: <weight schedule>
        hard_weight: <weight schedule>
        lr: {kind, warmup_ratio, cut_frac, ratio}
        probability_shift: <bool>

    Temperature and LR parameters are accepted whenever any kind of their schedule takes
    them and are ignored by the kinds that don't (so switching `kind` needs no other edit);
    a key no kind knows is an error. Works with a plain dict or an OmegaConf ``DictConfig``.
    A dynamic temperature whose `beta` could drive some temperature to 0 is refused: flsw's bound
    holds for any task, cwsm's needs `num_classes` (classes per logit row of the task named
    `where`) and is skipped while that is unknown.
    """
    if not isinstance(cfg, Mapping):
        raise BrewlabError(f"scheduler must be a mapping, got {cfg!r}")
    _check_keys(cfg, "scheduler", set(_TOP_KEYS))

    temp = _section(cfg, "temperature")
    temp_params = _tunable_params(TEMPERATURES, skip=frozenset({"mask", "class_mask"}))
    _check_keys(temp, "scheduler.temperature", {"kind", "base"} | temp_params)

    lr = _section(cfg, "lr")
    lr_params = _tunable_params(LR_SCHEDULES, skip=frozenset())
    _check_keys(lr, "scheduler.lr", {"kind", "warmup_ratio"} | lr_params)

    # a key the section leaves out takes the `Schedules` field's default, its one home here
    given = {
        "temperature_kind": _kind_name(temp, "kind", "scheduler.temperature.kind"),
        "temperature_base": temp.get("base"),
        "kd_weight_kind": _kind_name(cfg, "kd_weight", "scheduler.kd_weight"),
        "hard_weight_kind": _kind_name(cfg, "hard_weight", "scheduler.hard_weight"),
        "lr_kind": _kind_name(lr, "kind", "scheduler.lr.kind"),
        "warmup_ratio": lr.get("warmup_ratio"),
        "probability_shift": cfg.get("probability_shift"),
    }
    schedules = Schedules(
        temperature_params={k: temp[k] for k in temp if k in temp_params},
        lr_params={k: lr[k] for k in lr if k in lr_params},
        **{k: v for k, v in given.items() if v is not None},
    )
    schedules.check_temperature_bound(num_classes, where)
    return schedules
