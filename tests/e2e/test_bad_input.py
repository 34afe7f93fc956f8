"""Each user mistake: a clear message naming the key, value and choices; non-zero exit; no
traceback; nothing finished is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import read_metrics

# (overrides, exit code, fragments the error must contain)
CASES = [
    (["loss=focal"], 1, ["loss/focal", "Available options in 'loss'", "hidden", "nst"]),
    (["loss=nst+focal"], 1, ["loss/nst+focal", "Available options in 'loss'"]),
    (["distiller=magic"], 1, ["distiller/magic", "Available options in 'distiller'", "general"]),
    (["task=imdb"], 1, ["task/imdb", "Available options in 'task'", "reviews_zh"]),
    (["student=t99"], 1, ["student/t99", "Available options in 'student'", "t3_small"]),
    (["task.tokenizer.min_freq=0"], 2, ["task.tokenizer.min_freq=0 must be a number >= 1"]),
    (["task.split.seed=1.5"], 2, ["task.split.seed=1.5 must be an integer"]),
    (["+student.kind=lstm"], 2, ["student.kind='lstm' is not valid; choose one of: bert, bigru"]),
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
    (
        ["task=pd98_ner", "scheduler=cwsm"],
        2,
        ["scheduler.temperature.beta=1 can drive the cwsm temperature to <= 0 on task pd98_ner with 7 classes", "beta <= 0.672"],
    ),
    (
        ["scheduler=flsw", "scheduler.temperature.base=2"],
        2,
        ["scheduler.temperature.beta=1 can drive the flsw temperature to <= 0 on task reviews_zh", "beta <= 0.5"],
    ),
    (["scheduler=cwsm", "scheduler.temperature.eps=0"], 2, ["scheduler.temperature.eps=0 must be > 0"]),
    (
        ["distiller=multi_task", "augmentation=char"],
        2,
        ["augmentation ops [char] apply to the run's task, but distiller=multi_task trains distiller.tasks; set augmentation=none"],
    ),
    (["baselines.labels_only=maybe"], 2, ["baselines.labels_only='maybe' must be true or false"]),
    (
        ["distiller=trainer", "baselines.labels_only=true"],
        2,
        ["baselines.labels_only=true with distiller=trainer: its student already learns from labels only"],
    ),
    (
        ["task=cmrc_pd98", "baselines.linear=true"],
        2,
        ["baselines.linear=true: task cmrc_pd98 is span_extraction; the linear baseline covers classification, token_classification"],
    ),
    (["teacher=minilm", "teacher.checksums={vocab.txt:'0000'}"], 2, ["vocab.txt has SHA-256 07eced375cec144d..., not the recorded 0000..."]),
    (["loss.kd.weight=-1"], 2, ["loss.kd.weight=-1 must be a number >= 0"]),
    (["plugins=[no_such_plugin_module]"], 2, ["plugins: cannot import 'no_such_plugin_module' (ModuleNotFoundError"]),
    (["plugins=my_losses"], 2, ["plugins='my_losses' must be a list of module names, e.g. plugins=[my_losses]"]),
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
    (["optim.lr=abc"], 2, ["optim.lr='abc' must be a number > 0"]),
    (["optim.lr=-0.001"], 2, ["optim.lr=-0.001 must be a number > 0"]),
    (["trainer.lr=abc"], 1, ["Could not override 'trainer.lr'", "Key 'lr' not in 'TrainerSettings'", "full_key: trainer.lr"]),
    (["task.train_fraction=0"], 2, ["task.train_fraction=0 must be a fraction in (0, 1]"]),
    (
        ["task=cmrc_pd98", "task.doc_stride=300"],
        2,
        ["task.doc_stride=300 must be smaller than the passage room of a window"],
    ),
    (["resume=maybe"], 2, ["resume='maybe' is not valid; choose one of: auto, false, true"]),
    (["trainer.nonfinite=ignore"], 2, ["trainer.nonfinite='ignore' is not valid; choose one of: skip, stop"]),
    (["trainer.teacher_store_features=fp8"], 2, ["trainer.teacher_store_features='fp8' is not valid; choose one of: bf16, fp16, fp32"]),
    (["trainer.teacher_store_max_gb=0"], 2, ["trainer.teacher_store_max_gb=0 must be a number > 0"]),
    (["trainer.checkpoint_every=0"], 2, ["trainer.checkpoint_every=0 must be a number >= 1"]),
    (["trainer.length_pool=0"], 2, ["trainer.length_pool=0 must be a number >= 1"]),
    (
        ["teacher.train.length_pool=two"],
        1,
        ["Value 'two' of type 'str' could not be converted to Integer", "full_key: teacher.train.length_pool"],
    ),
    (["teacher.train.length_pool=0"], 2, ["teacher.train.length_pool=0 must be a number >= 1"]),
    (["seed=abc"], 2, ["seed='abc' must be an integer"]),
    (["trainer.eval_every=-5"], 2, ["trainer.eval_every=-5 must be a number >= 1"]),
    (["logger.mode=onlin"], 2, ["logger.mode='onlin' is not valid; choose one of: disabled, offline, online"]),
    (["trainer.device=cuda"], 2, ["trainer.device=cuda but this machine has no CUDA device; use trainer.device=cpu or auto"]),
    (["trainer.device=tpu"], 2, ["trainer.device='tpu' is not valid; choose one of: auto, cpu, cuda, cuda:<index>"]),
    (
        ["student.arch.hidden_size=100", "student.arch.num_attention_heads=3"],
        2,
        ["student.arch.hidden_size=100 is not a multiple of student.arch.num_attention_heads=3; e.g. student.arch.hidden_size=99"],
    ),
    (["cache_dir=/proc/brewlab-cache"], 2, ["cache_dir='/proc/brewlab-cache' is not a writable directory"]),
    (["trainer.compile=maybe"], 1, ["Value 'maybe' is not a valid bool", "full_key: trainer.compile"]),
    (["trainer.unknown_key=1"], 1, ["Key 'unknown_key' not in 'TrainerSettings'"]),
    (["trainer.heap_trim_every_s=0"], 2, ["trainer.heap_trim_every_s=0 must be a number > 0"]),
    (
        ["task=mr_en", "teacher=minilm", "distiller=basic", "augmentation=mlm"],
        2,
        ["augmentation.ops.mlm.model_name_or_path is not set", "pretrained on zh text (mlm_zh)", "task mr_en is en"],
    ),
    (["hydra.run.dir=/dev/null/run"], 2, ["hydra.run.dir='/dev/null/run' is not a writable directory (Not a directory)"]),
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


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _tiny_model_dir(path: Path, texts: list[str], weights: bool = True) -> str:
    """A saved 1-layer BERT with its own character vocabulary (another run's model)."""
    from transformers import BertConfig, BertForSequenceClassification

    from brewlab.models.vocab import build_char_tokenizer

    tokenizer = build_char_tokenizer(texts, 1, None)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if not weights:
        (path / "model.safetensors").unlink()
    return str(path)


GOOD = [f'{{"text": "好评{i}", "label": {i % 2}}}' for i in range(8)]


def train_file(d: Path, lines: list[str]) -> list[str]:
    return [f"task.data.train_file={_write(d / 'train.jsonl', ''.join(line + chr(10) for line in lines))}"]


def gbk_train_file(d: Path) -> list[str]:
    """The GOOD rows saved in GBK, as Chinese data often arrives: 好 is 0xba 0xc3 there."""
    path = d / "train.jsonl"
    path.write_bytes("".join(line + "\n" for line in GOOD).encode("gbk"))
    return [f"task.data.train_file={path}"]


# (id, overrides made from a scratch directory, fragments the one-line error must contain)
DATA_CASES = [
    (
        "malformed JSONL line",
        lambda d: train_file(d, [*GOOD[:2], '{"text": oops', *GOOD[2:]]),
        ["train.jsonl' line 3: not valid JSON"],
    ),
    ("empty data file", lambda d: train_file(d, []), ["train.jsonl': the file holds no examples"]),
    ("data file not UTF-8", lambda d: gbk_train_file(d), ["train.jsonl' is not UTF-8 text (byte 0xba at offset 10)"]),
    (
        "label outside the label set",
        lambda d: train_file(d, [*GOOD, '{"text": "差", "label": 7}']),
        ["label 7 is outside 0..1"],
    ),
    (
        "label name outside the label set",
        lambda d: train_file(d, [*GOOD, '{"text": "差", "label": "neutral"}']),
        ["label 'neutral' is not in task.label_names=['negative', 'positive']"],
    ),
    (
        "teacher directory without weights",
        lambda d: ["teacher=hf", f"teacher.name_or_path={_tiny_model_dir(d / 'teacher', ['好差'], weights=False)}"],
        ["teacher.name_or_path=", "not a model directory (needs config.json and weights)"],
    ),
    (
        "teacher/student tokenizer mismatch",
        lambda d: [f"student.init_from={_tiny_model_dir(d / 'student', ['完全不同的字'])}"],
        ["was trained with another vocabulary than this run's tokenizer"],
    ),
]


@pytest.mark.parametrize(("make", "fragments"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_and_model_message(cli, tmp_path, make, fragments):
    scratch = tmp_path / "inputs"
    scratch.mkdir()
    proc, run_dir = cli("debug=smoke", "logger=none", *make(scratch), expect_ok=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("brewlab: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (run_dir / "metrics.json").exists()


def test_the_linear_baseline_names_the_task_kinds_it_covers():
    from brewlab.core.errors import BrewlabError
    from brewlab.eval.baselines import linear_baseline

    with pytest.raises(BrewlabError) as err:
        linear_baseline({"name": "cmrc_pd98", "kind": "span_extraction"}, {}, [])
    assert str(err.value) == "task=cmrc_pd98 is span_extraction; the linear baselines cover classification, token_classification"


def test_the_table_covers_at_least_45_malformed_inputs():
    assert len(CASES) + len(DATA_CASES) >= 45


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
    # a later run that succeeds in the same directory does not leave the old failure behind
    cli("debug=smoke", "logger=none", "seed=2", name="same", cache=cache)
    assert not (run_dir / "error.txt").exists() and (run_dir / "metrics.json").is_file()


def test_full_traceback_on_request(cli):
    proc, _ = cli("debug=smoke", "logger=none", "loss.kd.weight=-1", expect_ok=False, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr
