"""Hub classification tasks: local files in the hub format run end to end; hub ids fail fast offline."""

from __future__ import annotations

import pytest
from conftest import ROOT, read_metrics

FIXTURES = ROOT / "tests" / "fixtures"


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


def test_unreachable_hub_fails_in_seconds_not_after_retries(cli):
    """No offline variables set and no route to the endpoint: the connection probe answers with
    one line at once (the message only that probe writes), instead of ~90 s of retries."""
    env = {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc, _ = cli("task=xnli", "debug=smoke", "logger=none", expect_ok=False, env=env)
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("brewlab: error:")]
    assert "http://127.0.0.1:9 cannot be reached" in line and "task.data.train_file" in line


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["teacher=hf", "teacher.name_or_path=bert-base-chinese"], "teacher.name_or_path='bert-base-chinese'"),
        (["augmentation=mlm", "augmentation.ops.mlm.model_name_or_path=hfl/chinese-roberta-wwm-ext"],
         "augmentation.ops.mlm.model_name_or_path='hfl/chinese-roberta-wwm-ext'"),
    ],
)
def test_hub_model_ids_fail_at_startup_when_the_hub_is_unreachable(cli, overrides, key):
    """A hub model id is probed before anything runs: one line naming the key, not minutes of
    transformers retries after the data is read."""
    env = {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc, _ = cli(*overrides, "debug=smoke", "logger=none", expect_ok=False, env=env)
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("brewlab: error:")]
    assert key in line and "http://127.0.0.1:9 cannot be reached" in line and "local model directory" in line
    assert "task reviews_zh" not in proc.stdout + proc.stderr  # refused before the data was read


def test_article_per_row_hub_uploads_are_flattened(monkeypatch):
    """voidful/DRCD stores one article per row under a `data` column; it reads like the flat copies."""
    import datasets
    from omegaconf import OmegaConf

    from brewlab.data.tasks import load_task_data

    def article(i: int) -> dict:
        context = f"台達電子成立於{1971 + i}年。"
        answer = str(1971 + i)
        qa = {"id": f"q{i}", "question": "台達電子成立於哪一年？", "answers": [{"id": "1", "text": answer, "answer_start": 7}]}
        return {"data": {"id": f"a{i}", "title": "台達", "paragraphs": [{"id": f"p{i}", "context": context, "qas": [qa]}]}}

    hub = {"train": [article(i) for i in range(8)], "dev": [article(10)], "test": [article(20), article(21)]}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no connection probe: the stub stands in for the hub
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "task" / "drcd.yaml"))
    data = load_task_data(cfg)
    assert data.sizes() == {"train": 8, "validation": 1, "test": 2}
    row = data.splits["test"][1]
    assert row["context"][row["answers"]["answer_start"][0]:].startswith("1992")
    assert row["answers"]["text"] == ["1992"]


HUB_ROWS = {  # one row per hub data set, in its own column names
    "lcqmc": {"sentence1": "今天天气怎么样", "sentence2": "今天天气如何", "score": 1},
    "chnsenticorp": {"text": "酒店很干净，服务也好", "label": 1},
    "sst2": {"idx": 0, "sentence": "a gripping, funny film", "label": 1},
    "mnli": {"premise": "A man is playing.", "hypothesis": "Nobody plays.", "label": 2, "idx": 0},
}


@pytest.mark.parametrize("task", sorted(HUB_ROWS))
def test_classification_hub_formats_read_from_local_files(task, tmp_path):
    from omegaconf import OmegaConf

    from brewlab.core.files import write_jsonl
    from brewlab.data.tasks import load_task_data

    row = HUB_ROWS[task]
    files = {}
    for split, n in (("train", 30), ("validation", 5), ("test", 5)):
        files[split] = tmp_path / f"{split}.jsonl"
        write_jsonl([row] * n, files[split])
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "task" / f"{task}.yaml"))
    cfg["data"] = {f"{split}_file": str(path) for split, path in files.items()}
    data = load_task_data(cfg)
    assert data.sizes() == {"train": 30, "validation": 5, "test": 5}
    example = data.splits["test"][0]
    fields = cfg["text_fields"]
    assert example["text"] == row[fields[0]] and example["label"] == row[cfg["label_field"]]
    assert example["text_pair"] == (row[fields[1]] if len(fields) > 1 else None)
