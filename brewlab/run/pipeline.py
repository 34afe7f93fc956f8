"""The whole run: task -> tokenizer -> teacher -> student -> distil -> evaluate -> save.

With `run.py`, this is the only module that knows every piece; each piece is reached through its
registry, so new tasks, distillers, losses and trackers plug in without edits here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.config.identity import run_fingerprint
from brewlab.core import layout
from brewlab.core.cache import stable_hash
from brewlab.core.errors import BrewlabError
from brewlab.core.files import publish_dir, write_json_atomic
from brewlab.core.parallel import main_first
from brewlab.data.prepare import Prepared, prepare_task, train_loader
from brewlab.data.tasks import kind_of
from brewlab.distill.teacher_outputs.plan import StorePlan
from brewlab.eval.evaluation import evaluate, measure, paired_difference, summary_table, teacher_metrics
from brewlab.stages.augmented import augmented_training
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
from brewlab.train.runtime import Runtime, keep_heap_compact, seed_everything

log = logging.getLogger("brewlab")


# ----------------------------------------------------------------------------- resuming


def checkpoint_store(
    cfg: Mapping[str, Any], run_dir: Path, preps: Sequence[Prepared], rt: Runtime, stage: str | None = None
) -> Any:
    """The checkpoints of the run's student (or of another of its stages, e.g. `labels_only`,
    in a subfolder), tied to the config and to the encoded data (`preps`), whose cached teacher
    logits they hold. Under torchrun each rank keeps its own (its random generators and teacher
    logits are its own) in rank 0's run directory, and the ranks resume from a step they all hold."""
    from brewlab.core.parallel import common_step
    from brewlab.train.checkpoint import CheckpointStore

    directory = run_dir / layout.CHECKPOINTS / (stage or "")
    fingerprint = stable_hash([run_fingerprint(cfg), *(p.data_id for p in preps), *([stage] if stage else [])])
    keep, agree = int(cfg["trainer"]["checkpoints_kept"]), None
    if rt.data_parallel:  # a kill between two ranks' saves of one step leaves the step before on both
        directory, keep, agree = directory / f"rank-{rt.rank}", max(keep, 2), common_step
    store = CheckpointStore(directory, fingerprint, keep=keep, agree=agree)
    if cfg["resume"] is False:
        store.clear()  # resume=false: this directory starts over
    return store


