"""The one training loop every stage runs (masked-LM pretraining, teacher fine-tuning, the
labels-only baseline, general and task distillation).

The loop itself only steps and keeps the schedule (`log_every`, `eval_every`,
`checkpoint_every`); everything else it does sits in its callbacks (`brewlab.train.callbacks`),
called at its points with the state (`brewlab.train.state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from brewlab.config.schema import LoopSettings, TrainerSettings
from brewlab.core.parallel import average_gradients
from brewlab.data.batching import set_epoch
from brewlab.train.callbacks import Callback, fire
from brewlab.train.checkpoint import set_rng_state
from brewlab.train.state import Control, Trained, TrainState

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FitResult:
    best_metric: float
    best_step: int
    steps: int
    train_seconds: float
    history: list[dict[str, float]]
    final_losses: dict[str, float]


def precision(name: str, device: torch.device) -> tuple[Callable[[], Any], Any]:
    """Autocast context factory and gradient scaler for `trainer.precision` (fp32: no-ops)."""
    dtype = AUTOCAST_DTYPES[name]

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    return autocast, torch.amp.GradScaler(device.type, enabled=name == "fp16")


def progress_bar(total: int, enabled: bool, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", disable=not enabled, dynamic_ncols=True, leave=False)


def total_steps(loop: LoopSettings, batches: int) -> int:
    """Optimizer steps of a loop over `batches` batches per epoch (`epochs`, capped by `max_steps`)."""
    total = loop.epochs * math.ceil(batches / loop.grad_accum)
    return min(total, loop.max_steps) if loop.max_steps else total


def run_loop(
    compute_loss: Callable[[Mapping[str, Any], int, int], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    trained: Trained,
    loader: Any,
    trainer: TrainerSettings,
    total: int,
    callbacks: Sequence[Callback],
    restored: tuple[TrainState, dict[str, Any] | None],
    autocast: Callable[[], Any],
    parallel: bool,
) -> TrainState:
    """Steps from `restored` to `total` (or until a callback stops it): `grad_accum` batches per
    optimizer step, logging every `log_every` steps, evaluation every `eval_every` steps and at
    each epoch end, a save every `checkpoint_every` steps, after each evaluation and at each
    epoch end, each done by the `callbacks`. A resumed loop redraws the data order of its epoch,
    skips the batches already consumed and then continues with the saved random generators, so
    it takes exactly the steps an uninterrupted one would."""
    state, rng = restored
    control = Control(total)
    accum, clip = trainer.grad_accum, trainer.grad_clip
    log_every, eval_every, save_every = trainer.log_every, trainer.eval_every or 0, trainer.checkpoint_every or 0
    optimizer, scheduler, scaler = trained.optimizer, trained.scheduler, trained.scaler
    for module in trained.modules:
        module.train()
    fire(callbacks, "on_train_begin", state, control)
    while state.step < total and not control.stop:
        batches = len(loader)
        set_epoch(loader, state.epoch)
        if rng is not None and state.batch == 0:
            set_rng_state(rng)  # the epoch's shuffle draws come after the saved state
        iterator = iter(loader)
        for _ in range(state.batch):  # data order: the batches this epoch had already consumed
            next(iterator)
        if rng is not None and state.batch > 0:
            set_rng_state(rng)
        rng = None
        for i, batch in enumerate(iterator, start=state.batch):
            group = min(accum, batches - (i // accum) * accum)  # a short last group averages over what it has
            with autocast():
                loss, parts = compute_loss(batch, state.step, total)
            control.skip = False
            fire(callbacks, "on_loss", state, control, loss, parts, group)
            if not control.skip:
                scaler.scale(loss / group).backward()
            if (i + 1) % accum and i + 1 < batches:
                continue
            if parallel:  # data-parallel ranks step with the global batch's gradient
                average_gradients(trained.params)
            if clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trained.params, float(clip))
            scale = scaler.get_scale() if scaler.is_enabled() else 0.0
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scaler.get_scale() >= scale:  # fp16: a step skipped for overflow keeps its learning rate
                scheduler.step()
            state.step += 1
            state.batch = i + 1
            last = i + 1 == batches or state.step >= total  # the epoch-end evaluation and save follow
            control.lr = scheduler.get_last_lr()[0]
            control.log = (state.step % log_every == 0 or state.step == total) and bool(state.running)  # (empty: every batch skipped)
            control.evaluate = bool(eval_every) and state.step % eval_every == 0 and not last
            control.save = bool(save_every) and state.step % save_every == 0 and not last
            fire(callbacks, "on_step_end", state, control)
            if control.evaluate:
                fire(callbacks, "on_evaluate", state, control)
            if control.evaluate or control.save:
                fire(callbacks, "on_save", state, control)
            if state.step >= total or control.stop:
                break
        if not state.history or state.history[-1]["step"] != state.step:
            fire(callbacks, "on_evaluate", state, control)
        state.epoch, state.batch = state.epoch + 1, 0
        fire(callbacks, "on_save", state, control)  # at the loop's end too: a resumed finished stage takes no step
    fire(callbacks, "on_train_end", state, control)
    return state
