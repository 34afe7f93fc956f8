"""Loss-weight schedules (`scheduler.kd_weight`, `scheduler.hard_weight`): ``fn(step, total_steps)``
gives the multiplier of a configured loss weight at that step."""

from __future__ import annotations

from collections.abc import Callable

from brewlab.core.registry import Registry

WeightFn = Callable[[int, int], float]

WEIGHT_SCHEDULES: Registry[WeightFn] = Registry("scheduler.<kd|hard>_weight")


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

