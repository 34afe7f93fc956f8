"""Distillers: one training loop, different objectives (`brewlab.distill.objective`), chosen by name
from a registry.

`trainer` learns from labels (teachers and no-KD baselines), `basic` adds logit KD, `general`
adds intermediate feature matches. All share `Distiller.fit`, so they log, evaluate, keep the
best student and save in the same way. Models are reached only through adaptors.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from brewlab.config.schema import TrainerSettings
from brewlab.core.registry import Registry
from brewlab.data.batching import TaskMixture
from brewlab.distill.losses import MATCH_LOSSES, probability_shift
from brewlab.distill.objective import MatchTerm, Objective, layers_of
from brewlab.distill.schedulers import Schedules
from brewlab.distill.teacher_outputs.choice import outputs_for
from brewlab.distill.teacher_outputs.memory import CanonicalLogits
from brewlab.models.adaptors import ModelView
from brewlab.train.callbacks import Checkpointer, DevEval, IntervalLog, NonFiniteGuard, user_callbacks
from brewlab.train.loop import FitResult, precision, progress_bar, run_loop, total_steps
from brewlab.train.state import Trained

DISTILLERS: Registry = Registry("distiller.name")
log = logging.getLogger("brewlab")

# ----------------------------------------------------------------------------- distillers

MakeOptimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LogFn = Callable[[dict[str, float], int], None]  # (metrics, step) -> tracker


class Distiller:
    """Shared loop: batches -> `compute_loss` -> step; evaluates, logs and keeps the best."""

    uses_teacher = True
    allows_matches = True
    many_teachers = False  # True: learns from `distiller.teachers` through one TeacherEnsemble

    # -- what the distiller needs from a run: the orchestrator asks these, never a name ----------

    @classmethod
    def tasks_of(cls, d_cfg: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The tasks this distiller trains on, by name, or None for the run's own `task`."""
        return None

    @classmethod
    def part_name(cls, name: str, d_cfg: Mapping[str, Any]) -> str:
        """The registered distiller that trains each task's student (this one, by default)."""
        return name

    @classmethod
    def assemble(
        cls, parts: Mapping[str, Distiller], trainer: TrainerSettings, make_optimizer: MakeOptimizer, log: LogFn | None = None
    ) -> Distiller:
        """The distiller that trains the run from its per-task parts: the one part itself."""
        (part,) = parts.values()
        return part

    @classmethod
    def batches(cls, loaders: Mapping[str, Any], sizes: Mapping[str, int], d_cfg: Mapping[str, Any], seed: int) -> Any:
        """The training batches from each task's loader: the one loader itself."""
        (loader,) = loaders.values()
        return loader

    def __init__(
        self,
        student: Any,
        objective: Objective,
        schedules: Schedules,
        trainer: TrainerSettings,
        make_optimizer: MakeOptimizer,
        kind: Any,
        teacher: Any | None = None,
        projections: nn.ModuleDict | None = None,
        log: LogFn | None = None,
        inputs_repeat: bool = True,
        canonical: CanonicalLogits | None = None,
    ) -> None:
        """`inputs_repeat=False` (online augmentation: new inputs every epoch) keeps no teacher
        logits; `canonical` gives the teacher's logits on the training set in the store's batches,
        which kept logits are filled from before training."""
        self.student = student  # adaptor
        self.teacher = teacher if self.uses_teacher else None  # adaptor or None
        self.objective = objective if self.uses_teacher else Objective([], 1.0, [])
        self.schedules = schedules
        self.trainer = trainer
        self.kind = kind
        self.projections = projections if projections is not None else nn.ModuleDict()
        self.params = [p for p in student.model.parameters() if p.requires_grad] + list(self.projections.parameters())
        self.optimizer = make_optimizer(self.params)
        self.log = log or (lambda metrics, step: None)
        self.outputs = outputs_for(self.teacher, objective, trainer, kind, inputs_repeat, canonical)

    def prepare_teacher(self) -> None:
        """Ready the teacher's outputs before the first step (after a resume restored them)."""
        if self.outputs is not None:
            self.outputs.prepare()

    # -- objective -----------------------------------------------------------------------

    def compute_loss(
        self, batch: Mapping[str, torch.Tensor], step: int, total: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        obj = self.objective
        wants_teacher = self.teacher is not None and bool(obj.logit_terms or obj.matches)
        # The teacher runs first: its no-grad activations are freed before the student's graph is
        # built, so the two never sit in memory together (lower peak RSS and fewer page faults per step;
        # benchmarks/bench.py measures it).
        t_out = self.outputs(batch, hidden=obj.needs_hidden, attention=obj.needs_attention) if wants_teacher else None
        s_view = self.student(batch, hidden=obj.needs_hidden, attention=obj.needs_attention)
        parts: dict[str, torch.Tensor] = {}
        total_loss = s_view.logits.new_zeros(())
        hard_w = obj.hard_weight * self.schedules.hard_weight(step, total)
        if hard_w > 0 and s_view.labels is not None:
            parts["hard"] = self.kind.supervised_loss(s_view.logits, s_view.labels)
            total_loss = total_loss + hard_w * parts["hard"]
        if not wants_teacher:
            return total_loss, parts  # labels only: no teacher forward at all
        t_logits = t_out.logits(s_view.logits)
        if self.schedules.probability_shift and s_view.labels is not None:
            t_logits = probability_shift(t_logits, s_view.labels)
        kd_w = self.schedules.kd_weight(step, total)
        if obj.logit_terms and kd_w > 0:
            temperature = self.schedules.temperature(
                s_view.logits, t_logits, mask=s_view.logits_mask, class_mask=s_view.class_mask
            )
            for term in obj.logit_terms:
                value = term.fn(
                    s_view.logits, t_logits, temperature, mask=s_view.logits_mask, t2_scaling=term.t2_scaling
                )
                parts[term.name] = value
                total_loss = total_loss + kd_w * term.weight * value
        mask = padding_mask(s_view.mask) if obj.matches else None
        tokens = ValidTokens(mask) if mask is not None else None
        for term in obj.matches:
            value = self._match(term, s_view, t_out.view, mask, tokens)
            parts[term.name] = value
            total_loss = total_loss + term.weight * value
        return total_loss, parts

    def _match(
        self,
        term: MatchTerm,
        s_view: ModelView,
        t_view: ModelView | None,
        mask: torch.Tensor | None,
        tokens: ValidTokens | None = None,
    ) -> torch.Tensor:
        s_feats = getattr(s_view, term.feature)
        t_feats = getattr(t_view, term.feature)
        fn = MATCH_LOSSES.get(term.fn_name)
        values = []
        if tokens is not None and MATCH_LOSSES.props(term.fn_name).per_token:
            # padding is never projected nor compared: the loss sees the valid tokens as one row
            for t_layer, s_layer in term.pairs:
                s_part = self._project(term, s_layer, tokens.of(s_feats[s_layer]))
                values.append(fn(s_part[None], tokens.of_teacher(t_feats, t_layer)[None]))
            return torch.stack(values).mean()
        for t_layer, s_layer in term.pairs:
            s_parts = [self._project(term, layer, s_feats[layer]) for layer in layers_of(s_layer)]
            t_parts = [t_feats[layer] for layer in layers_of(t_layer)]
            if isinstance(s_layer, tuple):
                values.append(fn(tuple(s_parts), tuple(t_parts), mask=mask))
            else:
                values.append(fn(s_parts[0], t_parts[0], mask=mask))
        return torch.stack(values).mean()

    def _project(self, term: MatchTerm, layer: int, feature: torch.Tensor) -> torch.Tensor:
        if term.proj is None:
            return feature
        return self.projections[f"{term.name}_{layer}"](feature)

    # -- loop ------------------------------------------------------------------------------

    def modules(self) -> list[nn.Module]:
        return [self.student.model, self.projections]

    def caches(self) -> list[Any | None]:
        """The teacher outputs kept in memory, saved in checkpoints so a resumed run reads them."""
        return [self.outputs.kept() if self.outputs is not None else None]

    def stores(self) -> list[str]:
        """The teacher-store entries this distiller reads, named in its checkpoints."""
        return self.outputs.entries() if self.outputs is not None else []

    def fit(
        self,
        train_loader: Any,
        evaluate: Callable[[], dict[str, float]],
        main_metric: str,
        progress: bool = True,
        checkpoints: Any | None = None,
        parallel: bool = False,
    ) -> FitResult:
        """Train for `epochs` (or `max_steps` optimizer steps), evaluating every `eval_every` steps
        and at each epoch end; the best student (by `main_metric`) is restored at the end.

        `grad_accum` batches make one optimizer step; `precision` bf16/fp16 runs teacher and
        student forwards under autocast (fp16 with a gradient scaler). With `checkpoints` (a
        `CheckpointStore`), the full training state is saved every `checkpoint_every` steps, after
        each evaluation and at the end, and a run finding one continues from it exactly. A
        non-finite loss stops the run before anything is saved (`nonfinite: stop`) or its batch is
        skipped (`nonfinite: skip`). `parallel`: `train_loader` is this rank's share of each global
        batch (torchrun); gradients and logged losses are averaged over ranks. The user's
        callbacks named in `trainer.callbacks` run after the built-in ones."""
        trainer = self.trainer
        total = total_steps(trainer, len(train_loader))
        device = next(iter(self.params)).device if self.params else torch.device("cpu")
        autocast, scaler = precision(trainer.precision, device)
        scheduler = self.schedules.lr_scheduler(self.optimizer, max(total, 1))
        trained = Trained(self.modules(), self.optimizer, scheduler, scaler, self.caches(), self.params, self.stores())
        guard = NonFiniteGuard(trainer.nonfinite)
        checkpointer = Checkpointer(checkpoints, trained, guard)
        restored = checkpointer.restore()
        self.prepare_teacher()
        bar = progress_bar(total, enabled=progress, initial=restored[0].step)
        callbacks = [
            guard,
            IntervalLog(trainer.log_every, self.log, bar, parallel),
            DevEval(evaluate, main_metric, trained.modules, self.log),
            checkpointer,
            *user_callbacks(trainer.callbacks),
        ]
        state = run_loop(self.compute_loss, trained, train_loader, trainer, total, callbacks, restored, autocast, parallel)
        seconds = state.train_seconds + time.perf_counter() - checkpointer.started
        for module in trained.modules:
            module.eval()
        metric, best_step, _ = state.best  # the best weights are back in the modules (DevEval)
        return FitResult(metric, best_step, state.step, seconds, state.history, state.values)


class ValidTokens:
    """A batch's valid (unpadded) positions, for the match losses that read each token alone:
    features become (N, D) rows of the valid tokens, example by example in order, which is the
    token order of the teacher store's rows."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    @functools.cached_property
    def index(self) -> torch.Tensor:
        """Found on first use: on an accelerator `nonzero` is a host sync, which an objective
        without per-token terms never pays."""
        return self.mask.reshape(-1).nonzero().squeeze(1)

    def of(self, feature: torch.Tensor) -> torch.Tensor:
        """The valid rows of a (B, L, D) feature, as (N, D)."""
        return feature.reshape(-1, feature.shape[-1]).index_select(0, self.index)

    def of_teacher(self, features: Any, layer: int) -> torch.Tensor:
        """The valid rows of the teacher's feature `layer`; a stored teacher reads them packed."""
        packed = getattr(features, "tokens", None)
        return packed(layer) if packed is not None else self.of(features[layer])


def padding_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """The attention mask, or None when nothing in the batch is padded so the match losses skip
    their selects. Only CPU batches are checked: on an accelerator the check is a host sync."""
    if mask.device.type == "cpu" and bool(mask.all()):
        return None
    return mask


@DISTILLERS.register("trainer")
class Trainer(Distiller):
    """Supervised training on gold labels (weight 1, whatever `loss` says); teachers are
    trained with it too."""

    uses_teacher = False
    allows_matches = False


@DISTILLERS.register("basic")
class BasicDistiller(Distiller):
    """One teacher: logit KD (+ optional hard-label loss), no intermediate matches."""

    allows_matches = False


@DISTILLERS.register("general")
class GeneralDistiller(Distiller):
    """Basic KD plus intermediate feature matches, with projections where sizes differ."""


@DISTILLERS.register("multi_teacher")
class MultiTeacherDistiller(Distiller):
    """Logit KD from several teachers of one task (`distiller.teachers`), whose logits the
    pipeline combines into one `TeacherEnsemble` adaptor; the shared loop and teacher-output
    cache then work unchanged. Features of different teachers are not matched."""

    allows_matches = False
    many_teachers = True


@DISTILLERS.register("multi_task")
class MultiTaskDistiller(Distiller):
    """Several tasks at once: one single-task distiller per task (its own teacher or teacher
    ensemble, objective, matches and projections), whose students share one encoder. Each batch
    names its task and goes to that task's distiller; one optimizer steps every parameter."""

    @classmethod
    def tasks_of(cls, d_cfg: Mapping[str, Any]) -> Mapping[str, Any] | None:
        tasks = d_cfg.get("tasks")
        return tasks if isinstance(tasks, Mapping) else {}

    @classmethod
    def part_name(cls, name: str, d_cfg: Mapping[str, Any]) -> str:
        return "multi_teacher" if d_cfg.get("teachers") else "general"

    @classmethod
    def assemble(
        cls, parts: Mapping[str, Distiller], trainer: TrainerSettings, make_optimizer: MakeOptimizer, log: LogFn | None = None
    ) -> Distiller:
        return cls(parts, trainer, make_optimizer, log)

    @classmethod
    def batches(cls, loaders: Mapping[str, Any], sizes: Mapping[str, int], d_cfg: Mapping[str, Any], seed: int) -> Any:
        return TaskMixture(loaders, sizes, float(d_cfg["tau"]), seed)

    def __init__(
        self,
        parts: Mapping[str, Distiller],
        trainer: TrainerSettings,
        make_optimizer: MakeOptimizer,
        log: LogFn | None = None,
    ) -> None:
        self.parts = dict(parts)
        first = next(iter(self.parts.values()))
        self.student, self.teacher, self.kind = first.student, None, first.kind
        self.schedules, self.trainer, self.outputs = first.schedules, trainer, None
        self.students = nn.ModuleDict({name: part.student.model for name, part in self.parts.items()})
        self.projections = nn.ModuleDict({name: part.projections for name, part in self.parts.items()})
        # Module.parameters() yields the shared encoder once
        self.params = [p for p in nn.ModuleList([self.students, self.projections]).parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params)
        self.log = log or (lambda metrics, step: None)

    def compute_loss(
        self, batch: Mapping[str, Any], step: int, total: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.parts[batch["task"]].compute_loss(batch, step, total)

    def modules(self) -> list[nn.Module]:
        return [self.students, self.projections]

    def caches(self) -> list[Any | None]:
        return [kept for part in self.parts.values() for kept in part.caches()]

    def prepare_teacher(self) -> None:
        for part in self.parts.values():
            part.prepare_teacher()

    def stores(self) -> list[str]:
        return [name for part in self.parts.values() for name in part.stores()]
