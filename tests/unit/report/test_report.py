"""Sweep report on synthetic run dirs: known numbers in, exact means/stds out; no training."""

from __future__ import annotations

import csv
import json
import math
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from brewlab.report.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ERROR_LINE = "brewlab: error: loss.kd.weight=-1 must be a number >= 0"


def write_hydra(job: Path, overrides: list[str], num: int, config: dict[str, Any] | None = None) -> None:
    """What Hydra writes before the job starts (so a job with only this is 'running')."""
    hydra = job / ".hydra"
    hydra.mkdir(parents=True)
    seed = next(int(o.split("=", 1)[1]) for o in overrides if o.startswith("seed="))
    dirname = ",".join(sorted(o for o in overrides if not o.startswith("seed=")))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "task": {"name": "toy"}, **(config or {})}))
    job_cfg = {"override_dirname": dirname, "num": num, "config": {"override_dirname": {"exclude_keys": ["seed"]}}}
    (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": job_cfg}}))


def metrics(seed: int, dev: float, test: float, teacher: float, seconds: float, **extra: Any) -> dict[str, Any]:
    """A metrics.json as the pipeline writes it, with the numbers a test cares about."""
    return {
        "task": {"name": "toy", "main_metric": "accuracy", "sizes": {"train": 8, "validation": 4, "test": 4}},
        "distiller": "basic",
        "loss": ["kd"],
        "seed": seed,
        "teacher": {
            "validation": {"accuracy": teacher, "examples_per_second": 100.0},
            "test": {"accuracy": teacher, "examples_per_second": 100.0},
            "parameters": {"total": 5000, "non_embedding": 3000},
            "examples_per_second": 100.0,
            "source": "cache",
        },
        "student": {
            "validation": {"accuracy": dev, "macro_f1": dev / 2, "examples_per_second": 400.0},
            "test": {"accuracy": test, "macro_f1": test / 2, "examples_per_second": 400.0 + seed},
            "parameters": {"total": 2000, "non_embedding": 1000},
            "examples_per_second": 400.0 + seed,
            "train_seconds": seconds,
            "steps": 6,
            "best_step": 6,
        },
        **extra,
    }


def add_job(sweep: Path, config: str, seed: int, num: int, result: dict | str | None, **cfg: Any) -> Path:
    """result: metrics dict (finished), error text (failed) or None (running)."""
    job = sweep / config / f"seed={seed}"
    write_hydra(job, [*config.split(","), f"seed={seed}"], num, cfg or None)
    if isinstance(result, dict):
        (job / "metrics.json").write_text(json.dumps(result))
    elif isinstance(result, str):
        (job / "error.txt").write_text(result + "\n\nTraceback (most recent call last):\n  ...\n")
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 configurations x 2 finished seeds, one failed job and one running job."""
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    add_job(root, "loss=kd", 1, 0, metrics(1, dev=0.80, test=0.75, teacher=0.80, seconds=10.0))
    add_job(root, "loss=hidden", 1, 1, metrics(1, dev=0.71, test=0.70, teacher=0.80, seconds=20.0))
    add_job(root, "loss=kd", 2, 2, metrics(2, dev=0.84, test=0.79, teacher=0.80, seconds=14.0))
    add_job(root, "loss=hidden", 2, 3, metrics(2, dev=0.75, test=0.74, teacher=0.80, seconds=30.0))
    add_job(root, "loss=kd,loss.kd.weight=-1", 1, 4, ERROR_LINE)
    add_job(root, "loss=hidden", 3, 5, None)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_csv_means_and_stds(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    rows = read_csv(sweep / "report.csv")
    ok = {r["configuration"]: r for r in rows if r["status"] == "ok"}
    assert list(ok) == ["loss=kd", "loss=hidden"]  # sweep order (Hydra job number)
    kd, hidden = ok["loss=kd"], ok["loss=hidden"]
    assert kd["n"] == hidden["n"] == "2"
    assert kd["metric"] == "accuracy" and kd["seeds"] == "1 2"
    sample_std = math.sqrt(2 * 0.02**2)  # two values 0.04 apart: sample std = 0.02 * sqrt(2)
    expected = {
        "student_dev": (0.82, sample_std),
        "student_test": (0.77, sample_std),
        "teacher_test": (0.80, 0.0),
        "ratio_test": ((0.75 / 0.8 + 0.79 / 0.8) / 2, sample_std / 0.8),
        "train_seconds": (12.0, math.sqrt(8.0)),
        "student_examples_per_second": (401.5, math.sqrt(0.5)),
    }
    for col, (mean, std) in expected.items():
        assert float(kd[f"{col}_mean"]) == pytest.approx(mean, abs=1e-12), col
        assert float(kd[f"{col}_std"]) == pytest.approx(std, abs=1e-12), col
    assert float(hidden["student_test_mean"]) == pytest.approx(0.72, abs=1e-12)
    assert float(hidden["student_test_std"]) == pytest.approx(sample_std, abs=1e-12)
    assert float(hidden["student_dev_mean"]) == pytest.approx(0.73, abs=1e-12)
    assert float(hidden["train_seconds_mean"]) == pytest.approx(25.0)
    assert kd["student_params_total_mean"] == "2000" and kd["student_params_non_embedding_mean"] == "1000"
    # every other number is still there, generically
    assert float(kd["student.test.macro_f1_mean"]) == pytest.approx(0.385, abs=1e-12)

    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["configuration"], r["seeds"], r["error"]) for r in failed] == [
        ("loss.kd.weight=-1,loss=kd", "1", ERROR_LINE)
    ]
    running = [r for r in rows if r["status"] == "running"]
    assert [(r["configuration"], r["seeds"]) for r in running] == [("loss=hidden", "3")]

    out = capsys.readouterr().out
    assert "| loss=kd | 2 | 82.00 ± 2.83 | 77.00 ± 2.83 | 80.00 | 96.25% | 2,000 | 1,000 | 12.00 | 402 |" in out
    assert "4 finished, 1 failed, 1 running" in out


def test_markdown_and_png(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--title", "KD vs hidden"]) == 0
    assert not (sweep / "report.md").exists()  # --out is honoured
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# KD vs hidden\n")
    assert "| configuration | n | dev accuracy (%) | test accuracy (%) | teacher test (%) |" in md
    assert "| loss=hidden | 2 | 73.00 ± 2.83 | 72.00 ± 2.83 | 80.00 | 90.00% |" in md
    assert "4 finished, 1 failed, 1 running" in md
    failed = md.split("## Failed", 1)[1]
    assert f"| loss.kd.weight=-1,loss=kd | 1 | {ERROR_LINE} |" in failed
    assert "Traceback" not in md

    png = (out / "report.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE
    import matplotlib.image

    height, width = matplotlib.image.imread(out / "report.png").shape[:2]
    assert width >= 600 and height >= 300


def test_title_from_experiment_and_extra_objects(tmp_path: Path) -> None:
    """Multi-teacher outputs (a list, an ensemble dict) are reported, not crashed on."""
    extra = {
        "teachers": [{"test": {"accuracy": 0.9}}, {"test": {"accuracy": 0.7}, "name": "t2"}],
        "ensemble": {"test": {"accuracy": 0.85}, "flag": True, "note": "avg"},
    }
    for seed, test in ((1, 0.6), (2, 0.8)):
        add_job(tmp_path, "distiller=multi", seed, seed, metrics(seed, 0.7, test, 0.85, 1.0, **extra), experiment="mt")
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# mt\n")
    assert "## Other metrics" in md and "ensemble.test.accuracy" in md and "85.00" in md
    (row,) = read_csv(tmp_path / "report.csv")
    assert float(row["teachers.0.test.accuracy_mean"]) == pytest.approx(0.9)
    assert float(row["student_test_mean"]) == pytest.approx(0.7)
    assert "ensemble.flag_mean" not in row  # booleans are not metrics


def test_metric_option_and_plain_config_dir(tmp_path: Path) -> None:
    """`--metric` picks another metric; a plain-config job (`<sweep>/seed=<n>`, no .hydra) is '(default)'."""
    for seed, dev in ((1, 0.5), (2, 0.7)):
        job = tmp_path / f"seed={seed}"
        job.mkdir()
        (job / "metrics.json").write_text(json.dumps(metrics(seed, dev, dev, 0.9, 1.0)))
    assert main([str(tmp_path), "--metric", "macro_f1"]) == 0
    (row,) = read_csv(tmp_path / "report.csv")
    assert row["configuration"] == "(default)" and row["metric"] == "macro_f1"
    assert float(row["student_test_mean"]) == pytest.approx(0.3)
    assert row["teacher_test_mean"] == ""  # the teacher has no macro_f1 here: blank, not a crash


def test_unknown_metric_is_one_line_error(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep), "--metric", "bleu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brewlab: error: metric 'bleu' not found") and "accuracy" in err
    assert "\n" not in err


def test_cli_on_empty_dir_exits_2(tmp_path: Path) -> None:
    """The real entry point, in a subprocess: one line on stderr, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "brewlab.report", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"brewlab: error: {tmp_path}: no runs found (expected <sweep>/<overrides>/seed=<n>/metrics.json)"
    )
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_not_a_directory_exits_2(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "sweep"
    if kind == "file":
        target.write_text("not a sweep")
    assert main([str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"brewlab: error: {target}: no runs found (expected <sweep>/<overrides>/seed=<n>/metrics.json)\n"


def test_compare_script(sweep: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/compare.py is the same CLI (run in-process: a subprocess would re-import matplotlib)."""
    monkeypatch.setattr(sys, "argv", ["compare.py", str(sweep)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "scripts" / "compare.py"), run_name="__main__")
    assert done.value.code == 0
    assert "| loss=kd | 2 |" in capsys.readouterr().out
    assert (sweep / "report.png").read_bytes()[:8] == PNG_SIGNATURE


def test_overrides_shared_by_every_job_are_stated_once(tmp_path: Path) -> None:
    root = tmp_path / "multirun" / "reduced"
    for num, (config, seed, dev) in enumerate([("loss=kd", 1, 0.8), ("loss=hidden", 1, 0.7), ("loss=kd", 2, 0.9)]):
        add_job(root, f"{config},trainer.epochs=1", seed, num, metrics(seed, dev=dev, test=dev, teacher=0.8, seconds=1.0))
    assert main([str(root)]) == 0
    assert "Every job also ran with: `trainer.epochs=1`" in (root / "report.md").read_text()
    rows = {r["configuration"]: r for r in read_csv(root / "report.csv")}
    assert set(rows) == {"loss=kd", "loss=hidden"}


def test_value_axis_zooms_only_for_close_results_far_from_zero() -> None:
    from brewlab.report.chart import y_limits

    low, high = y_limits([80.55, 80.36], [0.18, 0.36], [80.93])
    assert 79.0 < low < 80.0 and 81.0 < high < 82.5  # every bar, error bar and the teacher inside
    assert y_limits([30.0, 70.0], [2.0, 3.0], [75.0]) == (0.0, 75.0 * 1.25)  # far apart: from zero


REPORT_MODULES = sorted(p.stem for p in (ROOT / "brewlab" / "report").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", REPORT_MODULES)
def test_report_modules_import_no_torch(module: str) -> None:
    """Each report module alone, in a fresh interpreter: the report runs where torch is not installed."""
    code = f"import sys, brewlab.report.{module}; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_whole_report_imports_no_torch(sweep: Path) -> None:
    """Reading, comparing and writing report.csv/.md/.png (matplotlib included) never loads torch."""
    code = (
        "import sys; from brewlab.report.cli import main; code = main([sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(sweep)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (sweep / "report.png").read_bytes()[:8] == PNG_SIGNATURE
