"""The training loop's callbacks: everything the loop does besides stepping.

A `Callback` is called at the loop's points (`on_train_begin`, `on_loss` per batch,
`on_step_end`, `on_evaluate`, `on_save`, `on_train_end`) with the `TrainState` and the shared
`Control`, in list order. The built-in ones come first: `NonFiniteGuard` (a NaN or inf loss),
`IntervalLog` (logged losses and learning rate: tracker, progress bar, `run.log`), `DevEval`
(evaluation and the best student) and `Checkpointer` (save and resume); a user's callbacks,
registered in `CALLBACKS` by a `plugins` module and named in `trainer.callbacks`, follow them.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from brewlab.core.errors import BrewlabError
from brewlab.core.parallel import is_main, mean_across_ranks
from brewlab.core.registry import Registry
from brewlab.train.checkpoint import rng_state
from brewlab.train.state import Control, Trained, TrainState

log = logging.getLogger("brewlab")


class Callback:
    """One concern of the loop, called at its points; every method does nothing unless
    overridden. A callback listed after another sees what that one did at the same point
    (e.g. the new `state.history` entry after `DevEval.on_evaluate`)."""

    def on_train_begin(self, state: TrainState, control: Control) -> None:
        """The loop starts (or resumes: `state` is the restored one)."""

    def on_loss(self, state: TrainState, control: Control, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], group: int) -> None:
        """A batch's loss and its terms, before its backward pass; `group`: the batches of this
        optimizer step. Set `control.skip` to give the batch no gradient."""

    def on_step_end(self, state: TrainState, control: Control) -> None:
        """An optimizer step was taken (`state.step` counts it)."""

    def on_evaluate(self, state: TrainState, control: Control) -> None:
        """An evaluation point: `DevEval` evaluates here, so later callbacks read `state.history[-1]`."""

    def on_save(self, state: TrainState, control: Control) -> None:
        """A save point: `Checkpointer` saves the state here when the run keeps checkpoints."""

    def on_train_end(self, state: TrainState, control: Control) -> None:
        """The loop ended; `DevEval` puts the best weights back here."""


CALLBACKS: Registry = Registry("trainer.callbacks")


def user_callbacks(names: Sequence[str]) -> list[Callback]:
    """The registered callbacks named in `trainer.callbacks`, each made with no arguments."""
    return [CALLBACKS.get(name, "trainer.callbacks")() for name in names]


def fire(callbacks: Sequence[Callback], event: str, state: TrainState, control: Control, *args: Any) -> None:
    """Call `event` of every callback, in order."""
    for callback in callbacks:
        getattr(callback, event)(state, control, *args)


def shown(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))


def _terms(parts: Mapping[str, torch.Tensor], loss: torch.Tensor) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in {**parts, "loss": loss}.items())


class NonFiniteGuard(Callback):
    """`trainer.nonfinite`. stop: remembers, without a host sync per step, the first step whose
    loss was NaN or infinite and its terms, and `check` (at log, evaluation and save points)
    turns that into an error. skip: such a batch gives no gradient (one sync per step)."""

    def __init__(self, mode: str) -> None:
        self.skip = mode == "skip"
        self.step: torch.Tensor | None = None
        self.parts: dict[str, torch.Tensor] = {}

    def on_loss(self, state: TrainState, control: Control, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], group: int) -> None:
        """In skip mode a non-finite loss is counted, named and its batch skipped."""
        if self.skip:
            if not bool(torch.isfinite(loss)):
                state.skipped += 1
                log.warning("step %d: non-finite loss %s: batch skipped", state.step + 1, _terms(parts, loss))
                control.skip = True
            return
        if self.step is None:
            self.step = torch.zeros((), dtype=torch.long, device=loss.device)
        first = ~torch.isfinite(loss.detach()) & (self.step == 0)
        self.step = torch.where(first, state.step + 1, self.step)
        for k, v in {**parts, "loss": loss}.items():
            v = v.detach().float()
            self.parts[k] = torch.where(first, v, self.parts.get(k, torch.zeros_like(v)))

    def on_step_end(self, state: TrainState, control: Control) -> None:
        if control.log:
            self.check(state.step)

    def on_evaluate(self, state: TrainState, control: Control) -> None:
        self.check(state.step)

    def on_train_end(self, state: TrainState, control: Control) -> None:
        if state.skipped:
            log.warning("%d batch(es) with a non-finite loss were skipped (trainer.nonfinite=skip)", state.skipped)

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


class IntervalLog(Callback):
    """Loss terms summed on the device and read once per `log_every` steps (the loop's only host
    sync), averaged over ranks when data-parallel, then sent to the tracker, the progress bar and
    `run.log`."""

    def __init__(self, every: int, log_fn: Callable[[dict[str, float], int], None], bar: Any, parallel: bool) -> None:
        self.every, self.log_fn, self.bar, self.parallel = every, log_fn, bar, parallel

    def on_loss(self, state: TrainState, control: Control, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], group: int) -> None:
        if control.skip:
            return
        for k, v in {**parts, "loss": loss}.items():
            state.running[k] = state.running.get(k, 0) + v.detach().float() / group

    def on_step_end(self, state: TrainState, control: Control) -> None:
        step = state.step
        if control.log:
            n = (step - 1) % self.every + 1
            values = {k: float(v) / n for k, v in state.running.items()}
            state.values = mean_across_ranks(values) if self.parallel else values
            state.running = {}
            self.bar.set_postfix(loss=f"{state.values['loss']:.4f}")
            self.log_fn({f"train/{k}": v for k, v in state.values.items()} | {"train/lr": control.lr}, step)
            if is_main():  # run.log keeps every interval, for reading a run after the fact
                log.info("step %d/%d lr %.3g %s", step, control.total, control.lr, shown(state.values))
        self.bar.update(1)

    def on_train_end(self, state: TrainState, control: Control) -> None:
        self.bar.close()


class DevEval(Callback):
    """Evaluates, logs the dev scores and keeps the best weights by `main_metric`; puts them
    back when the loop ends."""

    def __init__(
        self,
        evaluate: Callable[[], dict[str, float]],
        main_metric: str,
        modules: Sequence[nn.Module],
        log_fn: Callable[[dict[str, float], int], None],
    ) -> None:
        self.evaluate, self.main_metric, self.modules, self.log_fn = evaluate, main_metric, modules, log_fn

    def on_evaluate(self, state: TrainState, control: Control) -> None:
        metrics = self.evaluate()
        metrics["step"] = state.step
        state.history.append(metrics)
        scores = {k: v for k, v in metrics.items() if k != "step"}
        self.log_fn({f"dev/{k}": v for k, v in scores.items()}, state.step)
        if is_main():
            log.info("step %d/%d dev %s", state.step, control.total, shown(scores))
        if metrics[self.main_metric] > state.best[0]:
            state.best = (metrics[self.main_metric], state.step, [copy.deepcopy(m.state_dict()) for m in self.modules])
        for module in self.modules:
            module.train()

    def on_train_end(self, state: TrainState, control: Control) -> None:
        weights = state.best[2]
        if weights is not None:
            for module, saved in zip(self.modules, weights, strict=True):
                module.load_state_dict(saved)


class Checkpointer(Callback):
    """Saves the full state to a `CheckpointStore` at each save point (every `checkpoint_every`
    steps, after each evaluation and when the loop ends, so a finished stage is not trained
    again), and restores it. Without a store it does nothing."""

    def __init__(self, store: Any | None, trained: Trained, guard: NonFiniteGuard) -> None:
        self.store, self.trained, self.guard = store, trained, guard
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

    def on_save(self, state: TrainState, control: Control) -> None:
        if self.store is None:
            return

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
