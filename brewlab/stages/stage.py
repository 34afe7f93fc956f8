"""Training stages. A `Stage` is "train a model with a named distiller on a prepared task, with
this objective, loop settings and seed, checkpointed here": masked-LM pretraining, teacher
fine-tuning, the labels-only baseline, general and task distillation are all Stages, so they
share one loop (`brewlab.train.loop`), one checkpoint format and one way of logging their start and end."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from brewlab.config.schema import (
    LoopSettings,
    RunSettings,
    StageTrainSettings,
    StudentOptions,
    TrainerSettings,
    settings,
)
from brewlab.core.cache import TEACHER_META, stable_hash
from brewlab.core.errors import BrewlabError
from brewlab.core.files import publish_dir, write_json_atomic
from brewlab.data.prepare import DeviceLoader, Prepared, train_loader
from brewlab.distill.distillers import DISTILLERS
from brewlab.distill.ensemble import TeacherEnsemble
from brewlab.distill.objective import build_projections, parse_objective
from brewlab.distill.schedulers import build_schedules
from brewlab.distill.teacher_outputs.canonical import canonical_logits
from brewlab.eval.evaluation import evaluate
from brewlab.models.adaptors import HFAdaptor
from brewlab.models.build import init_from_teacher_layers, load_pretrained, load_tokenizer, save_model, set_attention
from brewlab.models.kinds import STUDENT_KINDS
from brewlab.models.teacher import Teacher
from brewlab.train.checkpoint import CheckpointStore
from brewlab.train.runtime import Runtime, seed_everything

log = logging.getLogger("brewlab")


HARD_ONLY = {"hard": {"kind": "hard", "weight": 1.0}}  # the objective of every labels-only stage


@dataclass(frozen=True)
class Stage:
    """One training stage of a run, named in `run.log` (pretrain, teacher, labels_only, student)."""

    name: str
    distiller: str  # registered name; the student's stage may assemble one from per-task parts
    loss: Mapping[str, Any] = field(default_factory=lambda: HARD_ONLY)
    loop: TrainerSettings = field(default_factory=TrainerSettings)  # the loop settings of this stage
    seed: int = 0
    checkpoints: Any | None = None  # a CheckpointStore, or None (not resumable)

    def build(
        self, cfg: Mapping[str, Any], model: Any, teachers: Sequence[Any] | None, prep: Prepared, tracker: Any, inputs_repeat: bool = True
    ) -> Any:
        """This stage's distiller over `model` (and `teachers`)."""
        return build_distiller(self.distiller, cfg, model, teachers, prep, self.loss, self.loop, tracker, inputs_repeat)

    def run(
        self,
        distiller: Any,
        prep: Prepared,
        rt: Runtime,
        batches: Any | None = None,
        parallel: bool = False,
        dev: tuple[Callable[[], dict[str, float]], str] | None = None,
    ) -> Any:
        """Fit `distiller` through the shared loop (resuming from this stage's checkpoints)."""
        where = f", checkpoints in {self.checkpoints.directory}" if self.checkpoints is not None else ""
        log.info("stage %s: distiller=%s loss=%s seed=%d%s", self.name, self.distiller, "+".join(sorted(self.loss)), self.seed, where)
        result = train_loop(distiller, prep, self.loop, self.seed, rt, batches, self.checkpoints, parallel, dev)
        log.info("stage %s: done, %d steps in %.1f s, best dev %.4g at step %d", self.name, result.steps, result.train_seconds, result.best_metric, result.best_step)
        return result


