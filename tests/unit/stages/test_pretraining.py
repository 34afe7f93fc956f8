"""Masked-LM pretraining, general distillation and task students started from a general student."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from conftest import ROOT, compose_run, read_metrics

from brewlab.data.tasks.mlm import IGNORE, MaskedLM, chunk_text, mask_tokens
from brewlab.distill.losses import LOGIT_LOSSES

MASK, SPECIAL = 4, 5  # ids 0..4 are special in the fixture vocabulary


def _masked_stats(seed: int, whole: bool = False):
    rng = random.Random(seed)
    data = random.Random(99)
    vocab = list(range(SPECIAL, 1000))
    counts = Counter()
    out = []
    for _ in range(400):
        ids = [2] + [data.choice(vocab) for _ in range(60)] + [3]
        special = [True] + [False] * 60 + [True]
        words = [-1] + [k // 2 for k in range(60)] + [-1] if whole else None
        inputs, labels = mask_tokens(ids, words, special, rng, 0.15, MASK, vocab)
        out.append((inputs, labels))
        for pos, (i, o, lab) in enumerate(zip(ids, inputs, labels, strict=True)):
            counts["tokens"] += not special[pos]
            if lab == IGNORE:
                assert i == o  # unmasked positions are untouched
                continue
            assert not special[pos] and lab == i
            counts["masked"] += 1
            counts["mask" if o == MASK else "kept" if o == i else "random"] += 1
    return counts, out


def test_masking_rate_and_the_80_10_10_rule():
    counts, first = _masked_stats(seed=1)
    assert 0.14 <= counts["masked"] / counts["tokens"] <= 0.16  # 3,600 of 24,000 tokens
    assert 0.77 <= counts["mask"] / counts["masked"] <= 0.83
    assert 0.08 <= counts["random"] / counts["masked"] <= 0.12
    assert 0.08 <= counts["kept"] / counts["masked"] <= 0.12
    assert _masked_stats(seed=1)[1] == first  # same seed, same masks
    assert _masked_stats(seed=2)[1] != first


def test_whole_word_masking_takes_every_piece_of_a_chosen_word():
    counts, out = _masked_stats(seed=3, whole=True)
    assert 0.13 <= counts["masked"] / counts["tokens"] <= 0.17
    for _, labels in out:
        for word in range(30):  # positions 1+2w and 2+2w form word w
            assert (labels[1 + 2 * word] == IGNORE) == (labels[2 + 2 * word] == IGNORE)


def test_encode_masks_jieba_words_of_chinese_text():
    from brewlab.models.vocab import build_char_tokenizer

    texts = ["中华人民共和国成立以来经济发展很快。", "今天北京的天气非常好，我们去公园散步吧。"] * 20
    tok = build_char_tokenizer(texts, 1, None)
    rows = [{"text": t + str(i)} for i, t in enumerate(texts)]
    cfg = {"max_seq_length": 64, "masking": {"prob": 0.15, "whole_word": True, "seed": 0}}
    feats = MaskedLM.encode(rows, tok, cfg)
    import jieba

    for row, feat in zip(rows, feats, strict=True):
        labels = feat["labels"][1:-1]  # [CLS] text [SEP]; one token per character
        assert labels.count(IGNORE) < len(labels)  # at least one position is predicted
        start = 0
        for word in jieba.lcut(row["text"], HMM=False):
            piece = labels[start : start + len(word)]
            assert all(x == IGNORE for x in piece) or all(x != IGNORE for x in piece), word
            start += len(word)
    assert MaskedLM.encode(rows, tok, cfg)[5]["input_ids"] == feats[5]["input_ids"]  # static masks


def test_mlm_kd_ignores_unmasked_positions():
    labels = torch.full((2, 6), IGNORE)
    labels[0, 2], labels[1, 4] = 7, 3
    mask = MaskedLM.logits_mask({"labels": labels})
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    loss = LOGIT_LOSSES.get("ce")(s, t, 2.0, mask=mask)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] += 5 * torch.randn_like(s2[~mask])
    t2[~mask] -= 3.0
    assert torch.allclose(LOGIT_LOSSES.get("ce")(s2, t2, 2.0, mask=mask), loss)
    s2[0, 2, 0] += 3.0  # a masked position counts
    assert not torch.allclose(LOGIT_LOSSES.get("ce")(s2, t2, 2.0, mask=mask), loss)


def test_mlm_score_counts_only_masked_positions():
    import numpy as np

    feats = [{"labels": [IGNORE, 5, IGNORE, 6]}, {"labels": [IGNORE, 9, IGNORE]}]
    # per position (predicted id, log-probability of the original token)
    outs = [np.array([[0, 0], [5, np.log(0.5)], [1, 0], [2, np.log(0.25)]]), np.array([[0, 0], [9, np.log(0.5)], [0, 0]])]
    metrics = MaskedLM.score(outs, feats, [], [])
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["masked_tokens"] == 3
    assert metrics["perplexity"] == pytest.approx(np.exp(-(2 * np.log(0.5) + np.log(0.25)) / 3))


def test_chunk_text_cuts_at_sentence_ends():
    text = "第一句话很短。第二句话稍微长一点点！" + "很长" * 40 + "。结尾"
    pieces = chunk_text(text, 20)
    assert "".join(pieces) == text and all(len(p) <= 20 for p in pieces)
    assert pieces[0] == "第一句话很短。第二句话稍微长一点点！"  # whole sentences packed up to the limit
    assert pieces[1] == "很长" * 10 and pieces[-1] == "。结尾"  # an over-long sentence is cut hard


def test_corpus_holds_out_every_evaluation_text(tmp_path):

    from brewlab.data.tasks import load_task_data
    from brewlab.data.tasks.mlm import corpus_paragraphs

    cfg = compose_run("teacher=pretrained_scratch", f"cache_dir={tmp_path}")
    mlm = cfg["teacher"]["pretrain"]["task"]
    paragraphs = set(corpus_paragraphs(mlm))
    held = {s: load_task_data(mlm["corpus"]["held_out"][s]) for s in ("pd98_ner", "cmrc_pd98")}
    reviews = load_task_data(mlm["corpus"]["train_of"]["reviews_zh"])
    for split in ("validation", "test"):
        for row in held["pd98_ner"].splits[split]:
            assert "".join(row["tokens"]) not in paragraphs
        for row in held["cmrc_pd98"].splits[split]:
            assert not any(line in paragraphs for line in row["context"].split("\n"))
        for row in reviews.splits[split]:
            assert row["text"] not in paragraphs
    assert all(row["text"] in paragraphs for row in reviews.splits["train"])  # training text is in
    assert len(paragraphs) > 25000
    pieces = load_task_data(mlm).splits["train"]
    assert max(len(r["text"]) for r in pieces) <= 126 and len(pieces) > 30000


def test_pretrain_general_distill_and_task_stage_end_to_end(cli, tmp_path):
    """Each new stage under debug=smoke: pretrain + fine-tune a teacher, distil the masked LM
    into a general student, start a task student from it."""
    from transformers import AutoModelForMaskedLM

    cache_dir = tmp_path / "cache"  # its own: another test may have pretrained the same smoke masked LM

    proc, run = cli("teacher=pretrained_scratch", "debug=smoke", "logger=none", cache=cache_dir, name="pretrained")
    assert "pretraining a masked LM on mlm_zh" in proc.stdout + proc.stderr
    metrics = read_metrics(run)
    assert metrics["teacher"]["source"] == "trained" and "accuracy" in metrics["student"]["test"]
    stages = metrics["teacher"]["pretraining"], metrics["teacher"]["training"]
    assert all(stage["steps"] > 0 and stage["train_seconds"] > 0 for stage in stages)
    assert "perplexity" in stages[0]["dev"] and stages[0]["task"]["train"] == 192  # smoke slice of the corpus

    # any masked LM (a hub id such as bert-base-chinese; here the cached local one) fine-tunes the same way
    (base,) = (cache_dir / "pretrained").iterdir()
    _, hf_run = cli("teacher=hf", f"teacher.name_or_path={base}", "teacher.finetune=true", "debug=smoke",
                    "logger=none", cache=cache_dir, name="hf_finetune")
    metrics = read_metrics(hf_run)
    assert metrics["teacher"]["source"] == "trained" and metrics["teacher"]["parameters"]["total"] > 0

    proc, general = cli("+experiment=general_distillation", "debug=smoke", "logger=none", cache=cache_dir, name="general")
    assert "pretrained masked LM: reused cache" in proc.stdout + proc.stderr  # the cached stage is shared
    metrics = read_metrics(general)
    assert metrics["task"]["name"] == "mlm_zh" and metrics["teacher"]["source"] == "loaded"
    assert set(metrics["loss"]) == {"hard", "kd", "hidden"} and metrics["student"]["test"]["masked_tokens"] > 0
    model = AutoModelForMaskedLM.from_pretrained(general / "student")
    assert type(model).__name__ == "BertForMaskedLM"

    proc, task = cli("teacher=pretrained_scratch", f"student.init_from={general / 'student'}", "debug=smoke",
                     "logger=none", "trainer.max_steps=1", "optim.lr=1e-12", cache=cache_dir, name="task")
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(task / "student")
    for ours, theirs in zip(student.bert.encoder.parameters(), model.bert.encoder.parameters(), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)  # the encoder came from the general student

    proc, _ = cli(f"student.init_from={general / 'student'}", "debug=smoke", "logger=none",
                  expect_ok=False, cache=cache_dir, name="mismatch")
    assert proc.returncode == 2 and "student.init_from=" in proc.stderr and "another vocabulary" in proc.stderr
    assert "teacher: training" not in proc.stdout + proc.stderr  # refused before any teacher work


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "metric", "floor"), [("reviews_zh", "test_accuracy", 60.0), ("pd98_ner", "test_f1", 25.0)]
)
def test_linear_baseline_scores_both_task_kinds(task, metric, floor):
    """The evidence table's linear row: it fits on train, picks its regularisation on
    validation and prints a test score well above chance on a small slice."""
    import re
    import subprocess
    import sys

    limits = ["task.limit.train=300", "task.limit.validation=60", "task.limit.test=60"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "linear_baseline.py"), f"task={task}", *limits],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sizes={'train': 300, 'validation': 60, 'test': 60}" in proc.stdout
    score = float(re.search(rf"{metric}=([\d.]+)", proc.stdout).group(1))
    assert floor < score <= 100.0  # chance is 50% accuracy / ~0 entity F1
