"""Schedules used while distilling: the softmax temperature, the loss-weight multipliers
and the learning-rate schedule, each picked by name from the `scheduler` config section.

Pure code: depends on torch (and transformers' LR-schedule helpers, imported lazily),
never on models or tasks.

Three registries hold the pluggable pieces:

* `TEMPERATURES` -- ``fn(logits_s, logits_t, base, **params) -> float | Tensor(B,)``
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

from brewlab.errors import BrewlabError
from brewlab.registry import Registry

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


def _valid_positions(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Bool (B, L) validity mask for 3-D logits, or None when every position counts.

    2-D logits have one prediction per example, so a mask (e.g. an attention mask a caller
    passes for every task) is ignored for them.
    """
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (B, C) or (B, L, C), got shape {tuple(logits.shape)}")
    if logits.dim() == 2 or mask is None:
        return None
    if tuple(mask.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits (B, L) {tuple(logits.shape[:2])}")
    return mask.detach().to(device=logits.device) != 0


def _per_example(values: torch.Tensor, valid: torch.Tensor | None, empty_value: float) -> torch.Tensor:
    """Reduce per-position values (B, L) to per-example values (B,) by a masked mean.

    (B,) input is returned unchanged. An example with no valid position gets `empty_value`.
    Masked positions are excluded with `torch.where`, so whatever they hold (even inf/nan)
    cannot leak into the result.
    """
    if values.dim() == 1:
        return values
    if valid is None:
        return values.mean(dim=1)
    count = valid.sum(dim=1)
    total = torch.where(valid, values, torch.zeros_like(values)).sum(dim=1)
    mean = total / count.clamp(min=1).to(values.dtype)
    return torch.where(count > 0, mean, torch.full_like(mean, empty_value))


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
    beta: float = 1.0,
    gamma: float = 2.0,
    **_unused: Any,
) -> torch.Tensor:
    """Per-example temperature that rises as student and teacher disagree.

    The idea (after Wen et al., 2019): where the student's logit vector already points the
    same way as the teacher's, the plain `base` temperature is enough; where the two point
    in different directions, soften both distributions more, so that the student is asked
    to match the teacher's overall shape rather than its sharpest peaks. Agreement is
    measured by the cosine similarity of the two logit vectors:

        tau_i = base + beta * (1 - cos(z_s_i, z_t_i)) ** gamma

    ``1 - cos`` lies in [0, 2]: 0 for identical directions (tau_i = base), 2 for opposite
    ones (tau_i = base + beta * 2 ** gamma). `beta` scales the extra temperature and
    `gamma` shapes how quickly it grows with disagreement.

    Logits of shape (B, C) give one cosine per example. For (B, L, C) logits the cosine is
    taken at every position and averaged over the positions where `mask` (B, L) is non-zero
    (all positions when `mask` is None); an example without any valid position counts as
    full agreement (tau_i = base).

    Computed without gradient on detached logits, in float32. Returns a (B,) tensor.
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(
            f"student logits {tuple(logits_s.shape)} and teacher logits "
            f"{tuple(logits_t.shape)} must have the same shape"
        )
    valid = _valid_positions(logits_s, mask)
    with torch.no_grad():
        z_s = logits_s.detach().float()
        z_t = logits_t.detach().float().to(z_s.device)
        cos = F.cosine_similarity(z_s, z_t, dim=-1)  # (B,) or (B, L)
        cos = _per_example(cos, valid, empty_value=1.0)
        # Rounding can push cos a hair above 1; a negative base with a fractional
        # exponent would turn into nan.
        disagreement = (1.0 - cos).clamp(min=0.0)
        return base + beta * disagreement.pow(gamma)


@TEMPERATURES.register("cwsm")
def cwsm_temperature(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    base: float,
    *,
    mask: torch.Tensor | None = None,
    beta: float = 1.0,
    **_unused: Any,
) -> torch.Tensor:
    """Per-example temperature that rises as the student is less confident.

    Confidence is the student's top softmax probability, ``c_i = max_k softmax(z_s_i)_k``
    (for (B, L, C) logits: its mean over the positions where `mask` (B, L) is non-zero; an
    example with no valid position counts as fully confident, c_i = 1). Inverse confidences
    are normalised to average 1 over the batch, and raised to `beta`:

        w_i   = (1 / c_i) / mean_j (1 / c_j)
        tau_i = base * w_i ** beta

    So an example the student is unsure about gets a temperature above `base`, a confident
    one a temperature below it, while the batch stays centred on `base` (exactly so for
    beta = 1). `beta` = 0 turns the schedule into the constant one. The teacher's logits
    are not used.

    Computed without gradient on detached logits, in float32. Returns a (B,) tensor.
    """
    valid = _valid_positions(logits_s, mask)
    with torch.no_grad():
        z_s = logits_s.detach().float()
        if valid is not None:
            # Keep garbage (inf/nan) at padded positions out of the softmax entirely.
            z_s = torch.where(valid.unsqueeze(-1), z_s, torch.zeros_like(z_s))
        confidence = z_s.softmax(dim=-1).amax(dim=-1)  # (B,) or (B, L)
        confidence = _per_example(confidence, valid, empty_value=1.0)
        inverse = 1.0 / confidence
        weight = inverse / inverse.mean()
        return base * weight.pow(beta)


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

    def temperature(
        self,
        logits_s: torch.Tensor,
        logits_t: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> float | torch.Tensor:
        """Temperature for this batch: a float, or a (B,) tensor for per-example kinds."""
        fn = TEMPERATURES.get(self.temperature_kind, "scheduler.temperature.kind")
        return fn(
            logits_s,
            logits_t,
            self.temperature_base,
            mask=mask,
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


def _kind_name(cfg: Mapping[str, Any], key: str, where: str, default: str = "constant") -> str:
    value = cfg.get(key, default)
    if not isinstance(value, str):
        raise BrewlabError(f"{where}={value!r} must be a schedule name")
    return value


def build_schedules(cfg: Mapping[str, Any]) -> Schedules:
    """Validate the `scheduler` config section and return a `Schedules`.

    Expected shape (every key optional; defaults shown)::

        temperature: {kind: constant, base: 1.0, beta: ..., gamma: ...}
        kd_weight: constant
        hard_weight: constant
        lr: {kind: linear, warmup_ratio: 0.0, cut_frac: ..., ratio: ...}
        probability_shift: false

    Temperature and LR parameters are accepted whenever any kind of their schedule takes
    them and are ignored by the kinds that don't (so switching `kind` needs no other edit);
    a key no kind knows is an error. Works with a plain dict or an OmegaConf ``DictConfig``.
    """
    if not isinstance(cfg, Mapping):
        raise BrewlabError(f"scheduler must be a mapping, got {cfg!r}")
    _check_keys(cfg, "scheduler", set(_TOP_KEYS))

    temp = _section(cfg, "temperature")
    temp_params = _tunable_params(TEMPERATURES, skip=frozenset({"mask"}))
    _check_keys(temp, "scheduler.temperature", {"kind", "base"} | temp_params)

    lr = _section(cfg, "lr")
    lr_params = _tunable_params(LR_SCHEDULES, skip=frozenset())
    _check_keys(lr, "scheduler.lr", {"kind", "warmup_ratio"} | lr_params)

    return Schedules(
        temperature_kind=_kind_name(temp, "kind", "scheduler.temperature.kind"),
        temperature_base=temp.get("base", 1.0),
        temperature_params={k: temp[k] for k in temp if k in temp_params},
        kd_weight_kind=_kind_name(cfg, "kd_weight", "scheduler.kd_weight"),
        hard_weight_kind=_kind_name(cfg, "hard_weight", "scheduler.hard_weight"),
        lr_kind=_kind_name(lr, "kind", "scheduler.lr.kind", default="linear"),
        warmup_ratio=lr.get("warmup_ratio", 0.0),
        lr_params={k: lr[k] for k in lr if k in lr_params},
        probability_shift=cfg.get("probability_shift", False),
    )
