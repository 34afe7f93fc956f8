"""The `scheduler` config section, validated into an immutable `Schedules` that the trainer
calls: the temperature, the loss-weight multipliers and the learning-rate schedule, each picked
by name from its registry, with the section's defaults from `brewlab.config.schema.Scheduler`."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from brewlab.config.schema import Scheduler
from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry
from brewlab.distill.schedulers.lr import LR_SCHEDULES
from brewlab.distill.schedulers.temperatures import TEMPERATURES, WEIGHT_SPREADS
from brewlab.distill.schedulers.weights import WEIGHT_SCHEDULES


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
    `BrewlabError` naming the offending config key. Its values have no defaults here: those of
    the config section are `brewlab.config.schema.Scheduler`'s.
    """

    temperature_kind: str
    temperature_base: float
    kd_weight_kind: str
    hard_weight_kind: str
    lr_kind: str
    warmup_ratio: float
    probability_shift: bool
    temperature_params: Mapping[str, float] = field(default_factory=dict)
    lr_params: Mapping[str, float] = field(default_factory=dict)

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


def _given(section: Mapping[str, Any]) -> dict[str, Any]:
    """The keys a section sets (a null one counts as left out)."""
    return {k: v for k, v in section.items() if v is not None}


def _kind_name(cfg: Mapping[str, Any], key: str, where: str) -> str:
    """The schedule named at `key`."""
    value = cfg[key]
    if not isinstance(value, str):
        raise BrewlabError(f"{where}={value!r} must be a schedule name")
    return value


def build_schedules(cfg: Mapping[str, Any], num_classes: int | None = None, where: str = "the task") -> Schedules:
    """Validate the `scheduler` config section and return a `Schedules`.

    Expected shape (every key optional: a missing or null one takes its default from
    `brewlab.config.schema.Scheduler`, which a composed run carries in full)::

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

    defaults = dataclasses.asdict(Scheduler())
    temp = _section(cfg, "temperature")
    temp_params = _tunable_params(TEMPERATURES, skip=frozenset({"mask", "class_mask"}))
    _check_keys(temp, "scheduler.temperature", {"kind", "base"} | temp_params)
    temp = {**defaults["temperature"], **_given(temp)}

    lr = _section(cfg, "lr")
    lr_params = _tunable_params(LR_SCHEDULES, skip=frozenset())
    _check_keys(lr, "scheduler.lr", {"kind", "warmup_ratio"} | lr_params)
    lr = {**defaults["lr"], **_given(lr)}

    top = {**defaults, **_given(cfg)}
    schedules = Schedules(
        temperature_kind=_kind_name(temp, "kind", "scheduler.temperature.kind"),
        temperature_base=temp["base"],
        kd_weight_kind=_kind_name(top, "kd_weight", "scheduler.kd_weight"),
        hard_weight_kind=_kind_name(top, "hard_weight", "scheduler.hard_weight"),
        lr_kind=_kind_name(lr, "kind", "scheduler.lr.kind"),
        warmup_ratio=lr["warmup_ratio"],
        probability_shift=top["probability_shift"],
        temperature_params={k: temp[k] for k in temp if k in temp_params},
        lr_params={k: lr[k] for k in lr if k in lr_params},
    )
    schedules.check_temperature_bound(num_classes, where)
    return schedules
