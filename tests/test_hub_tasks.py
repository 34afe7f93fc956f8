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


def test_article_per_row_hub_uploads_are_flattened(monkeypatch):
    """voidful/DRCD stores one article per row under a `data` column; it reads like the flat copies."""
    import datasets
    from omegaconf import OmegaConf

    from brewlab.tasks import load_task_data

    def article(i: int) -> dict:
        context = f"台達電子成立於{1971 + i}年。"
        answer = str(1971 + i)
        qa = {"id": f"q{i}", "question": "台達電子成立於哪一年？", "answers": [{"id": "1", "text": answer, "answer_start": 7}]}
        return {"data": {"id": f"a{i}", "title": "台達", "paragraphs": [{"id": f"p{i}", "context": context, "qas": [qa]}]}}

    hub = {"train": [article(i) for i in range(8)], "dev": [article(10)], "test": [article(20), article(21)]}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub)
    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "task" / "drcd.yaml"))
    data = load_task_data(cfg)
    assert data.sizes() == {"train": 8, "validation": 1, "test": 2}
    row = data.splits["test"][1]
    assert row["context"][row["answers"]["answer_start"][0]:].startswith("1992")
    assert row["answers"]["text"] == ["1992"]
