"""What a run directory holds, by name: the one place the pipeline, the tracker, the report and
the scripts learn where a run's outputs are, so none of them spells a file name.

    <run>/.hydra/{config,overrides,hydra}.yaml   Hydra's record of the job, written before it starts
    <run>/run.log                                Hydra's job log (named after run.py)
    <run>/checkpoints/[<stage>/][rank-<r>/]      training states, removed once the run finishes
    <run>/predictions/[<task>/]<role>/<split>.jsonl   per-example records of each model
    <run>/student/[<task>/]                      the saved student (from_pretrained)
    <run>/metrics.json                           written last: the run finished
    <run>/error.txt                              the run failed: one line, then the traceback
    <run>/wandb_run.json, <run>/wandb/           the W&B run, when logger=wandb

Pure names and paths: no torch, so the report reads run directories without the training code.
"""

from __future__ import annotations

from pathlib import Path

HYDRA = ".hydra"
HYDRA_CONFIG = "config.yaml"  # the resolved run config
HYDRA_OVERRIDES = "overrides.yaml"  # the job's command-line overrides
HYDRA_JOB = "hydra.yaml"  # Hydra's own settings (job number, override_dirname)
RUN_LOG = "run.log"
CHECKPOINTS = "checkpoints"
PREDICTIONS = "predictions"
SAVED_STUDENT = "student"
METRICS = "metrics.json"
ERROR = "error.txt"
WANDB_RUN = "wandb_run.json"  # the W&B run's id and name, readable without W&B (a resume continues it)
WANDB_DIR = "wandb"

# the models whose per-example records a run keeps, one folder each under predictions/
TEACHER = "teacher"
STUDENT = "student"
LABELS_ONLY = "labels_only"


def predictions(run_dir: Path, task: str | None = None) -> Path:
    """The folder of a run's per-example records (in a run of several tasks, `task`'s)."""
    return run_dir / PREDICTIONS / (task or "")


def records(run_dir: Path, role: str, split: str, task: str | None = None) -> Path:
    """One model's (`role`: TEACHER, STUDENT or LABELS_ONLY) per-example records of a split."""
    return predictions(run_dir, task) / role / f"{split}.jsonl"
