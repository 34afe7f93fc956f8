"""Each user mistake: a clear message naming the key, value and choices; non-zero exit; no
traceback; nothing finished is lost."""

from __future__ import annotations

import pytest
from conftest import read_metrics

# (overrides, exit code, fragments the error must contain)
CASES = [
    (["loss=focal"], 1, ["loss/focal", "Available options in 'loss'", "hidden", "nst"]),
    (["loss=nst+focal"], 1, ["loss/nst+focal", "Available options in 'loss'"]),
    (["distiller=magic"], 1, ["distiller/magic", "Available options in 'distiller'", "general"]),
    (["task=imdb"], 1, ["task/imdb", "Available options in 'task'", "reviews_zh"]),
    (["student=t99"], 1, ["student/t99", "Available options in 'student'", "t3_small"]),
    (["distiller.name=magic"], 2, ["distiller='magic' is not valid; choose one of: basic, general, multi_task, multi_teacher, trainer"]),
    (["loss.kd.fn=js"], 2, ["loss.kd.fn='js' is not valid; choose one of: ce, kl, mse"]),
    (
        ["distiller=general", "loss=hidden", "loss.hidden.layers=[{teacher:9,student:1}]"],
        2,
        ["loss.hidden.layers: teacher layer 9 is beyond the teacher's depth (hidden layers 0..4)"],
    ),
    (
        ["distiller=general", "loss=hidden", "loss.hidden.layers=[{teacher:1,student:5}]"],
        2,
        ["loss.hidden.layers: student layer 5 is beyond the student's depth (hidden layers 0..2)"],
    ),
    (
        ["student.init_from_teacher_layers=[0,7]"],
        2,
        ["student.init_from_teacher_layers: layer 7 is beyond the teacher's depth (0..3)"],
    ),
    (["scheduler.temperature.base=0"], 2, ["scheduler.temperature.base=0", "> 0"]),
    (["scheduler.temperature.base=-2"], 2, ["scheduler.temperature.base=-2", "> 0"]),
    (["loss.kd.weight=-1"], 2, ["loss.kd.weight=-1 must be a number >= 0"]),
    (
        ["task.data.train_file=/nonexistent/train.jsonl"],
        2,
        ["task.data.train_file='/nonexistent/train.jsonl': file not found"],
    ),
    (
        ["teacher=hf", "teacher.name_or_path=/nonexistent/teacher"],
        2,
        ["teacher.name_or_path='/nonexistent/teacher': directory not found"],
    ),
    (
        ["distiller=basic", "loss=hidden"],
        2,
        ["distiller=basic takes logit losses only but loss has [hidden]; use distiller=general"],
    ),
    (
        ["distiller=general", "loss=hidden", "loss.hidden.proj=null", "student.arch.hidden_size=16"],
        2,
        ["loss.hidden.proj=null", "set loss.hidden.proj=linear"],
    ),
    (["student.vocab_size=123"], 2, ["student.vocab_size=123 does not match the task's tokenizer"]),
]


@pytest.mark.parametrize(("overrides", "code", "fragments"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_message(cli, overrides, code, fragments):
    proc, run_dir = cli("debug=smoke", "logger=none", *overrides, expect_ok=False)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr[-2000:]
    if code == 2:  # brewlab's own errors are exactly one line
        lines = [line for line in proc.stderr.splitlines() if line.startswith("brewlab: error:")]
        assert len(lines) == 1
    assert not (run_dir / "metrics.json").exists()


def test_failed_run_keeps_earlier_outputs_and_teacher_cache(cli, tmp_path):
    cache = tmp_path / "cache"
    _, run_dir = cli("debug=smoke", "logger=none", name="same", cache=cache)
    before = (run_dir / "metrics.json").read_bytes()
    (teacher_dir,) = (cache / "teachers").iterdir()
    weights = (teacher_dir / "model.safetensors").read_bytes()
    # fails after the teacher is loaded from cache, in the same output directory
    proc, again = cli("debug=smoke", "logger=none", "student.vocab_size=5", name="same", cache=cache, expect_ok=False)
    assert proc.returncode == 2 and again == run_dir
    assert (run_dir / "metrics.json").read_bytes() == before
    assert read_metrics(run_dir)["teacher"]["source"] == "trained"
    assert (run_dir / "student" / "model.safetensors").is_file()
    assert (teacher_dir / "model.safetensors").read_bytes() == weights
    assert "student.vocab_size=5" in (run_dir / "error.txt").read_text()


def test_full_traceback_on_request(cli):
    proc, _ = cli("debug=smoke", "logger=none", "loss.kd.weight=-1", expect_ok=False, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr
