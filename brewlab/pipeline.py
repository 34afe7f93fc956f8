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

from brewlab.augmented import augmented_training
from brewlab.cache import Cache, stable_hash
from brewlab.errors import BrewlabError
from brewlab.evaluation import evaluate, measure, paired_difference, summary_table, teacher_metrics
from brewlab.files import publish_dir, write_json_atomic
from brewlab.parallel import main_first
from brewlab.prepare import DeviceLoader, Prepared, prepare_task, train_loader
from brewlab.runtime import Runtime, keep_heap_compact, seed_everything
from brewlab.schema import keyed
from brewlab.stages import (
    attention_of,
    build_distiller,
    build_student,
    check_student_init,
    labels_only_student,
    sdpa_again,
    train_loop,
)
from brewlab.teachers import get_teachers, teacher_base

log = logging.getLogger("brewlab")

PREDICTIONS = "predictions"  # <run>/predictions/[<task>/]<teacher|student|labels_only>/<split>.jsonl


# ----------------------------------------------------------------------------- resuming

# config keys that do not change what a run computes (a resume may change them)
NOT_TRAINING = ("logger", "resume", "study", "cache_dir")
NOT_TRAINING_TRAINER = ("progress", "checkpoint_every", "checkpoints_kept", "log_every", "nonfinite", "heap_trim_every_s")


def run_fingerprint(cfg: Mapping[str, Any]) -> str:
    """Hash of everything that shapes a run's results: a checkpoint or a finished run counts as
    this run's only when it matches."""
    kept = {k: v for k, v in cfg.items() if k not in NOT_TRAINING}
    kept["trainer"] = {k: v for k, v in cfg["trainer"].items() if k not in NOT_TRAINING_TRAINER}
    if not any((cfg.get("baselines") or {}).values()):  # runs without baselines keep their earlier fingerprint
        kept.pop("baselines", None)
    return Cache(cfg["cache_dir"]).key(keyed(kept))  # paths inside the cache count relative to it


def checkpoint_store(cfg: Mapping[str, Any], run_dir: Path, preps: Sequence[Prepared], rt: Runtime) -> Any | None:
    """The run directory's checkpoints (none under torchrun, whose ranks share no directory),
    tied to the config and to the encoded data (`preps`), whose cached teacher logits they hold."""
    from brewlab.checkpoint import CheckpointStore

    if rt.data_parallel:
        return None
    fingerprint = stable_hash([run_fingerprint(cfg), *(p.data_id for p in preps)])
    store = CheckpointStore(run_dir / "checkpoints", fingerprint, keep=int(cfg["trainer"]["checkpoints_kept"]))
    if cfg.get("resume", "auto") is False:
        store.clear()  # resume=false: this directory starts over
    return store


