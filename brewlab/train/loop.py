"""The one training loop every stage runs (masked-LM pretraining, teacher fine-tuning, the
labels-only baseline, general and task distillation), with its state and its hooks.

`TrainState` is what a checkpoint saves besides the modules, optimizer and random generators.
The loop itself only steps; each concern sits in one hook: `NonFiniteGuard` (a NaN or inf loss),
`IntervalLog` (logged losses and learning rate: tracker, progress bar, `run.log`), `DevEval`
(evaluation and the best student) and `Checkpointer` (save and resume).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from brewlab.core.errors import BrewlabError
from brewlab.core.parallel import average_gradients, is_main, mean_across_ranks

log = logging.getLogger("brewlab")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FitResult:
    best_metric: float
    best_step: int
    steps: int
    train_seconds: float
    history: list[dict[str, float]]
    final_losses: dict[str, float]


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


def shown(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))


def _terms(parts: Mapping[str, torch.Tensor], loss: torch.Tensor) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in {**parts, "loss": loss}.items())


class NonFiniteGuard:
    """`trainer.nonfinite`. stop: remembers, without a host sync per step, the first step whose
    loss was NaN or infinite and its terms, and `check` (at log, evaluation and save points)
    turns that into an error. skip: such a batch gives no gradient (one sync per step)."""

    def __init__(self, mode: str) -> None:
        self.skip = mode == "skip"
        self.step: torch.Tensor | None = None
        self.parts: dict[str, torch.Tensor] = {}

    def admit(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], state: TrainState) -> bool:
        """Whether this batch's loss is used; in skip mode a non-finite one is counted and named."""
        if self.skip:
            if bool(torch.isfinite(loss)):
                return True
            state.skipped += 1
            log.warning("step %d: non-finite loss %s: batch skipped", state.step + 1, _terms(parts, loss))
            return False
        if self.step is None:
            self.step = torch.zeros((), dtype=torch.long, device=loss.device)
        first = ~torch.isfinite(loss.detach()) & (self.step == 0)
        self.step = torch.where(first, state.step + 1, self.step)
        for k, v in {**parts, "loss": loss}.items():
            v = v.detach().float()
            self.parts[k] = torch.where(first, v, self.parts.get(k, torch.zeros_like(v)))
        return True

    def check(self, step: int) -> None:
        if self.step is not None and int(self.step) > 0:
            raise BrewlabError(
                f"the loss became non-finite at step {int(self.step)} ({_terms(self.parts, self.parts['loss'])}); "
                f"stopped before step {step} was saved, the last checkpoint holds the state before it. Lower "
                "optim.lr, set trainer.grad_clip, or set trainer.nonfinite=skip to skip such batches"
            )

    @staticmethod
    def check_weights(params: Sequence[torch.Tensor], step: int) -> None:
        """A finite loss can still overflow the update: weights are checked before each save."""
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise BrewlabError(
                f"the student's weights became non-finite by step {step} (the loss itself was finite: an "
                "overflowing update); stopped, the last checkpoint holds the state before it. Lower optim.lr "
                "or set trainer.grad_clip"
            )


class IntervalLog:
    """Loss terms summed on the device and read once per `log_every` steps (the loop's only host
    sync), averaged over ranks when data-parallel, then sent to the tracker, the progress bar and
    `run.log`."""

    def __init__(self, every: int, total: int, log_fn: Callable[[dict[str, float], int], None], bar: Any, parallel: bool) -> None:
        self.every, self.total, self.log_fn, self.bar, self.parallel = every, total, log_fn, bar, parallel

    @staticmethod
    def add(state: TrainState, parts: Mapping[str, torch.Tensor], loss: torch.Tensor, group: int) -> None:
        for k, v in {**parts, "loss": loss}.items():
            state.running[k] = state.running.get(k, 0) + v.detach().float() / group

    def after_step(self, state: TrainState, lr: float, guard: NonFiniteGuard) -> None:
        step = state.step
        if (step % self.every == 0 or step == self.total) and state.running:  # (empty: every batch skipped)
            n = (step - 1) % self.every + 1
            values = {k: float(v) / n for k, v in state.running.items()}
            state.values = mean_across_ranks(values) if self.parallel else values
            state.running = {}
            guard.check(step)
            self.bar.set_postfix(loss=f"{state.values['loss']:.4f}")
            self.log_fn({f"train/{k}": v for k, v in state.values.items()} | {"train/lr": lr}, step)
            if is_main():  # run.log keeps every interval, for reading a run after the fact
                log.info("step %d/%d lr %.3g %s", step, self.total, lr, shown(state.values))
        self.bar.update(1)


class DevEval:
    """Evaluates, logs the dev scores and keeps the best weights by `main_metric`."""

    def __init__(
        self,
        evaluate: Callable[[], dict[str, float]],
        main_metric: str,
        total: int,
        modules: Sequence[nn.Module],
        log_fn: Callable[[dict[str, float], int], None],
    ) -> None:
        self.evaluate, self.main_metric, self.total, self.modules, self.log_fn = evaluate, main_metric, total, modules, log_fn

    def __call__(self, state: TrainState, guard: NonFiniteGuard) -> None:
        guard.check(state.step)
        metrics = self.evaluate()
        metrics["step"] = state.step
        state.history.append(metrics)
        scores = {k: v for k, v in metrics.items() if k != "step"}
        self.log_fn({f"dev/{k}": v for k, v in scores.items()}, state.step)
        if is_main():
            log.info("step %d/%d dev %s", state.step, self.total, shown(scores))
        if metrics[self.main_metric] > state.best[0]:
            state.best = (metrics[self.main_metric], state.step, [copy.deepcopy(m.state_dict()) for m in self.modules])
        for module in self.modules:
            module.train()


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