def build_distiller(
    name: str,
    cfg: Mapping[str, Any],
    student_model: Any,
    teachers: Sequence[Any] | None,
    prep: Prepared,
    loss_cfg: Mapping[str, Any],
    trainer: TrainerSettings,
    tracker: Any,
    inputs_repeat: bool = True,
    store: Any | None = None,
    features: Sequence[Mapping[str, Any]] | None = None,
):
    """The named distiller over adaptors of the models; a many-teacher distiller gets its
    teachers as one `TeacherEnsemble` (combined as `distiller.combine`/`weights` say).
    `teachers` are `brewlab.models.teacher.Teacher`s (or models). With `store` (a
    `teacher_outputs.plan.StorePlan`), each teacher's outputs that the objective reads come from the
    teacher store. `inputs_repeat=False` (online augmentation: new inputs every epoch) keeps no
    teacher logits. With the training `features` and no store, the teacher's logits kept in
    memory are computed before training in the store's canonical batches, so they are the same
    bits as stored ones."""
    from hydra.utils import instantiate

    distiller_cls = DISTILLERS.get(name, "distiller")
    student = HFAdaptor(student_model, prep.kind)
    members = [Teacher.of(t) for t in teachers or ()] if distiller_cls.uses_teacher else []

    def combined(views: list[Any]) -> Any:
        if not distiller_cls.many_teachers:
            return views[0]
        return TeacherEnsemble(views, cfg["distiller"]["combine"], cfg["distiller"].get("weights"))

    views = [t.adaptor(prep.kind) for t in members]
    teacher = combined(views) if members else None
    objective = parse_objective(loss_cfg, teacher, student)
    log.info("objective (distiller=%s): %s", name, objective)
    if members and store is not None and (objective.logit_terms or objective.matches):
        teacher = combined([store.attach(view, t, objective.matches) for view, t in zip(views, members, strict=True)])
    # with the data read, every task's class count is known (an MLM's vocabulary too): the
    # temperature's bound is checked again before any KD step, where a temperature is used
    task_cfg = cfg.get("task") or {}  # harnesses may build a distiller from a partial config
    classes = prep.kind.logit_classes(task_cfg, prep.label_names, len(prep.tokenizer)) if teacher else None
    projections = build_projections(objective.matches, teacher, student) if teacher else None
    pad_id, eval_bs = prep.tokenizer.pad_token_id, trainer.eval_batch_size
    canonical = partial(canonical_logits, teacher, features, eval_bs, pad_id) if features is not None else None
    return distiller_cls(
        student=student,
        objective=objective,
        schedules=build_schedules(cfg["scheduler"], classes, f"task {task_cfg.get('name', '?')}"),
        trainer=trainer,
        make_optimizer=instantiate(cfg["optim"], _partial_=True),
        kind=prep.kind,
        teacher=teacher,
        projections=projections,
        log=tracker.log,
        inputs_repeat=inputs_repeat,
        canonical=canonical,
    )


def train_loop(
    distiller: Any,
    prep: Prepared,
    trainer: TrainerSettings,
    seed: int,
    rt: Runtime,
    batches: Any | None = None,
    checkpoints: Any | None = None,
    parallel: bool = False,
    dev: tuple[Callable[[], dict[str, float]], str] | None = None,
):
    """Fit on `batches` (CPU batches with a length), by default the task's training split
    (split across ranks when `parallel`: the student's stage under torchrun), keeping the best
    student by `dev` (an evaluation and its main metric), by default the task's validation split."""
    loader = batches
    if loader is None:
        shard = rt.shard if parallel else (0, 1)
        loader = train_loader(prep.features["train"], trainer, prep.tokenizer.pad_token_id, seed, shard)
    if dev is None:
        eval_bs = trainer.eval_batch_size
        dev = (lambda: evaluate(distiller.student, prep, "validation", eval_bs, rt.device)), prep.kind.main_metric
    return distiller.fit(
        DeviceLoader(loader, rt.device),
        evaluate=dev[0],
        main_metric=dev[1],
        progress=rt.progress,
        checkpoints=checkpoints,
        parallel=parallel,
    )


def attention_of(cfg: Mapping[str, Any]) -> str:
    return "eager" if any(t.get("feature") == "attention" for t in cfg["loss"].values()) else "sdpa"


def sdpa_again(attn: str, models: Sequence[Any]) -> None:
    """Attention maps were only needed by the losses: measure and save with sdpa."""
    if attn != "sdpa":
        for model in models:
            set_attention(model, "sdpa")


def build_student(cfg: Mapping[str, Any], prep: Prepared, teacher: Any, attn: str, device: torch.device):
    """A random student of `student.arch`, or one initialised from a saved model
    (`student.init_from`, e.g. a general-distilled student) or from teacher layers."""
    s_cfg = cfg["student"]
    num_labels = prep.kind.num_labels(prep.label_names)
    vocab = s_cfg.get("vocab_size")
    if vocab is not None and int(vocab) != len(prep.tokenizer):
        raise BrewlabError(
            f"student.vocab_size={vocab} does not match the task's tokenizer ({len(prep.tokenizer)} tokens); "
            "leave it null to take the tokenizer's size"
        )
    init_from = s_cfg.get("init_from")
    if init_from:
        model = load_pretrained(init_from, prep.kind, num_labels, attn, key="student.init_from", new_head=True)
    else:
        build = STUDENT_KINDS.props(settings(s_cfg, StudentOptions).kind, "student.kind").build
        model = build(s_cfg["arch"], prep.tokenizer, prep.kind, num_labels, attn)
    if s_cfg.get("init_from_teacher_layers"):
        init_from_teacher_layers(model, Teacher.of(teacher).model, [int(i) for i in s_cfg["init_from_teacher_layers"]])
    return model.to(device)


