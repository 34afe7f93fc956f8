"""The whole run: task -> tokenizer -> teacher -> student -> distil -> evaluate -> save.

With `run.py`, this is the only module that knows every piece; each piece is reached through its
registry, so new tasks, distillers, losses and trackers plug in without edits here.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.config.identity import run_fingerprint
from brewlab.config.schema import RunSettings
from brewlab.core import layout
from brewlab.core.cache import stable_hash
from brewlab.core.files import publish_dir, write_json_atomic
from brewlab.core.parallel import common_step, main_first
from brewlab.data.prepare import Prepared, prepare_task, train_loader
from brewlab.data.tasks import kind_of
from brewlab.distill.distillers import DISTILLERS
from brewlab.distill.teacher_outputs.plan import StorePlan
from brewlab.eval.baselines import linear_baseline
from brewlab.eval.evaluation import evaluate, measure, paired_difference, teacher_metrics
from brewlab.models.adaptors import HFAdaptor
from brewlab.models.build import count_parameters, save_model
from brewlab.stages.augmented import Augmented, augmented_training
from brewlab.stages.stage import (
    Stage,
    attention_of,
    build_distiller,
    build_student,
    check_student_init,
    labels_only_student,
    sdpa_again,
)
from brewlab.stages.teachers import get_teachers, teacher_base
from brewlab.train.checkpoint import CheckpointStore
from brewlab.train.runtime import Runtime, seed_everything

log = logging.getLogger("brewlab")


# ----------------------------------------------------------------------------- resuming


def checkpoint_store(
    cfg: Mapping[str, Any], settings: RunSettings, run_dir: Path, preps: Sequence[Prepared], rt: Runtime, stage: str | None = None
) -> Any:
    """The checkpoints of the run's student (or of another of its stages, e.g. `labels_only`,
    in a subfolder), tied to the config and to the encoded data (`preps`), whose cached teacher
    logits they hold. Under torchrun each rank keeps its own (its random generators and teacher
    logits are its own) in rank 0's run directory, and the ranks resume from a step they all hold."""
    directory = run_dir / layout.CHECKPOINTS / (stage or "")
    fingerprint = stable_hash([run_fingerprint(cfg), *(p.data_id for p in preps), *([stage] if stage else [])])
    keep, agree = settings.trainer.checkpoints_kept, None
    if rt.data_parallel:  # a kill between two ranks' saves of one step leaves the step before on both
        directory, keep, agree = directory / f"rank-{rt.rank}", max(keep, 2), common_step
    store = CheckpointStore(directory, fingerprint, keep=keep, agree=agree)
    if settings.resume is False:
        store.clear()  # resume=false: this directory starts over
    return store