def finished_run(cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of this very run when it already finished here (a re-run sweep skips it)."""
    path = run_dir / "metrics.json"
    if cfg.get("resume", "auto") is False or not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): running again", path, exc)
        return None
    return metrics if metrics.get("fingerprint") == run_fingerprint(cfg) else None


# ----------------------------------------------------------------------------- the run


def run(cfg: Mapping[str, Any], run_dir: Path, rt: Runtime) -> dict[str, Any]:
    """Execute one composed run; returns the metrics written to metrics.json."""
    from transformers.utils import logging as hf_logging

    from brewlab.adaptors import ADAPTORS
    from brewlab.distillers import DISTILLERS
    from brewlab.models import save_model

    hf_logging.disable_progress_bar()  # our own bar shows the training loss; no per-file bars
    if cfg["teacher"].get("notice"):  # e.g. a licence restriction: once in every run's log
        log.warning("teacher %s: %s", cfg["teacher"].get("name_or_path") or cfg["teacher"].get("kind"), cfg["teacher"]["notice"])
    name = cfg["distiller"]["name"]
    if DISTILLERS.get(name).many_tasks:
        return run_multi_task(cfg, run_dir, rt)
    device, seed = rt.device, int(cfg["seed"])
    with main_first():  # under torchrun, rank 0 fills the caches the other ranks then read
        base = teacher_base(cfg, rt)
        prep = prepare_task(cfg, rt.cache, tokenizer_from=base)
        check_student_init(cfg, prep)
        attn = attention_of(cfg)
        augmented = augmented_training(cfg, prep, rt)  # its errors come before teacher work
        teachers = get_teachers(cfg, prep, base, attn, rt)
    teacher_models = [t[0] for t in teachers]

    trainer_cfg = cfg["trainer"]
    repeat = augmented is None or augmented[1]["mode"] != "online"  # online: new inputs every epoch
    seed_everything(seed)
    student = build_student(cfg, prep, teacher_models[0], attn, device)
    # a compiled student trains faster; it shares its parameters with `student`, which is saved
    trained = torch.compile(student) if trainer_cfg["compile"] else student
    distiller = build_distiller(name, cfg, trained, teacher_models, prep, cfg["loss"], trainer_cfg, rt.tracker, repeat)
    checkpoints = checkpoint_store(cfg, run_dir, [prep], rt)
    log.info("student: training with distiller=%s loss=%s", name, "+".join(sorted(cfg["loss"])))
    result = train_loop(distiller, prep, trainer_cfg, seed, rt, augmented and augmented[0], checkpoints, parallel=rt.data_parallel)
    wanted = cfg["baselines"]
    plain = None
    if wanted["labels_only"]:  # every rank trains it, as it trains the student
        plain = labels_only_student(cfg, prep, teacher_models[0], attn, trainer_cfg, seed, rt)
    if rt.rank != 0:  # the other data-parallel ranks hold the same student: rank 0 measures and saves
        return {}
    sdpa_again(attn, [*teacher_models, student])
    log.info("evaluating the teacher and the student on validation and test")

    eval_bs = int(cfg["trainer"]["eval_batch_size"])
    metrics: dict[str, Any] = {
        "task": {"name": cfg["task"]["name"], "main_metric": prep.kind.main_metric, "sizes": prep.sizes},
        "distiller": name,
        "loss": sorted(cfg["loss"]),
        "seed": seed,
        "study": cfg.get("study"),
        "fingerprint": run_fingerprint(cfg),
    }
    if augmented is not None:
        metrics["augmentation"] = augmented[1]
    describe = getattr(prep.kind, "describe", None)  # e.g. entity counts per split for NER
    if describe is not None:
        metrics["task"].update(describe(prep.rows, prep.label_names))
    predictions = run_dir / PREDICTIONS
    metrics.update(teacher_metrics(teachers, distiller.teacher, prep, base, eval_bs, device, predictions))
    student_view = ADAPTORS.get("hf")(student, prep.kind)
    metrics["student"] = measure(student_view, prep, eval_bs, device, predictions / "student")
    metrics["student"].update(
        train_seconds=result.train_seconds, steps=result.steps, best_step=result.best_step, final_losses=result.final_losses
    )
    if not DISTILLERS.get(name).uses_teacher:
        metrics["student"]["note"] = "trained on labels only"
    if plain is not None:
        model, plain_result = plain
        sdpa_again(attn, [model])
        metrics["labels_only"] = measure(ADAPTORS.get("hf")(model, prep.kind), prep, eval_bs, device, predictions / "labels_only")
        metrics["labels_only"].update(
            train_seconds=plain_result.train_seconds, steps=plain_result.steps, best_step=plain_result.best_step,
            note="the same student, seed and training settings, on labels only",
            student_minus_labels_only=paired_difference(predictions / "student", predictions / "labels_only"),
        )
    if wanted["linear"]:
        from brewlab.baselines import linear_baseline

        metrics["linear_baseline"] = linear_baseline(cfg["task"], prep.rows, prep.label_names)

    build = Path(tempfile.mkdtemp(dir=run_dir, prefix=".student-"))
    save_model(student, prep.tokenizer, build, {"projections": distiller.projections})
    publish_dir(build, run_dir / "student")
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def run_multi_task(cfg: Mapping[str, Any], run_dir: Path, rt: Runtime) -> dict[str, Any]:
    """`distiller=multi_task`: each task of `distiller.tasks` gets its teacher(s) and a student
    head; the students share one encoder (and one vocabulary) and train together, drawing each
    batch's task by size^tau. Writes student/<task>/ per task and metrics for every task."""
    from hydra.utils import instantiate

    from brewlab.adaptors import ADAPTORS
    from brewlab.data import TaskMixture
    from brewlab.distillers import DISTILLERS
    from brewlab.models import count_parameters, save_model

    d_cfg = cfg["distiller"]
    device, seed = rt.device, int(cfg["seed"])
    attn = attention_of(cfg)
    # tasks with a pooled (sentence) head first: their encoder carries the pooler the others ignore
    names = sorted(d_cfg["tasks"], key=lambda n: d_cfg["tasks"][n]["kind"] != "classification")
    stages = {n: {**cfg, "task": d_cfg["tasks"][n]} for n in names}
    vocab = [d_cfg["tasks"][n] for n in names]
    with main_first():
        base = teacher_base(cfg, rt)
        preps = {n: prepare_task(stages[n], rt.cache, tokenizer_from=base, vocab_tasks=vocab) for n in names}
        for n in names:
            check_student_init(stages[n], preps[n])
        teachers = {n: get_teachers(stages[n], preps[n], base, attn, rt) for n in names}
    seed_everything(seed)
    single = "multi_teacher" if d_cfg.get("teachers") else "general"
    trainer_cfg = cfg["trainer"]
    students: dict[str, Any] = {}
    parts = {}
    for n in names:
        model = build_student(stages[n], preps[n], teachers[n][0][0], attn, device)
        if students:  # share the first student's encoder
            first = next(iter(students.values()))
            setattr(model, model.base_model_prefix, getattr(first, first.base_model_prefix))
        students[n] = model
        models = [t[0] for t in teachers[n]]
        parts[n] = build_distiller(single, stages[n], model, models, preps[n], cfg["loss"], trainer_cfg, rt.tracker)
    distiller = DISTILLERS.get(d_cfg["name"])(parts, trainer_cfg, instantiate(cfg["optim"], _partial_=True), rt.tracker.log)
    loaders = {
        n: train_loader(preps[n].features["train"], trainer_cfg, preps[n].tokenizer.pad_token_id, seed, rt.shard) for n in names
    }
    sizes = {n: len(preps[n].features["train"]) for n in names}
    eval_bs = int(trainer_cfg["eval_batch_size"])

    def dev_scores() -> dict[str, float]:
        out = {}
        for n in names:
            main = preps[n].kind.main_metric
            out[f"{n}/{main}"] = evaluate(parts[n].student, preps[n], "validation", eval_bs, device)[main]
        out["score"] = float(np.mean(list(out.values())))
        return out

    result = distiller.fit(
        DeviceLoader(TaskMixture(loaders, sizes, float(d_cfg["tau"]), seed), device),
        evaluate=dev_scores,
        main_metric="score",
        progress=rt.progress,
        checkpoints=checkpoint_store(cfg, run_dir, list(preps.values()), rt),
        parallel=rt.data_parallel,
    )
    if rt.rank != 0:
        return {}
    sdpa_again(attn, [*(t[0] for n in names for t in teachers[n]), *students.values()])

    per_task: dict[str, Any] = {}
    for n in names:
        prep = preps[n]
        entry = {"main_metric": prep.kind.main_metric, "sizes": prep.sizes}
        predictions = run_dir / PREDICTIONS / n
        entry.update(teacher_metrics(teachers[n], parts[n].teacher, prep, base, eval_bs, device, predictions))
        entry["student"] = measure(ADAPTORS.get("hf")(students[n], prep.kind), prep, eval_bs, device, predictions / "student")
        per_task[n] = entry

    def mean_of(role: str) -> dict[str, Any]:
        """The run-level row: mean main metric over tasks (what sweeps and reports compare)."""
        out: dict[str, Any] = {}
        for split in ("validation", "test"):
            scores = [per_task[n][role][split][per_task[n]["main_metric"]] for n in names]
            out[split] = {"score": float(np.mean(scores))}
        out["examples_per_second"] = float(np.mean([per_task[n][role]["examples_per_second"] for n in names]))
        return out

    teacher_row = mean_of("teacher")
    teacher_row["parameters"] = {
        k: sum(per_task[n]["teacher"]["parameters"][k] for n in names) for k in ("total", "non_embedding")
    }
    student_row = mean_of("student")
    student_row["parameters"] = count_parameters(distiller.students)  # the shared encoder counted once
    student_row.update(
        train_seconds=result.train_seconds, steps=result.steps, best_step=result.best_step, final_losses=result.final_losses
    )
    metrics = {
        "task": {"name": "+".join(names), "main_metric": "score", "tasks": names, "tau": d_cfg["tau"]},
        "distiller": d_cfg["name"],
        "loss": sorted(cfg["loss"]),
        "seed": seed,
        "study": cfg.get("study"),
        "fingerprint": run_fingerprint(cfg),
        "tasks": per_task,
        "teacher": teacher_row,
        "student": student_row,
    }
    build = Path(tempfile.mkdtemp(dir=run_dir, prefix=".student-"))
    for n in names:
        save_model(students[n], preps[n].tokenizer, build / n, {"projections": parts[n].projections})
    publish_dir(build, run_dir / "student")
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


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
    started = (run_dir / "wandb_run.json").is_file() and not (run_dir / "metrics.json").is_file()
    return started or any((run_dir / "checkpoints").glob("step-*.pt"))


def run_job(cfg: Any) -> float:
    """Hydra job: validate, track, run; user errors become one line and exit code 2.

    In a multirun a failed job records `error.txt` in its directory and returns NaN so the
    sweep goes on; the report lists it as failed.
    """
    import sys
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from brewlab.config import to_plain, validate
    from brewlab.tracking import make_tracker

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    tracker = None
    try:
        plain = to_plain(cfg)
        import_plugins(plain.get("plugins"))
        validate(plain)
        from brewlab.parallel import init

        rt = Runtime.of(plain, None)
        init(rt.device)
        done = None if rt.data_parallel else finished_run(plain, run_dir)
        if done is not None:
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
        if rt.rank != 0:
            tracker.finish(0)
            return float("nan")
        tracker.summary(metrics)
        tracker.finish(0)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: metrics and student are written
        (run_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's failure, now resumed past
        print(summary_table(metrics))
        print(f"outputs: {run_dir}")
        return float(metrics["student"]["validation"][metrics["task"]["main_metric"]])
    except Exception as exc:  # a BrewlabError is the user's: one line; any other keeps its traceback
        if tracker is not None:
            tracker.finish(1)
        user_error = isinstance(exc, BrewlabError)
        line = f"brewlab: error: {exc}" if user_error else f"brewlab: {type(exc).__name__}: {exc}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(line + "\n\n" + traceback.format_exc(), encoding="utf-8")
        if multirun:
            log.error(line)
            return float("nan")
        if not user_error or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
