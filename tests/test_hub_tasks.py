"""Hub classification tasks: local files in the hub format run end to end; hub ids fail fast offline."""

from __future__ import annotations

from pathlib import Path

from conftest import read_metrics

FIXTURES = Path(__file__).parent / "fixtures"


def test_xnli_sentence_pairs_from_local_files(cli):
    train, dev = FIXTURES / "xnli" / "train.jsonl", FIXTURES / "xnli" / "dev.jsonl"
    _, run_dir = cli("task=xnli", f"task.data.train_file={train}", f"task.data.validation_file={dev}", "debug=smoke", "logger=none")
    metrics = read_metrics(run_dir)
    assert metrics["task"]["sizes"] == {"train": 41, "validation": 15, "test": 4}  # test carved from train (10%, rounded)
    assert set(metrics["student"]["test"]) >= {"accuracy", "macro_f1"}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    enc = tok("我在看书。", "我在读书。")
    assert enc["token_type_ids"].count(1) == 6  # the pair is encoded as two segments


def test_hub_id_fails_fast_offline_with_a_pointer_to_local_files(cli):
    proc, _ = cli("task=xnli", "debug=smoke", "logger=none", expect_ok=False)
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("brewlab: error:")]
    assert "task.hub_id='facebook/xnli'" in line and "task.data.train_file" in line
    assert "Traceback" not in proc.stderr
