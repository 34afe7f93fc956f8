"""Learning-rate schedules (`scheduler.lr.kind`): ``fn(optimizer, total_steps, warmup_ratio, **params)``
returns a scheduler stepped once per optimizer step (transformers' helpers, imported lazily)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from brewlab.core.registry import Registry

LRScheduleFn = Callable[..., LRScheduler]

LR_SCHEDULES: Registry[LRScheduleFn] = Registry("scheduler.lr.kind")

# Small slack so that e.g. 0.29 * 100 counts as 29 steps, not 28.
_FLOOR_SLACK = 1e-9


def _floor_steps(fraction: float, total_steps: int) -> int:
    """``floor(fraction * total_steps)``, tolerant of binary floating-point error."""
    return max(math.floor(fraction * total_steps + _FLOOR_SLACK), 0)



@LR_SCHEDULES.register("linear")
def linear_lr(optimizer: Optimizer, total_steps: int, warmup_ratio: float, **_unused: Any) -> LRScheduler:
    """Linear warmup from 0 over ``floor(warmup_ratio * total_steps)`` steps, then linear
    decay to 0 at `total_steps` (transformers' `get_linear_schedule_with_warmup`)."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(
        optimizer,
        num_warmup_steps=_floor_steps(warmup_ratio, total_steps),
        num_training_steps=total_steps,
    )


@LR_SCHEDULES.register("constant")
def constant_lr(optimizer: Optimizer, total_steps: int, warmup_ratio: float, **_unused: Any) -> LRScheduler:
    """Linear warmup from 0 over ``floor(warmup_ratio * total_steps)`` steps, then the
    optimizer's learning rate unchanged (transformers' `get_constant_schedule_with_warmup`)."""
    from transformers import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=_floor_steps(warmup_ratio, total_steps))


@LR_SCHEDULES.register("slanted_triangular")
def slanted_triangular_lr(
    optimizer: Optimizer,
    total_steps: int,
    warmup_ratio: float,
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