def finished_run(cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of this very run when it already finished here (a re-run sweep skips it)."""
    path = run_dir / layout.METRICS
    if cfg["resume"] is False or not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): running again", path, exc)
        return None
    return metrics if metrics.get("fingerprint") == run_fingerprint(cfg) else None


# ----------------------------------------------------------------------------- the run


def run(cfg: Mapping[str, Any], run_dir: Path, rt: Runtime) -> dict[str, Any]:
    """Execute one composed run; returns the metrics written to metrics.json.

    The distiller says which tasks it trains (the run's `task`, or several that share one
    student encoder), which distiller trains each task's student, how those parts make one
    distiller and how the tasks' batches make one stream; this function asks, and names none."""
    from hydra.utils import instantiate
    from transformers.utils import logging as hf_logging

    from brewlab.distill.distillers import DISTILLERS
    from brewlab.models.build import save_model

    hf_logging.disable_progress_bar()  # our own bar shows the training loss; no per-file bars
    if cfg["teacher"].get("notice"):  # e.g. a licence restriction: once in every run's log
        log.warning("teacher %s: %s", cfg["teacher"].get("name_or_path") or cfg["teacher"].get("kind"), cfg["teacher"]["notice"])
    name, d_cfg, trainer_cfg = cfg["distiller"]["name"], cfg["distiller"], cfg["trainer"]
    d_cls = DISTILLERS.get(name)
    named = d_cls.tasks_of(d_cfg)
    # several tasks: pooled (sentence) heads first, whose encoder carries the pooler the others ignore
    order = [cfg["task"]["name"]] if named is None else sorted(named, key=lambda n: not kind_of(named[n]["kind"]).pooled_head)
    task_cfgs = {n: cfg if named is None else {**cfg, "task": named[n]} for n in order}
    device, seed = rt.device, int(cfg["seed"])
    attn = attention_of(cfg)
    with main_first():  # under torchrun, rank 0 fills the caches the other ranks then read
        base = teacher_base(cfg, rt)
        vocab = None if named is None else [task_cfgs[n]["task"] for n in order]  # shared by the tasks' students
        preps = {n: prepare_task(task_cfgs[n], rt.cache, tokenizer_from=base, vocab_tasks=vocab) for n in order}
        for n in order:
            check_student_init(task_cfgs[n], preps[n])
        augmented = augmented_training(cfg, preps[order[0]], rt) if named is None else None  # errors before teacher work
        teachers = {n: get_teachers(task_cfgs[n], preps[n], base, attn, rt) for n in order}

    repeat = augmented is None or augmented[2] is not None  # online: new inputs every epoch
    seed_everything(seed)
    students: dict[str, Any] = {}
    parts: dict[str, Any] = {}
    part_name = d_cls.part_name(name, d_cfg)
    for n in order:
        model = build_student(task_cfgs[n], preps[n], teachers[n][0], attn, device)
        if students:  # the tasks' students share the first one's encoder
            first = next(iter(students.values()))
            setattr(model, model.base_model_prefix, getattr(first, first.base_model_prefix))
        students[n] = model
        # a compiled student trains faster; it shares its parameters with `model`, which is saved
        trained = torch.compile(model) if trainer_cfg["compile"] else model
        features = preps[n].features["train"] if augmented is None else augmented[2]
        store = StorePlan.of(trainer_cfg, rt.cache, n, preps[n], features)
        parts[n] = build_distiller(
            part_name, task_cfgs[n], trained, teachers[n], preps[n], cfg["loss"], trainer_cfg, rt.tracker, repeat, store, features
        )
    distiller = d_cls.assemble(parts, trainer_cfg, instantiate(cfg["optim"], _partial_=True), rt.tracker.log)
    loaders = {
        n: augmented[0] if augmented else train_loader(preps[n].features["train"], trainer_cfg, preps[n].tokenizer.pad_token_id, seed, rt.shard)
        for n in order
    }
    batches = d_cls.batches(loaders, {n: len(preps[n].features["train"]) for n in order}, d_cfg, seed)
    eval_bs = int(trainer_cfg["eval_batch_size"])
    dev = None if named is None else (_mean_dev_score(parts, preps, eval_bs, device), "score")  # None: the task's own
    stage = Stage("student", name, cfg["loss"], trainer_cfg, seed, checkpoint_store(cfg, run_dir, list(preps.values()), rt))
    result = stage.run(distiller, preps[order[0]], rt, batches, rt.data_parallel, dev)
    plain = None
    if cfg["baselines"]["labels_only"]:  # every rank trains it, as it trains the student
        plain_store = checkpoint_store(cfg, run_dir, list(preps.values()), rt, "labels_only")
        plain = labels_only_student(cfg, preps[order[0]], teachers[order[0]][0], attn, trainer_cfg, seed, rt, plain_store)
    if rt.rank != 0:  # the other data-parallel ranks hold the same student: rank 0 measures and saves
        return {}
    sdpa_again(attn, list(students.values()))
    if attn != "sdpa":
        for t in (t for n in order for t in teachers[n]):
            t.use_attention("sdpa")
    log.info("evaluating the teacher and the student on validation and test")

    metrics: dict[str, Any] = {
        "task": {},
        "distiller": name,
        "loss": sorted(cfg["loss"]),
        "seed": seed,
        "study": cfg.get("study"),
        "fingerprint": run_fingerprint(cfg),
    }
    entries = {}
    for n in order:
        predictions = layout.predictions(run_dir, n if named is not None else None)
        entries[n] = _task_entry(preps[n], teachers[n], parts[n], students[n], base, eval_bs, device, predictions)
    if named is None:
        entry = entries[order[0]]
        metrics["task"] = {"name": cfg["task"]["name"], **{k: entry.pop(k) for k in ("main_metric", "sizes")}, **entry.pop("describe")}
        if augmented is not None:
            metrics["augmentation"] = augmented[1]
        metrics.update(entry)
        if plain is not None:
            metrics["labels_only"] = _labels_only_entry(plain, preps[order[0]], attn, eval_bs, device, layout.predictions(run_dir))
        if cfg["baselines"]["linear"]:
            from brewlab.eval.baselines import linear_baseline

            metrics["linear_baseline"] = linear_baseline(cfg["task"], preps[order[0]].rows, preps[order[0]].label_names)
    else:
        metrics["task"] = {"name": "+".join(order), "main_metric": "score", "tasks": order, "tau": d_cfg["tau"]}
        for entry in entries.values():
            entry.update(entry.pop("describe"))
        metrics.update(tasks=entries, **_mean_rows(entries, order, students))
    metrics["student"].update(
        train_seconds=result.train_seconds, steps=result.steps, best_step=result.best_step, final_losses=result.final_losses,
        labels_only=_labels_only(parts),
    )
    every = [t for n in order for t in teachers[n]]
    metrics["teacher_store"] = {"entries": distiller.stores(), "teacher_loaded": any(t.loaded for t in every)}
    if distiller.stores() and not metrics["teacher_store"]["teacher_loaded"]:
        log.info("teacher: never loaded in this run; its outputs and scores came from the teacher store")

    build = Path(tempfile.mkdtemp(dir=run_dir, prefix=".student-"))
    for n in order:
        save_model(students[n], preps[n].tokenizer, build / n if named is not None else build, {"projections": parts[n].projections})
    publish_dir(build, run_dir / layout.SAVED_STUDENT)
    write_json_atomic(run_dir / layout.METRICS, metrics)
    return metrics


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
    from brewlab.models.adaptors import HFAdaptor

    entry: dict[str, Any] = {"main_metric": prep.kind.main_metric, "sizes": prep.sizes}
    entry["describe"] = prep.kind.describe(prep.rows, prep.label_names)  # e.g. entity counts per split for NER
    entry.update(teacher_metrics(teachers, part.teacher, prep, base, eval_bs, device, predictions))
    entry["student"] = measure(HFAdaptor(student, prep.kind), prep, eval_bs, device, predictions / layout.STUDENT)
    return entry


def _labels_only_entry(plain: tuple[Any, Any], prep: Prepared, attn: str, eval_bs: int, device: torch.device, predictions: Path) -> dict[str, Any]:
    from brewlab.models.adaptors import HFAdaptor

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
    from brewlab.models.build import count_parameters

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


# ----------------------------------------------------------------------------- job entry


def import_plugins(modules: Any) -> None:
    """Import the user's `plugins` modules, whose registrations then exist for the whole run."""
    import importlib

    if modules is None:
        return
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise BrewlabError(f"plugins={modules!r} must be a list of module names, e.g. plugins=[my_losses]")
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure inside the user's module is reported as the user's
            raise BrewlabError(f"plugins: cannot import {name!r} ({type(exc).__name__}: {exc})") from None


def _interrupted_here(run_dir: Path) -> bool:
    """An earlier launch in this directory stopped before finishing (inside any stage, the
    teacher's included): its W&B run is continued rather than a second one started."""
    started = (run_dir / layout.WANDB_RUN).is_file() and not (run_dir / layout.METRICS).is_file()
    return started or any((run_dir / layout.CHECKPOINTS).rglob("step-*.pt"))


def run_job(cfg: Any) -> float:
    """Hydra job: validate, track, run; user errors become one line and exit code 2.

    In a multirun a failed job records `error.txt` in its directory and returns NaN so the
    sweep goes on; the report lists it as failed.
    """
    import sys
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from brewlab.config.compose import to_plain
    from brewlab.core.parallel import barrier, init, is_main, shared_dir
    from brewlab.run.validate import validate
    from brewlab.train.tracking import make_tracker

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    tracker = None
    try:
        plain = to_plain(cfg)
        import_plugins(plain.get("plugins"))
        validate(plain)
        rt = Runtime.of(plain, None)
        init(rt.device)
        run_dir = shared_dir(run_dir)  # torchrun: every rank keeps its checkpoints in rank 0's directory
        done = finished_run(plain, run_dir)
        if done is not None:
            if rt.rank == 0:
                print(summary_table(done))
                print(f"outputs: {run_dir} (this run had already finished here; resume=false runs it again)")
            return float(done["student"]["validation"][done["task"]["main_metric"]])
        study = plain.get("study")
        # one W&B group per sweep (its directory, e.g. ablation_losses/2026-11-29_03-00-00), so
        # repetitions of a configuration sit together and two sweeps of one study stay apart
        group = "/".join(Path(hc.sweep.dir).parts[-2:]) if multirun else study
        tracker = make_tracker(
            plain["logger"] if rt.rank == 0 else {"name": "none"},  # one W&B run and one set of outputs, from rank 0
            run_dir,
            plain,
            name=f"{hc.job.override_dirname or 'default'},seed={plain['seed']}",
            tags=list(hc.overrides.task) + ([f"study={study}"] if study else []),
            group=group,
            resume=plain["resume"] is not False and _interrupted_here(run_dir),
        )
        keep_heap_compact(plain["trainer"]["heap_trim_every_s"])
        seed_everything(int(plain["seed"]))
        rt = rt.with_tracker(tracker)
        metrics = run(plain, run_dir, rt)
        barrier()  # every rank has saved its last checkpoint before rank 0 removes them
        if rt.rank != 0:
            tracker.finish(0)
            return float("nan")
        tracker.summary(metrics)
        tracker.finish(0)
        shutil.rmtree(run_dir / layout.CHECKPOINTS, ignore_errors=True)  # finished: metrics and student are written
        (run_dir / layout.ERROR).unlink(missing_ok=True)  # an earlier attempt's failure, now resumed past
        print(summary_table(metrics))
        print(f"outputs: {run_dir}")
        return float(metrics["student"]["validation"][metrics["task"]["main_metric"]])
    except Exception as exc:  # a BrewlabError is the user's: one line; any other keeps its traceback
        if tracker is not None:
            tracker.finish(1)
        user_error = isinstance(exc, BrewlabError)
        line = f"brewlab: error: {exc}" if user_error else f"brewlab: {type(exc).__name__}: {exc}"
        if is_main():  # one record per run; other ranks' errors reach the console
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / layout.ERROR).write_text(line + "\n\n" + traceback.format_exc(), encoding="utf-8")
        if multirun:
            log.error(line)
            return float("nan")
        if not user_error or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