def finished_run(cfg: Mapping[str, Any], settings: RunSettings, run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of this very run when it already finished here (a re-run sweep skips it)."""
    path = run_dir / layout.METRICS
    if settings.resume is False or not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): running again", path, exc)
        return None
    return metrics if metrics.get("fingerprint") == run_fingerprint(cfg) else None


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Tasks:
    """The tasks a run trains, as its distiller names them: the run's own `task`, or several
    that share one student encoder (`named`)."""

    name: str  # the distiller
    d_cls: Any
    named: Mapping[str, Any] | None  # None: the run's own task
    order: list[str]
    configs: dict[str, Mapping[str, Any]]  # the run's config with each task in place of `task`

    @property
    def single(self) -> bool:
        return self.named is None

    @property
    def first(self) -> str:
        return self.order[0]


@dataclass
class Inputs:
    """What the student's stage starts from, made under `main_first` (rank 0 fills the caches)."""

    base: str | None  # the teachers' base model (and the tokenizer's source)
    preps: dict[str, Prepared]
    augmented: Augmented | None
    teachers: dict[str, list[Any]]


@dataclass
class Students:
    models: dict[str, Any]
    parts: dict[str, Any]  # each task's distiller
    distiller: Any  # the one that trains them all


def run(cfg: Mapping[str, Any], settings: RunSettings, run_dir: Path, rt: Runtime) -> dict[str, Any]:
    """Execute one composed run; returns the metrics written to metrics.json.

    The distiller says which tasks it trains (the run's `task`, or several that share one
    student encoder), which distiller trains each task's student, how those parts make one
    distiller and how the tasks' batches make one stream; this function asks, and names none."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar shows the training loss; no per-file bars
    if cfg["teacher"].get("notice"):  # e.g. a licence restriction: once in every run's log
        log.warning("teacher %s: %s", cfg["teacher"].get("name_or_path") or cfg["teacher"].get("kind"), cfg["teacher"]["notice"])
    tasks = _tasks(cfg)
    attn = attention_of(cfg)
    inputs = _inputs(cfg, settings, tasks, attn, rt)
    seed_everything(settings.seed)
    students = _students(cfg, settings, tasks, inputs, attn, rt)
    preps, eval_bs = inputs.preps, settings.trainer.eval_batch_size
    batches = _batches(cfg, settings, tasks, inputs, rt)
    dev = None if tasks.single else (_mean_dev_score(students.parts, preps, eval_bs, rt.device), "score")  # None: the task's own
    checkpoints = checkpoint_store(cfg, settings, run_dir, list(preps.values()), rt)
    stage = Stage("student", tasks.name, cfg["loss"], settings.trainer, settings.seed, checkpoints)
    result = stage.run(students.distiller, preps[tasks.first], rt, batches, rt.data_parallel, dev)
    plain = None
    if cfg["baselines"]["labels_only"]:  # every rank trains it, as it trains the student
        plain_store = checkpoint_store(cfg, settings, run_dir, list(preps.values()), rt, "labels_only")
        plain = labels_only_student(cfg, settings, preps[tasks.first], inputs.teachers[tasks.first][0], attn, rt, plain_store)
    if rt.rank != 0:  # the other data-parallel ranks hold the same student: rank 0 measures and saves
        return {}
    sdpa_again(attn, list(students.models.values()))
    if attn != "sdpa":
        for t in (t for n in tasks.order for t in inputs.teachers[n]):
            t.use_attention("sdpa")
    log.info("evaluating the teacher and the student on validation and test")
    metrics = _metrics(cfg, settings, tasks, inputs, students, plain, attn, run_dir, rt.device)
    metrics["student"].update(
        train_seconds=result.train_seconds, steps=result.steps, best_step=result.best_step, final_losses=result.final_losses,
        labels_only=_labels_only(students.parts),
    )
    every = [t for n in tasks.order for t in inputs.teachers[n]]
    metrics["teacher_store"] = {"entries": students.distiller.stores(), "teacher_loaded": any(t.loaded for t in every)}
    if students.distiller.stores() and not metrics["teacher_store"]["teacher_loaded"]:
        log.info("teacher: never loaded in this run; its outputs and scores came from the teacher store")
    _save(tasks, inputs, students, run_dir)
    write_json_atomic(run_dir / layout.METRICS, metrics)
    return metrics


def _tasks(cfg: Mapping[str, Any]) -> Tasks:
    name, d_cfg = cfg["distiller"]["name"], cfg["distiller"]
    d_cls = DISTILLERS.get(name)
    named = d_cls.tasks_of(d_cfg)
    # several tasks: pooled (sentence) heads first, whose encoder carries the pooler the others ignore
    order = [cfg["task"]["name"]] if named is None else sorted(named, key=lambda n: not kind_of(named[n]["kind"]).pooled_head)
    configs = {n: cfg if named is None else {**cfg, "task": named[n]} for n in order}
    return Tasks(name, d_cls, named, order, configs)


def _inputs(cfg: Mapping[str, Any], settings: RunSettings, tasks: Tasks, attn: str, rt: Runtime) -> Inputs:
    """The tasks' data, the augmented data and the teachers; every user error is raised before
    any teacher work."""
    with main_first():  # under torchrun, rank 0 fills the caches the other ranks then read
        base = teacher_base(cfg, settings, rt)
        vocab = None if tasks.single else [tasks.configs[n]["task"] for n in tasks.order]  # shared by the tasks' students
        preps = {n: prepare_task(tasks.configs[n], rt.cache, tokenizer_from=base, vocab_tasks=vocab) for n in tasks.order}
        for n in tasks.order:
            check_student_init(tasks.configs[n], preps[n])
        augmented = augmented_training(cfg, settings, preps[tasks.first], rt) if tasks.single else None
        teachers = {n: get_teachers(tasks.configs[n], settings, preps[n], base, attn, rt) for n in tasks.order}
    return Inputs(base, preps, augmented, teachers)


def _students(cfg: Mapping[str, Any], settings: RunSettings, tasks: Tasks, inputs: Inputs, attn: str, rt: Runtime) -> Students:
    """Each task's student and distiller, and the distiller that trains them together."""
    from hydra.utils import instantiate

    trainer, augmented = settings.trainer, inputs.augmented
    repeat = augmented is None or augmented.features is not None  # online: new inputs every epoch
    models: dict[str, Any] = {}
    parts: dict[str, Any] = {}
    part_name = tasks.d_cls.part_name(tasks.name, cfg["distiller"])
    for n in tasks.order:
        prep, teachers = inputs.preps[n], inputs.teachers[n]
        model = build_student(tasks.configs[n], prep, teachers[0], attn, rt.device)
        if models:  # the tasks' students share the first one's encoder
            first = next(iter(models.values()))
            setattr(model, model.base_model_prefix, getattr(first, first.base_model_prefix))
        models[n] = model
        # a compiled student trains faster; it shares its parameters with `model`, which is saved
        trained = torch.compile(model) if trainer.compile else model
        features = prep.features["train"] if augmented is None else augmented.features
        store = StorePlan.of(trainer, rt.cache, n, prep, features)
        parts[n] = build_distiller(
            part_name, tasks.configs[n], trained, teachers, prep, cfg["loss"], trainer, rt.tracker, repeat, store, features
        )
    distiller = tasks.d_cls.assemble(parts, trainer, instantiate(cfg["optim"], _partial_=True), rt.tracker.log)
    return Students(models, parts, distiller)


def _batches(cfg: Mapping[str, Any], settings: RunSettings, tasks: Tasks, inputs: Inputs, rt: Runtime) -> Any:
    """The student's training batches: the augmented ones, or each task's training split, as
    one stream."""
    preps = inputs.preps
    loaders = {
        n: inputs.augmented.batches
        if inputs.augmented
        else train_loader(preps[n].features["train"], settings.trainer, preps[n].tokenizer.pad_token_id, settings.seed, rt.shard)
        for n in tasks.order
    }
    sizes = {n: len(preps[n].features["train"]) for n in tasks.order}
    return tasks.d_cls.batches(loaders, sizes, cfg["distiller"], settings.seed)


def _metrics(
    cfg: Mapping[str, Any],
    settings: RunSettings,
    tasks: Tasks,
    inputs: Inputs,
    students: Students,
    plain: tuple[Any, Any] | None,
    attn: str,
    run_dir: Path,
    device: torch.device,
) -> dict[str, Any]:
    """The teachers' and the students' scores on validation and test, per task when several."""
    preps, eval_bs, first = inputs.preps, settings.trainer.eval_batch_size, tasks.first
    metrics: dict[str, Any] = {
        "task": {},
        "distiller": tasks.name,
        "loss": sorted(cfg["loss"]),
        "seed": settings.seed,
        "study": cfg.get("study"),
        "fingerprint": run_fingerprint(cfg),
    }
    entries = {}
    for n in tasks.order:
        predictions = layout.predictions(run_dir, None if tasks.single else n)
        entries[n] = _task_entry(
            preps[n], inputs.teachers[n], students.parts[n], students.models[n], inputs.base, eval_bs, device, predictions
        )
    if tasks.single:
        entry = entries[first]
        metrics["task"] = {"name": cfg["task"]["name"], **{k: entry.pop(k) for k in ("main_metric", "sizes")}, **entry.pop("describe")}
        if inputs.augmented is not None:
            metrics["augmentation"] = inputs.augmented.info
        metrics.update(entry)
        if plain is not None:
            metrics["labels_only"] = _labels_only_entry(plain, preps[first], attn, eval_bs, device, layout.predictions(run_dir))
        if cfg["baselines"]["linear"]:
            metrics["linear_baseline"] = linear_baseline(cfg["task"], preps[first].rows, preps[first].label_names)
    else:
        metrics["task"] = {"name": "+".join(tasks.order), "main_metric": "score", "tasks": tasks.order, "tau": cfg["distiller"]["tau"]}
        for entry in entries.values():
            entry.update(entry.pop("describe"))
        metrics.update(tasks=entries, **_mean_rows(entries, tasks.order, students.models))
    return metrics


def _save(tasks: Tasks, inputs: Inputs, students: Students, run_dir: Path) -> None:
    """The trained student(s), with their tokenizers and projections, published into the run directory."""
    build = Path(tempfile.mkdtemp(dir=run_dir, prefix=".student-"))
    for n in tasks.order:
        directory = build if tasks.single else build / n
        save_model(students.models[n], inputs.preps[n].tokenizer, directory, {"projections": students.parts[n].projections})
    publish_dir(build, run_dir / layout.SAVED_STUDENT)


def _labels_only(parts: Mapping[str, Any]) -> bool:
    """Whether the student learnt from gold labels alone (the report's labels-only reference):
    no part has a teacher whose outputs its objective uses (distiller=trainer, or loss=hard)."""
    return not any(p.teacher is not None and (p.objective.logit_terms or p.objective.matches) for p in parts.values())


def _mean_dev_score(parts: Mapping[str, Any], preps: Mapping[str, Prepared], eval_bs: int, device: torch.device):
    """The evaluation that a run of several tasks keeps its best student by: each task's main
    metric on validation and their mean, `score`."""

    def scores() -> dict[str, float]:
        out = {}
        for n, part in parts.items():
            main = preps[n].kind.main_metric
            out[f"{n}/{main}"] = evaluate(part.student, preps[n], "validation", eval_bs, device)[main]
        out["score"] = float(np.mean(list(out.values())))
        return out

    return scores


def _task_entry(
    prep: Prepared, teachers: Sequence[Any], part: Any, student: Any, base: str | None, eval_bs: int, device: torch.device, predictions: Path
) -> dict[str, Any]:
    """One task's metrics: its data, its teacher(s) and its student on validation and test."""
    entry: dict[str, Any] = {"main_metric": prep.kind.main_metric, "sizes": prep.sizes}
    entry["describe"] = prep.kind.describe(prep.rows, prep.label_names)  # e.g. entity counts per split for NER
    entry.update(teacher_metrics(teachers, part.teacher, prep, base, eval_bs, device, predictions))
    entry["student"] = measure(HFAdaptor(student, prep.kind), prep, eval_bs, device, predictions / layout.STUDENT)
    return entry


def _labels_only_entry(plain: tuple[Any, Any], prep: Prepared, attn: str, eval_bs: int, device: torch.device, predictions: Path) -> dict[str, Any]:
    model, result = plain
    sdpa_again(attn, [model])
    entry = measure(HFAdaptor(model, prep.kind), prep, eval_bs, device, predictions / layout.LABELS_ONLY)
    entry.update(
        train_seconds=result.train_seconds, steps=result.steps, best_step=result.best_step,
        note="the same student, seed and training settings, on labels only",
        student_minus_labels_only=paired_difference(predictions / layout.STUDENT, predictions / layout.LABELS_ONLY),
    )
    return entry


def _mean_rows(entries: Mapping[str, Any], order: Sequence[str], students: Mapping[str, Any]) -> dict[str, Any]:
    """The run-level teacher and student rows of several tasks: the mean main metric over tasks
    (what sweeps and reports compare); parameters summed, the shared encoder counted once."""
    def mean_of(role: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split in ("validation", "test"):
            out[split] = {"score": float(np.mean([entries[n][role][split][entries[n]["main_metric"]] for n in order]))}
        out["examples_per_second"] = float(np.mean([entries[n][role]["examples_per_second"] for n in order]))
        return out

    teacher = mean_of("teacher")
    teacher["parameters"] = {k: sum(entries[n]["teacher"]["parameters"][k] for n in order) for k in ("total", "non_embedding")}
    student = mean_of("student")
    student["parameters"] = count_parameters(torch.nn.ModuleList(students.values()))
    return {"teacher": teacher, "student": student}
