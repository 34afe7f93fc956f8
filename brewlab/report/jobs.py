"""The jobs of a sweep, read from their run directories alone (see `brewlab.core.layout`).

Job states: `metrics.json` -> finished, `error.txt` -> failed (first line is the message), neither
-> still running. Nothing here raises on a job's contents: a job may be mid-write, hand-edited or
from an older brewlab.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brewlab.core import layout

EXPECTED = f"<sweep>/<overrides>/seed=<n>/{layout.METRICS}"
DEFAULT_LABEL = "(default)"
# dirs a job writes into its own directory; never job dirs themselves
SKIP_DIRS = frozenset({layout.WANDB_DIR, layout.SAVED_STUDENT, "__pycache__"})
SEED_DIR = re.compile(r"^seed=(-?\d+)$")


class ReportError(Exception):
    """Bad input for the report; `main` prints it as one line and exits 2."""


@dataclass
class Job:
    """One job directory of the sweep and what it left behind."""

    path: Path
    config: str
    seed: int | None
    status: str  # "finished", "failed" or "running"
    num: int | None = None
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    cfg: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


def _load_yaml(path: Path) -> Any:
    """YAML or None: a job may be mid-write or hand-edited; the report must not die on it."""
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _is_job_dir(path: Path) -> bool:
    """Hydra creates `.hydra` first, so a job counts from the moment it starts."""
    return (path / layout.HYDRA).is_dir() or (path / layout.METRICS).is_file() or (path / layout.ERROR).is_file()


def find_job_dirs(sweep: Path) -> list[Path]:
    """Every job dir under the sweep (or the sweep itself if it is a single run)."""
    if _is_job_dir(sweep):
        return [sweep]
    found: list[Path] = []
    for root, dirs, _files in os.walk(sweep):
        here = Path(root)
        if here != sweep and _is_job_dir(here):
            found.append(here)
            dirs[:] = []  # a job's own subdirs (student/, wandb/) hold no jobs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
    return found


def _override_dirname(overrides: Sequence[str], hydra_job: Mapping[str, Any]) -> str:
    """Hydra's own rule: drop excluded keys, sort, join `k=v` with ','."""
    conf = (hydra_job.get("config") or {}).get("override_dirname") or {}
    exclude = set(conf.get("exclude_keys") or ["seed"]) | {"seed"}
    kv_sep, item_sep = str(conf.get("kv_sep", "=")), str(conf.get("item_sep", ","))
    kept = []
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") not in exclude:
            kept.append(f"{key}{kv_sep}{value}")
    return item_sep.join(sorted(kept))


def _config_label(path: Path, sweep: Path, overrides: Sequence[str] | None, hydra_job: Mapping[str, Any]) -> str:
    """The configuration a job belongs to: Hydra's override_dirname, else its dir minus `seed=<n>`."""
    recorded = hydra_job.get("override_dirname")
    if isinstance(recorded, str) and recorded != "???":
        return recorded or DEFAULT_LABEL
    if overrides is not None:
        return _override_dirname(overrides, hydra_job) or DEFAULT_LABEL
    rel = path.relative_to(sweep).parts if path != sweep else ()
    if rel and SEED_DIR.match(rel[-1]):
        rel = rel[:-1]
    return "/".join(rel) or DEFAULT_LABEL


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _seed_of(path: Path, metrics: Mapping[str, Any], cfg: Mapping[str, Any], overrides: Sequence[str]) -> int | None:
    """Seed from metrics.json, the resolved config, the overrides or the `seed=<n>` dir, in that order."""
    for value in (metrics.get("seed"), cfg.get("seed")):
        if _as_int(value) is not None:
            return _as_int(value)
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key == "seed" and _as_int(value) is not None:
            return _as_int(value)
    match = SEED_DIR.match(path.name)
    return int(match.group(1)) if match else None


def _first_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        return f"unreadable {layout.ERROR}: {exc}"
    return text.splitlines()[0].strip() if text else f"(empty {layout.ERROR})"


def read_job(path: Path, sweep: Path) -> Job:
    """Classify and load one job dir without ever raising on its contents."""
    hydra_dir = path / layout.HYDRA
    overrides = _load_yaml(hydra_dir / layout.HYDRA_OVERRIDES)
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else None
    cfg = _load_yaml(hydra_dir / layout.HYDRA_CONFIG)
    cfg = cfg if isinstance(cfg, dict) else {}
    hydra_job = _load_yaml(hydra_dir / layout.HYDRA_JOB)
    for key in ("hydra", "job"):
        hydra_job = hydra_job.get(key) if isinstance(hydra_job, dict) else None
    hydra_job = hydra_job if isinstance(hydra_job, dict) else {}
    config = _config_label(path, sweep, overrides, hydra_job)
    status, error, metrics = "running", "", {}
    if (path / layout.METRICS).is_file():
        try:
            loaded = json.loads((path / layout.METRICS).read_text(encoding="utf-8"))
            if not isinstance(loaded, dict) or not isinstance(loaded.get("student"), dict):
                raise ValueError("no 'student' object")
            status, metrics = "finished", loaded
        except (OSError, ValueError) as exc:
            status, error = "failed", f"report: unreadable {layout.METRICS} ({exc})"
    elif (path / layout.ERROR).is_file():
        status, error = "failed", _first_line(path / layout.ERROR)
    seed = _seed_of(path, metrics, cfg, overrides or [])
    return Job(path, config, seed, status, _as_int(hydra_job.get("num")), error, metrics, cfg, overrides or [])


def load_jobs(sweep: Path) -> list[Job]:
    """All jobs of a sweep; raises ReportError when there is nothing that looks like a run."""
    if not sweep.is_dir():
        raise ReportError(f"{sweep}: no runs found (expected {EXPECTED})")
    jobs = [read_job(p, sweep) for p in find_job_dirs(sweep)]
    if not jobs:
        raise ReportError(f"{sweep}: no runs found (expected {EXPECTED})")
    return jobs


def experiment_name(jobs: Sequence[Job], sweep: Path) -> str:
    """`experiment` / `study` from a job's config or `+experiment=` override, else the sweep dir name."""
    for job in jobs:
        for key in ("experiment", "study"):
            value = job.cfg.get(key)
            if isinstance(value, dict):
                value = value.get("name")
            if isinstance(value, str | int | float) and str(value).strip():
                return str(value)
        for item in job.overrides:
            key, _, value = item.partition("=")
            if key.lstrip("+~") in ("experiment", "study") and value:
                return value
    return sweep.resolve().name


def by_config(jobs: Iterable[Job]) -> list[Job]:
    """Jobs by configuration, then seed: the order failed and running jobs are listed in."""
    return sorted(jobs, key=lambda j: (j.config, j.seed is None, j.seed or 0))


def factor_shared(jobs: Sequence[Job]) -> list[str]:
    """Overrides every job of a multi-configuration sweep shares (e.g. `trainer.epochs=1` for a
    reduced-size study): taken out of the configuration labels and returned, so the report
    states them once and the rows show only what varies."""
    parts = [j.config.split(",") for j in jobs]
    if len({j.config for j in jobs}) < 2 or not all(all("=" in x for x in ps) for ps in parts):
        return []
    shared = set(parts[0]).intersection(*parts[1:])
    if not shared:
        return []
    for job, ps in zip(jobs, parts, strict=True):
        job.config = ",".join(x for x in ps if x not in shared) or DEFAULT_LABEL
    return sorted(shared)
