"""End to end with debug=smoke through the real CLI: outputs, reload, cache reuse, W&B files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import read_metrics

SPLIT_KEYS = {"accuracy", "macro_f1", "examples_per_second"}


def _check_outputs(run_dir, distiller):
    metrics = read_metrics(run_dir)
    assert metrics["distiller"] == distiller
    assert metrics["task"]["sizes"] == {"train": 192, "validation": 64, "test": 64}
    for role in ("teacher", "student"):
        entry = metrics[role]
        for split in ("validation", "test"):
            assert SPLIT_KEYS <= set(entry[split])
            assert 0.0 <= entry[split]["accuracy"] <= 1.0
        assert entry["parameters"]["total"] > entry["parameters"]["non_embedding"] > 0
        assert entry["examples_per_second"] > 0
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "run.log").is_file()
    return metrics


def _reload_and_compare(run_dir):
    """The saved student loads with from_pretrained and gives the predictions behind metrics.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from brewlab.data.tasks import load_task_data

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "student").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    assert tok.cls_token == "[CLS]" and tok.mask_token == "[MASK]" and tok.is_fast
    import yaml

    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    rows = load_task_data(cfg["task"]).splits["test"]
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(rows), 16):
            chunk = rows[start : start + 16]
            enc = tok(
                [r["text"] for r in chunk],
                truncation=True,
                max_length=cfg["task"]["max_seq_length"],
                padding=True,
                return_tensors="pt",
            )
            preds = model(**enc).logits.argmax(-1).numpy()
            correct += int((preds == np.array([r["label"] for r in chunk])).sum())
    assert correct / len(rows) == pytest.approx(read_metrics(run_dir)["student"]["test"]["accuracy"])


@pytest.mark.parametrize(
    "distiller,loss,terms",
    [
        ("trainer", "hard", {"hard"}),
        ("basic", "kd+hard", {"kd", "hard"}),
        ("general", "nst+hidden+att", {"kd", "nst", "hidden", "att"}),
    ],
)
def test_smoke_end_to_end(cli, distiller, loss, terms):
    # a narrower student than the smoke teacher (32) so hidden matches need a projection
    proc, run_dir = cli(
        "debug=smoke", f"distiller={distiller}", f"loss={loss}", "logger=none", "student.arch.hidden_size=16"
    )
    metrics = _check_outputs(run_dir, distiller)
    assert set(metrics["loss"]) == terms
    assert "teacher" in proc.stdout and "student" in proc.stdout and "test accuracy" in proc.stdout
    _reload_and_compare(run_dir)
    projections = run_dir / "student" / "projections.safetensors"
    assert projections.is_file() == (distiller == "general")
    if distiller == "general":
        from safetensors.torch import load_file

        weights = load_file(projections)
        # uniform mapping of 4 teacher layers onto 2 student layers: hidden states 0, 1, 2
        assert {k for k in weights if k.endswith("weight")} == {f"hidden_{i}.weight" for i in range(3)}
        assert weights["hidden_0.weight"].shape == (32, 16)


def test_teacher_cache_reused_and_hf_teacher_from_directory(cli, tmp_path):
    cache = tmp_path / "fresh-cache"
    _, first = cli("debug=smoke", "logger=none", name="first", cache=cache)
    assert read_metrics(first)["teacher"]["source"] == "trained"
    _check_run_log((first / "run.log").read_text(encoding="utf-8"))
    (teacher_dir,) = (cache / "teachers").iterdir()
    stamp = (teacher_dir / "model.safetensors").stat().st_mtime_ns
    _, second = cli("debug=smoke", "logger=none", name="second", cache=cache)
    assert read_metrics(second)["teacher"]["source"] == "cache"
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp
    for key in ("accuracy", "macro_f1"):
        assert read_metrics(second)["teacher"]["test"][key] == read_metrics(first)["teacher"]["test"][key]
    # the student's learning rate leaves the teacher alone (its stage has its own train.lr);
    # any other optimizer setting trains another teacher
    _, student_lr = cli("debug=smoke", "logger=none", "optim.lr=3e-4", name="student_lr", cache=cache)
    assert read_metrics(student_lr)["teacher"]["source"] == "cache"
    _, decay = cli("debug=smoke", "logger=none", "optim.weight_decay=0.05", name="decay", cache=cache)
    assert read_metrics(decay)["teacher"]["source"] == "trained"
    # the same model through teacher=hf from its local directory
    _, third = cli(
        "debug=smoke", "logger=none", "teacher=hf", f"teacher.name_or_path={teacher_dir}", name="third", cache=cache
    )
    m3 = read_metrics(third)
    assert m3["teacher"]["source"] == "loaded"
    assert m3["teacher"]["test"]["accuracy"] == read_metrics(first)["teacher"]["test"]["accuracy"]


def _check_run_log(text: str) -> None:
    """run.log tells the run after the fact: each stage's start, every logged interval (loss
    terms and learning rate) and every evaluation. Smoke: 6 steps, a log every 2, one dev pass."""
    import re

    teacher, student = text.split("stage student: distiller=general loss=hard+kd seed=1, checkpoints in ")
    for stage, terms in ((teacher, {"hard", "loss"}), (student, {"hard", "kd", "loss"})):
        intervals = re.findall(r"step (\d+)/6 lr \S+ (.*)", stage)
        assert [int(step) for step, _ in intervals] == [2, 4, 6]
        for _, shown in intervals:
            assert {kv.split("=")[0] for kv in shown.split()} == terms
        assert len(re.findall(r"step 6/6 dev accuracy=0\.\d+ examples_per_second=\S+ macro_f1=0\.\d+\n", stage)) == 1
    assert "teacher: training from scratch" in teacher and "cached " in teacher
    # each stage's start and end, in the same words
    assert re.search(r"stage teacher: distiller=trainer loss=hard seed=0, checkpoints in \S+/checkpoints/teachers/", teacher)
    for stage, part in (("teacher", teacher), ("student", student)):
        assert re.search(rf"stage {stage}: done, 6 steps in [\d.]+ s, best dev 0\.\d+ at step 6\n", part)


def test_wandb_offline_files_in_run_dir(cli):
    _, run_dir = cli("debug=smoke", "logger=wandb")
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    assert read_metrics(run_dir)["student"]["test"]["accuracy"] >= 0


def test_init_from_teacher_layers_runs(cli):
    _, run_dir = cli("debug=smoke", "logger=none", "student.init_from_teacher_layers=[0,2]")
    assert read_metrics(run_dir)["student"]["parameters"]["non_embedding"] > 0