def check_student_init(cfg: Mapping[str, Any], prep: Prepared) -> None:
    """A student initialised from a saved model must share the run's vocabulary; checked
    before any teacher is trained."""
    init_from = cfg["student"].get("init_from")
    if init_from and stable_hash(load_tokenizer(init_from, "student.init_from").get_vocab()) != prep.tokenizer_id:
        raise BrewlabError(
            f"student.init_from={init_from!r} was trained with another vocabulary than this run's tokenizer; "
            "use the teacher it was distilled from (e.g. the same teacher=pretrained_scratch settings)"
        )


def labels_only_student(
    cfg: Mapping[str, Any],
    run: RunSettings,
    prep: Prepared,
    teacher: Any,
    attn: str,
    rt: Runtime,
    checkpoints: Any | None = None,
) -> tuple[Any, Any]:
    """The same student (architecture, seed, data order, trainer settings) trained on labels
    only: the row that distillation has to beat, made in the same run (`baselines.labels_only`),
    checkpointed into `checkpoints` like the student."""
    seed_everything(run.seed)
    model = build_student(cfg, prep, teacher, attn, rt.device)
    stage = Stage("labels_only", "trainer", HARD_ONLY, run.trainer, run.seed, checkpoints)
    distiller = stage.build(cfg, model, None, prep, PrefixedTracker(rt.tracker, "labels_only/"))
    return model, stage.run(distiller, prep, rt, parallel=rt.data_parallel)


class PrefixedTracker:
    """Sends teacher-training metrics to the run's tracker under their own prefix."""

    def __init__(self, tracker: Any, prefix: str) -> None:
        self.tracker, self.prefix = tracker, prefix

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.tracker.log({self.prefix + k: v for k, v in metrics.items()}, step)


def stage_optim(optim_cfg: Mapping[str, Any], train: StageTrainSettings) -> dict[str, Any]:
    """The optimizer a cached stage (teacher, pretraining) trains with: the run's `optim` group
    at the stage's own `train.lr` when it has one. It is part of the stage's cache key: a teacher
    trained with other optimizer settings is another teacher."""
    return {**optim_cfg, "lr": optim_cfg["lr"] if train.lr is None else train.lr}


def train_and_publish(
    name: str,
    cfg: Mapping[str, Any],
    run: RunSettings,
    model: Any,
    prep: Prepared,
    train: StageTrainSettings,
    directory: Path,
    key: str,
    rt: Runtime,
) -> None:
    """Train `model` on the task's labels as stage `name` (pretrain, teacher, teacher<i>) and
    publish it (with its tokenizer) to `directory`, written aside and renamed into place so an
    interrupted run never leaves a half cache.

    The stage checkpoints like the student's (every `trainer.checkpoint_every` steps, after
    each evaluation and at its end) into the cache, keyed like the entry, so a killed run, or any later run
    that needs the same entry, continues it instead of starting over."""
    stage_cfg = {**cfg, "optim": stage_optim(cfg["optim"], train)}
    loop = {f.name: getattr(train, f.name) for f in dataclasses.fields(LoopSettings)}
    # no user callbacks: the cached entry's key does not hold `trainer.callbacks`
    loop_settings = TrainerSettings(**loop, checkpoint_every=run.trainer.checkpoint_every, callbacks=[])
    store = CheckpointStore(rt.cache.checkpoints_of(directory), stable_hash([key, prep.data_id]), keep=run.trainer.checkpoints_kept)
    if run.resume is False:
        store.clear()
    stage = Stage(name, "trainer", HARD_ONLY, loop_settings, train.seed, store)
    result = stage.run(stage.build(stage_cfg, model, None, prep, rt.tracker), prep, rt)
    build = rt.cache.build_dir(directory)
    save_model(model, prep.tokenizer, build)
    write_json_atomic(
        build / TEACHER_META,
        {
            "key": key,
            "task": prep.sizes,
            "best_dev": result.best_metric,
            "dev": result.history[-1] if result.history else {},
            "train_seconds": result.train_seconds,
            "steps": result.steps,
        },
    )
    publish_dir(build, directory)
    shutil.rmtree(store.directory, ignore_errors=True)
    log.info("cached %s (best dev %s=%.4g, %d steps)", directory, prep.kind.main_metric, result.best_metric, result.steps)
