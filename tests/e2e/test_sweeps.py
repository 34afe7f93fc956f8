"""Multiruns: per-job directories, independence of jobs in one process, failures that do not stop
the sweep, the joblib and submitit launchers, and the report over a real sweep."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, read_metrics, run_cli

pytestmark = pytest.mark.slow  # every test here launches run.py sweeps

SMOKE = ["debug=smoke", "distiller=general"]


def _jobs(sweep: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(sweep)): json.loads(p.read_text()) for p in sweep.rglob("metrics.json")}


def _report(sweep: Path) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare.py"), str(sweep)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    png = (sweep / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    with open(sweep / "report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_basic_launcher_sweep_isolated_jobs_failures_and_report(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        *SMOKE, "logger=wandb", "loss=kd,nst+hidden,focal", "seed=1,2", run_dir=sweep, cache=cache_dir, multirun=True
    )
    # `focal` is not a preset: Hydra rejects the whole sweep before any job runs
    assert proc.returncode == 1 and "loss/focal" in proc.stderr
    proc = run_cli(
        *SMOKE, "logger=wandb", "loss=kd,nst+hidden", "seed=1,2", run_dir=sweep, cache=cache_dir, multirun=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = _jobs(sweep)
    assert set(jobs) == {f"distiller=general,loss={loss}/seed={s}" for loss in ("kd", "nst+hidden") for s in (1, 2)}
    for name, metrics in jobs.items():
        assert metrics["seed"] == int(name[-1])
        assert len(list((sweep / name / "wandb").glob("offline-run-*"))) == 1
        identity = json.loads((sweep / name / "wandb_run.json").read_text())
        configuration = name.split("/")[0]
        assert identity["group"] == "/".join(sweep.parts[-2:]) and identity["mode"] == "offline"
        assert identity["name"] == f"{configuration},seed={metrics['seed']}"
        expected_tags = {"distiller=general", f"loss={configuration.split('loss=')[1]}", f"seed={metrics['seed']}"}
        assert expected_tags <= set(identity["tags"])
    # the last job of the in-process sweep equals the same job run alone: nothing leaked
    alone = tmp_path / "alone"
    run_cli(*SMOKE, "logger=none", "loss=nst+hidden", "seed=2", run_dir=alone, cache=cache_dir)
    swept = jobs["distiller=general,loss=nst+hidden/seed=2"]["student"]
    assert read_metrics(alone)["student"]["final_losses"] == swept["final_losses"]
    rows = [r for r in _report(sweep) if r["status"] == "ok"]
    # `distiller=general` is shared by every job: the report states it once, rows show the losses
    assert sorted(r["configuration"] for r in rows) == ["loss=kd", "loss=nst+hidden"]
    assert "Every job also ran with: `distiller=general`" in (sweep / "report.md").read_text()
    assert all(r["n"] == "2" for r in rows)


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    # distiller=basic rejects intermediate losses: the `hidden` job fails, the `kd` job runs
    proc = run_cli(
        "debug=smoke",
        "logger=none",
        "distiller=basic",
        "loss=hidden,kd",
        "seed=1",
        run_dir=sweep,
        cache=cache_dir,
        multirun=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    error = (sweep / "distiller=basic,loss=hidden" / "seed=1" / "error.txt").read_text()
    assert error.startswith("brewlab: error: distiller=basic takes logit losses only")
    assert (sweep / "distiller=basic,loss=kd" / "seed=1" / "metrics.json").is_file()
    statuses = {r["configuration"]: r["status"] for r in _report(sweep)}
    assert statuses == {"loss=hidden": "failed", "loss=kd": "ok"}


def test_joblib_launcher_runs_two_jobs_at_once(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        *SMOKE,
        "logger=none",
        "loss=kd,hidden",
        "seed=1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        run_dir=sweep,
        cache=cache_dir,
        multirun=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    assert len(_jobs(sweep)) == 4
    rows = [r for r in _report(sweep) if r["status"] == "ok"]
    assert len(rows) == 2 and all(r["n"] == "2" for r in rows)


def test_submitit_local_runs_and_slurm_composes(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        *SMOKE,
        "logger=none",
        "seed=3",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        run_dir=sweep,
        cache=cache_dir,
        multirun=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (metrics,) = _jobs(sweep).values()
    assert metrics["seed"] == 3
    cfg = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "--cfg",
            "hydra",
            "--package",
            "hydra.launcher",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert cfg.returncode == 0, cfg.stderr
    assert "partition: gpu" in cfg.stdout and "gpus_per_node: 1" in cfg.stdout and "timeout_min: 240" in cfg.stdout
    assert "SlurmLauncher" in cfg.stdout
    # the plugin's own config name composes too (its defaults, no project settings)
    cfg = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
         "--cfg", "hydra", "--package", "hydra.launcher"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert cfg.returncode == 0, cfg.stderr
    assert "partition: gpu" in cfg.stdout and "SlurmLauncher" in cfg.stdout


def test_optuna_search_maximises_the_metric_run_py_returns(tmp_path, cache_dir):
    """run.py returns the student's dev metric: Optuna's best value is the best job's metric."""
    import yaml

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="optional extra: pip install -e .[optuna]")
    sweep = tmp_path / "optuna"
    proc = run_cli(
        "hparams_search=optuna", "debug=smoke", "logger=none", "hydra.sweeper.n_trials=2",
        run_dir=sweep, cache=cache_dir, multirun=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    dev = [m["student"]["validation"][m["task"]["main_metric"]] for m in _jobs(sweep).values()]
    assert len(dev) == 2 and result["best_value"] == max(dev)
    assert set(result["best_params"]) == {"optim.lr", "scheduler.temperature.base", "loss.kd.weight", "loss.hard.weight"}
