"""What the training loop and its callbacks share: the `TrainState` a checkpoint saves, the
`Trained` objects it saves besides, and the `Control` through which callbacks and the loop tell
each other what happens at a point of the loop."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainState:
    """Where a loop is: saved in each checkpoint (flat, under these names) and restored from it."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch in progress
    batch: int = 0  # batches of that epoch already consumed
    skipped: int = 0  # batches dropped for a non-finite loss (trainer.nonfinite=skip)
    best: tuple[float, int, Any] = (-math.inf, 0, None)  # (dev metric, step, module weights)
    history: list[dict[str, float]] = field(default_factory=list)  # every evaluation
    running: dict[str, torch.Tensor] = field(default_factory=dict)  # loss sums of the open log interval
    values: dict[str, float] = field(default_factory=dict)  # the last logged losses
    train_seconds: float = 0.0  # spent before this launch

    def saved(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def restored(cls, checkpoint: Mapping[str, Any]) -> TrainState:
        return cls(**{name: checkpoint[name] for name in cls.__dataclass_fields__})


@dataclass
class Trained:
    """What a checkpoint holds besides the `TrainState`: everything that learns or draws."""

    modules: list[nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    caches: list[Any]  # teacher-logit caches (or None), saved so a resumed run reads what it cached
    params: list[nn.Parameter]
    stores: list[str] = field(default_factory=list)  # teacher-store entries read instead of caches


@dataclass
class Control:
    """Shared by the loop and its callbacks, so a callback can act on the loop without the loop
    knowing it. The loop fills in `total` and, after each optimizer step, `lr` and the schedule
    of that step (`log`, `evaluate`, `save`, from `log_every`, `eval_every`, `checkpoint_every`)
    before `on_step_end`, where a callback may ask for an evaluation or a save, or `stop`.
    `skip` is cleared before each batch's `on_loss`: set, the batch gives no gradient."""

    total: int  # the loop's optimizer steps
    lr: float = 0.0  # the learning rate after the last step
    skip: bool = False  # on_loss: this batch's loss is not used
    log: bool = False  # on_step_end: a log interval ends at this step (read, not set, by callbacks)
    evaluate: bool = False  # on_step_end: evaluate (then save) at this step
    save: bool = False  # on_step_end: save at this step
    stop: bool = False  # end the loop after this step; its end-of-loop evaluation and save follow