class Checkpointer:
    """Saves the full state to a `CheckpointStore` every `every` steps, after each evaluation
    and when the loop ends (so a finished stage is not trained again), and restores it."""

    def __init__(self, store: Any | None, every: int | None, trained: Trained, guard: NonFiniteGuard) -> None:
        self.store, self.trained, self.guard = store, trained, guard
        self.every = int(every or 0) if store is not None else 0
        self.started = time.perf_counter()

    def restore(self) -> tuple[TrainState, dict[str, Any] | None]:
        """The state to start from and, when resuming, the random generators to continue with."""
        checkpoint = self.store.latest() if self.store is not None else None
        if checkpoint is None:
            return TrainState(), None
        t = self.trained
        for module, weights in zip(t.modules, checkpoint["modules"], strict=True):
            module.load_state_dict(weights)
        t.optimizer.load_state_dict(checkpoint["optimizer"])
        t.scheduler.load_state_dict(checkpoint["scheduler"])
        t.scaler.load_state_dict(checkpoint["scaler"])
        for cache, cached in zip(t.caches, checkpoint["teacher_caches"], strict=True):
            if cache is not None and cached is not None:
                cache.load_state_dict(cached)
        saved = checkpoint.get("teacher_store", [])  # absent from checkpoints older than the store
        if t.stores and saved != t.stores:
            log.warning("resuming at step %d: the checkpoint read teacher store entries %s, this run reads %s", checkpoint["step"], saved, t.stores)
        elif t.stores:
            log.info("resuming at step %d with teacher outputs from the store (%s)", checkpoint["step"], ", ".join(t.stores))
        return TrainState.restored(checkpoint), checkpoint["rng"]

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, state: TrainState) -> None:
        if self.store is None:
            return
        from brewlab.train.checkpoint import rng_state

        self.guard.check(state.step)  # never save a state that a NaN already reached
        self.guard.check_weights(self.trained.params, state.step)
        t = self.trained
        checkpoint = {
            **state.saved(),
            "modules": [m.state_dict() for m in t.modules],
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict(),
            "teacher_caches": [c.state_dict() if c is not None else None for c in t.caches],
            "teacher_store": t.stores,
            "train_seconds": state.train_seconds + time.perf_counter() - self.started,
            "rng": rng_state(),
        }
        self.store.save(checkpoint, state.step)


def precision(name: str, device: torch.device) -> tuple[Callable[[], Any], Any]:
    """Autocast context factory and gradient scaler for `trainer.precision` (fp32: no-ops)."""
    dtype = PRECISIONS[name]

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    return autocast, torch.amp.GradScaler(device.type, enabled=name == "fp16")


def progress_bar(total: int, enabled: bool, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", disable=not enabled, dynamic_ncols=True, leave=False)


def total_steps(cfg: Mapping[str, Any], batches: int) -> int:
    """Optimizer steps of a loop over `batches` batches per epoch (`epochs`, capped by `max_steps`)."""
    total = int(cfg["epochs"]) * math.ceil(batches / int(cfg["grad_accum"]))
    return min(total, int(cfg["max_steps"])) if cfg["max_steps"] else total


def run_loop(
    compute_loss: Callable[[Mapping[str, Any], int, int], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    trained: Trained,
    loader: Any,
    cfg: Mapping[str, Any],
    total: int,
    hooks: tuple[NonFiniteGuard, IntervalLog, DevEval, Checkpointer],
    restored: tuple[TrainState, dict[str, Any] | None],
    autocast: Callable[[], Any],
    parallel: bool,
) -> TrainState:
    """Steps from `restored` to `total`: `grad_accum` batches per optimizer step, evaluation every
    `eval_every` steps and at each epoch end, the hooks at their points. A resumed loop redraws
    the data order of its epoch, skips the batches already consumed and then continues with the
    saved random generators, so it takes exactly the steps an uninterrupted one would."""
    from brewlab.data.batching import set_epoch
    from brewlab.train.checkpoint import set_rng_state

    guard, logged, dev, checkpointer = hooks
    state, rng = restored
    accum, clip, eval_every = int(cfg["grad_accum"]), cfg["grad_clip"], cfg["eval_every"]
    optimizer, scheduler, scaler = trained.optimizer, trained.scheduler, trained.scaler
    for module in trained.modules:
        module.train()
    while state.step < total:
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
            if guard.admit(loss, parts, state):
                scaler.scale(loss / group).backward()
                logged.add(state, parts, loss, group)
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
            logged.after_step(state, scheduler.get_last_lr()[0], guard)
            last = i + 1 == batches or state.step >= total  # the epoch-end evaluation and save follow
            if eval_every and state.step % int(eval_every) == 0 and not last:
                dev(state, guard)
                checkpointer.save(state)
            elif checkpointer.due(state.step) and not last:
                checkpointer.save(state)
            if state.step >= total:
                break
        if state.step < total or not state.history or state.history[-1]["step"] != state.step:
            dev(state, guard)
        state.epoch, state.batch = state.epoch + 1, 0
        checkpointer.save(state)  # at the loop's end too: a resumed finished stage takes no step
    return state
