"""The Hydra job around a run: the user's plugins imported, the config validated once into its
typed settings, the tracker started, a finished run skipped, and a user error turned into one
line and exit code 2 (or `error.txt` and NaN inside a sweep)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from brewlab.config.compose import to_plain
from brewlab.config.schema import run_settings
from brewlab.core import layout
from brewlab.core.errors import BrewlabError
from brewlab.core.parallel import barrier, init, is_main, shared_dir
from brewlab.eval.evaluation import summary_table
from brewlab.run.pipeline import finished_run, run
from brewlab.run.validate import validate
from brewlab.train.runtime import Runtime, keep_heap_compact, seed_everything
from brewlab.train.tracking import make_tracker

log = logging.getLogger("brewlab")


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

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    tracker = None
    try:
        plain = to_plain(cfg)
        import_plugins(plain.get("plugins"))
        validate(plain)
        settings = run_settings(plain)
        rt = Runtime.of(plain["cache_dir"], settings.trainer, None)
        init(rt.device)
        run_dir = shared_dir(run_dir)  # torchrun: every rank keeps its checkpoints in rank 0's directory
        done = finished_run(plain, settings, run_dir)
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
            name=f"{hc.job.override_dirname or 'default'},seed={settings.seed}",
            tags=list(hc.overrides.task) + ([f"study={study}"] if study else []),
            group=group,
            resume=settings.resume is not False and _interrupted_here(run_dir),
        )
        keep_heap_compact(settings.trainer.heap_trim_every_s)
        seed_everything(settings.seed)
        rt = rt.with_tracker(tracker)
        metrics = run(plain, settings, run_dir, rt)
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
