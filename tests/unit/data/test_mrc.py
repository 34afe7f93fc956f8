"""Span-extraction MRC: windowing and decoding, CMRC/SQuAD metrics, the generated cmrc_pd98 data
set, nested CMRC files end to end through the CLI, and the offline hub error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, compose_run, read_metrics

from brewlab.config.schema import TrainerSettings, settings
from brewlab.core.errors import BrewlabError
from brewlab.data.tasks import KINDS, SPLITS, load_task_data
from brewlab.data.tasks.cmrc_pd98 import cmrc_pd98, pd98_files
from brewlab.data.tasks.mrc import MASKED, check_config
from brewlab.data.tasks.mrc_metrics import answer_metrics, mixed_segmentation, score_en, score_zh
from brewlab.data.tasks.pd98 import parse_tagged_line
from brewlab.data.tasks.readers import read_local
from brewlab.models.vocab import build_char_tokenizer

CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures" / "cmrc"
KIND = KINDS.get("span_extraction")
WINDOW_CFG = {
    "name": "t",
    "max_seq_length": 48,
    "doc_stride": 16,
    "max_query_length": 12,
    "n_best_size": 20,
    "max_answer_length": 30,
}


def _row(context: str, question: str, answer: str, start: int | None = None) -> dict:
    start = context.index(answer) if start is None else start
    raw = {"id": "q", "context": context, "question": question, "answers": {"text": [answer], "answer_start": [start]}}
    return KIND.normalise(raw, ["start", "end"], WINDOW_CFG, "test")


def _perfect_logits(features: list[dict]) -> list[np.ndarray]:
    """What an ideal model outputs: a peak at each window's labelled start and end (CLS when
    the answer is elsewhere), passage-masked like `model_logits`."""
    out = []
    for f in features:
        logits = np.zeros((2, len(f["input_ids"])), dtype=np.float32)
        logits[0, f["labels"][0]] = logits[1, f["labels"][1]] = 10.0
        logits[:, np.array(f["context_mask"]) == 0] = MASKED
        out.append(logits)
    return out


def _context_span(feature: dict) -> tuple[int, int]:
    offsets = [o for o in feature["_offsets"] if o is not None]
    return offsets[0][0], offsets[-1][1]


def _windows_case(context: str, question: str, answer: str, start: int, language: str):
    tokenizer = build_char_tokenizer([context, question])
    rows = [_row(context, question, answer, start)]
    features = KIND.encode(rows, tokenizer, {**WINDOW_CFG, "language": language})
    assert len(features) >= 3 and all(len(f["input_ids"]) <= 48 for f in features)
    metrics = KIND.score(_perfect_logits(features), features, rows, ["start", "end"])
    assert metrics == {"em": 1.0, "f1": 1.0, "unanswered": 0.0, "questions": 1.0}
    return features


def test_zh_answer_in_second_window_and_across_a_window_boundary():
    question = "谁在会上发言？"  # 7 tokens: 38 passage tokens per window, windows start 22 apart
    filler = "今天天气很好大家都来到了会场" * 10
    # only in the second window (chars 22..59; the third starts at 44)
    context = filler[:40] + "张三丰" + filler[40:]
    features = _windows_case(context, question, "张三丰", 40, "zh")
    assert features[0]["labels"] == [0, 0] and features[2]["labels"] == [0, 0]
    start, end = features[1]["labels"]
    assert context[features[1]["_offsets"][start][0] : features[1]["_offsets"][end][1]] == "张三丰"
    # straddles the end of the first window; the overlap holds it whole in the second
    context = filler[:36] + "李四光" + filler[36:]
    features = _windows_case(context, question, "李四光", 36, "zh")
    first_start, first_end = _context_span(features[0])
    assert first_start <= 36 < first_end < 39
    assert features[0]["labels"] == [0, 0] and features[1]["labels"] != [0, 0]


def test_en_answer_across_a_window_boundary():
    question, answer = "Who spoke?", "Marie Curie"
    filler = " ".join(["the quiet river runs by the old mill"] * 8)
    tokenizer = build_char_tokenizer([filler, question, answer])
    first = KIND.encode([_row(filler, question, "mill")], tokenizer, WINDOW_CFG)[0]
    end = _context_span(first)[1]
    position = filler.rindex(" ", 0, end - 3) + 1  # a word start just before the first window ends
    context = filler[:position] + answer + " " + filler[position:]
    features = _windows_case(context, question, answer, position, "en")
    assert position < _context_span(features[0])[1] < position + len(answer)  # cut by the first window
    assert features[0]["labels"] == [0, 0] and features[1]["labels"] != [0, 0]


def test_en_answer_only_in_the_second_window():
    question, answer = "Who spoke?", "Marie Curie"
    filler = " ".join(["the quiet river runs by the old mill"] * 8)
    tokenizer = build_char_tokenizer([filler, question, answer])
    first = KIND.encode([_row(filler, question, "mill")], tokenizer, WINDOW_CFG)[0]
    position = filler.index(" ", _context_span(first)[1]) + 1  # the first word start past window 1
    context = filler[:position] + answer + " " + filler[position:]
    features = _windows_case(context, question, answer, position, "en")
    second_start, second_end = _context_span(features[1])
    assert _context_span(features[0])[1] <= position and second_start <= position < position + len(answer) <= second_end
    assert features[0]["labels"] == [0, 0] and features[1]["labels"] != [0, 0]


@pytest.mark.parametrize("fn", ["ce", "kl", "mse"])
def test_position_kd_ignores_everything_outside_the_passage(fn):
    """Logits of question, special and padding positions change neither the KD loss nor, when
    more padding is added, its scale."""
    from types import SimpleNamespace

    from brewlab.distill.losses import LOGIT_LOSSES

    loss = LOGIT_LOSSES.get(fn)
    context = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])

    def view(logits, mask):
        return KIND.model_logits(SimpleNamespace(start_logits=logits[0], end_logits=logits[1]), {"context_mask": mask})

    torch.manual_seed(0)
    s, t = torch.randn(2, 2, 6), torch.randn(2, 2, 6)
    base = loss(view(s, context), view(t, context), 2.0)
    outside = (~context.bool()).float()
    noisy = loss(view(s + 9 * torch.randn_like(s) * outside, context), view(t - 5 * outside, context), 2.0)
    assert torch.allclose(noisy, base)
    wide = torch.cat([context, torch.zeros(2, 10, dtype=torch.long)], 1)  # 10 more padded positions
    s_wide, t_wide = torch.cat([s, torch.randn(2, 2, 10)], 2), torch.cat([t, torch.randn(2, 2, 10)], 2)
    assert torch.allclose(loss(view(s_wide, wide), view(t_wide, wide), 2.0), base)


def test_features_metadata_and_question_cap():
    tokenizer = build_char_tokenizer(["甲乙丙丁戊己庚辛壬癸" * 3])
    long_question = "甲乙丙丁戊己庚辛壬癸" * 3  # 30 tokens, capped at 12
    rows = [_row("甲乙丙丁" * 30, long_question, "丙丁", 2)]
    (first, *_rest) = KIND.encode(rows, tokenizer, WINDOW_CFG)
    assert first["token_type_ids"].count(0) == 12 + 2  # [CLS] question [SEP]
    assert first["context_mask"][0] == 1 and sum(first["context_mask"]) == 1 + (48 - 12 - 3)
    assert first["_example"] == 0 and first["_offsets"][0] is None and first["labels"] == [14 + 2, 14 + 3]
    assert first["_decode"] == {"n_best_size": 20, "max_answer_length": 30, "language": "zh"}


def test_doc_stride_must_fit_the_window():
    with pytest.raises(BrewlabError, match=r"task.doc_stride=33 .*task.max_seq_length=48"):
        check_config({**WINDOW_CFG, "doc_stride": 33})
    check_config({**WINDOW_CFG, "doc_stride": 32})
    for name in ("cmrc", "cmrc_pd98", "drcd", "squad"):
        check_config(yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text()))


def test_logits_view_and_supervised_loss():
    class Output:
        start_logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        end_logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])

    batch = {"context_mask": torch.tensor([[1, 0, 1, 1]])}
    logits = KIND.model_logits(Output(), batch)
    assert logits.shape == (1, 2, 4) and logits[0, 0, 1] == MASKED and logits[0, 1, 3] == 1.0
    assert KIND.logits_mask(batch) is None
    loss = KIND.supervised_loss(logits, torch.tensor([[3, 0]]))
    expected = (torch.logsumexp(logits[0, 0], 0) - 4.0 + torch.logsumexp(logits[0, 1], 0) - 4.0) / 2
    assert loss.item() == pytest.approx(expected.item())


# ----------------------------------------------------------------------------- metrics


# CMRC 2018, worked out from the official rules: lower case and strip; each CJK character and
# each mark of the script's list (which holds "，。：？！“”；’《》·、「」（）－～『』" and the ASCII
# "-:_*^/\\~`+=", but not "," "!" or "…") is a token; other runs are split into words; F1 drops the
# listed marks (without ending a run) and takes the longest common contiguous run of tokens; EM
# compares the strings without the listed marks (inner spaces stay). Max over gold answers.
CMRC_CASES = [
    # (prediction, gold answers, EM, F1)
    ("iPhone 6", ["iPhone"], 0, 2 / 3),  # [iphone, 6] vs [iphone]: P 1/2, R 1
    ("1998年1月", ["1月"], 0, 2 / 3),  # [1998, 年, 1, 月] vs [1, 月]: P 2/4, R 1
    ("Windows系统", ["Windows"], 0, 1 / 2),  # [windows, 系, 统] vs [windows]: P 1/3, R 1
    ("1998", ["1998年"], 0, 2 / 3),  # P 1, R 1/2
    ("3.5亿元", ["3.5亿"], 0, 0.8),  # [3.5, 亿, 元] vs [3.5, 亿]: P 2/3, R 1
    ("张三和John Smith", ["John Smith"], 0, 4 / 7),  # 2 of 5 and 2 of 2 tokens
    ("Hong Kong", ["HongKong"], 0, 0.0),  # [hong, kong] vs [hongkong]
    ("NBA", ["nba"], 1, 1.0),
    ("北京", ["北京"], 1, 1.0),
    ("北京天安门", ["天安门广场"], 0, 0.6),  # run 天安门: 3 of 5 and 3 of 5
    ("京北", ["北京"], 0, 0.5),  # a contiguous run, not a bag: 1 of 2 and 1 of 2
    ("“北京市”", ["北京"], 0, 0.8),  # listed quotes dropped: [北, 京, 市] vs [北, 京]
    ("《人民日报》。", ["人民日报"], 1, 1.0),  # full-width marks of the list
    ("人民 日报", ["人民日报"], 0, 1.0),  # EM keeps the space; F1's tokens skip it
    ("  ABC，", ["abc"], 1, 1.0),  # stripped, lower-cased, full-width comma listed
    ("北京！", ["北京"], 1, 1.0),  # full-width "！" is listed
    ("北京!", ["北京"], 0, 0.8),  # ASCII "!" is not: [北, 京, !] vs [北, 京]
    ("北京,", ["北京"], 0, 0.8),  # nor ASCII ","
    ("北京…", ["北京"], 0, 0.8),  # nor "…" (the list's "……" never matches one character)
    ("3-5年", ["3"], 0, 0.0),  # listed "-" dropped inside the run: [35, 年] vs [3]
    ("约翰·史密斯", ["约翰史密斯"], 1, 1.0),  # "·" listed
    ("上海", ["北京"], 0, 0.0),
    ("", ["北京"], 0, 0.0),  # empty prediction
    ("。", ["北京"], 0, 0.0),  # nothing left after the marks
    ("", ["。"], 1, 0.0),  # both empty after the marks: equal strings, no tokens
    ("北京", ["上海", "北京市"], 0, 0.8),  # several golds: the best is 北京市, P 1, R 2/3
    ("中国", ["中华", "中国"], 1, 1.0),
    ("1月", ["1998年1月", "一月"], 0, 2 / 3),  # P 1, R 2/4 against the first
]

# SQuAD v1.1: lower case, ASCII punctuation and a/an/the removed; bag-of-words F1.
SQUAD_CASES = [
    ("The Eiffel Tower!", ["eiffel  tower"], 1, 1.0),
    ("a big red car", ["the red car"], 0, 0.8),  # [big, red, car] vs [red, car]
    ("an apple", ["apples"], 0, 0.0),
    ("car red", ["red car"], 0, 1.0),  # a bag of words
    ("red red car", ["red car"], 0, 0.8),  # counts clipped: 2 shared of 3 and 2
    ("Paris", ["London", "Paris, France"], 0, 2 / 3),
    ("the", ["a"], 1, 0.0),  # both normalise to nothing: EM 1, F1 0 (official script)
    ("", ["The"], 1, 0.0),
    ("", ["London"], 0, 0.0),
]


def _best(pair, prediction, golds):
    scores = [pair(prediction, gold) for gold in golds]
    return max(s[0] for s in scores), max(s[1] for s in scores)


@pytest.mark.parametrize("prediction, golds, em, f1", CMRC_CASES)
def test_cmrc2018_metric_reference_cases(prediction, golds, em, f1):
    assert _best(score_zh, prediction, golds) == (em, pytest.approx(f1))
    metrics = answer_metrics([prediction], [golds], "zh")
    assert (metrics["em"], metrics["f1"]) == (em, pytest.approx(f1))


@pytest.mark.parametrize("prediction, golds, em, f1", SQUAD_CASES)
def test_squad_v11_metric_reference_cases(prediction, golds, em, f1):
    assert _best(score_en, prediction, golds) == (em, pytest.approx(f1))


def test_mixed_segmentation_keeps_latin_words_and_numbers_whole():
    assert mixed_segmentation("我用Windows 10和iPhone，很好。") == ["我", "用", "windows", "10", "和", "iphone", "，", "很", "好", "。"]
    assert mixed_segmentation("我用Windows 10和iPhone，很好。", drop_punctuation=True) == [
        "我", "用", "windows", "10", "和", "iphone", "很", "好",
    ]


def test_answer_metrics_average_the_best_score_of_each_question():
    metrics = answer_metrics(["北京", "", "中国"], [["上海", "北京市"], ["中国"], ["中国", "中华"]], "zh")
    assert metrics["em"] == pytest.approx(1 / 3)  # only the third is exact
    assert metrics["f1"] == pytest.approx((0.8 + 0.0 + 1.0) / 3)  # max over gold answers
    assert metrics["unanswered"] == 1 and metrics["questions"] == 3
    metrics = answer_metrics(["Paris", ""], [["paris", "Paris, France"], ["London"]], "en")
    assert metrics == {"em": 0.5, "f1": 0.5, "unanswered": 1.0, "questions": 2.0}


# ----------------------------------------------------------------------------- cmrc_pd98


def test_pd98_line_parsing_merges_names_and_compounds():
    text, entities = parse_tagged_line(
        "在/p  [香港/ns  特别/a  行政区/n]ns  ，/w  江/nr  泽民/nr  与/c  克林顿/nr  访问/v  新华社/nt"
    )
    assert text == "在香港特别行政区，江泽民与克林顿访问新华社"
    assert [(text[s:e], kind) for s, e, kind in entities] == [
        ("香港特别行政区", "LOC"),
        ("江泽民", "PER"),
        ("克林顿", "PER"),
        ("新华社", "ORG"),
    ]


@pytest.fixture(scope="module")
def pd98(tmp_path_factory):
    cfg = yaml.safe_load((CONF / "task" / "cmrc_pd98.yaml").read_text())
    cfg["data_dir"] = str(tmp_path_factory.mktemp("pd98"))
    return cfg, cmrc_pd98(cfg)


def test_pd98_is_generated_deterministically_as_cmrc_files(pd98, tmp_path):
    cfg, splits = pd98
    files = pd98_files(cfg)
    assert files["train"].parent.name.startswith("cmrc_pd98-")
    assert json.loads(files["test"].read_text("utf-8"))["data"][0]["paragraphs"][0]["qas"]
    again = pd98_files({**cfg, "data_dir": str(tmp_path)})
    for split in SPLITS:
        assert again[split].read_bytes() == files[split].read_bytes()
        assert splits[split] == read_local(str(files[split]), "task.data.train_file")  # the local-file reader


def test_pd98_answers_sizes_and_disjoint_passages(pd98):
    _, splits = pd98
    sizes = {split: len(rows) for split, rows in splits.items()}
    assert 8000 <= sum(sizes.values()) <= 15000
    assert 0.75 <= sizes["train"] / sum(sizes.values()) <= 0.85 and min(sizes.values()) >= 800
    contexts = {split: {r["context"] for r in rows} for split, rows in splits.items()}
    assert not (contexts["train"] & contexts["validation"] or contexts["train"] & contexts["test"])
    assert not contexts["validation"] & contexts["test"]
    for rows in splits.values():
        for row in rows:
            (text,), (start,) = row["answers"]["text"], row["answers"]["answer_start"]
            assert row["context"][start : start + len(text)] == text and len(text) >= 2
            assert 100 <= len(row["context"]) <= 240 and text not in row["question"]
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(set(ids)) == len(ids)


# ----------------------------------------------------------------------------- distillation


def test_kd_losses_schedules_shift_and_teacher_cache_on_position_logits(tmp_path):
    """The (B, 2, L) view goes through the shared KD machinery unchanged: every logit loss,
    dynamic temperatures, probability shift, attention/hidden matches and the teacher cache."""
    from types import SimpleNamespace

    from brewlab.core.cache import Cache
    from brewlab.data.batching import make_loader
    from brewlab.data.prepare import prepare_task
    from brewlab.models.build import build_scratch
    from brewlab.stages.stage import build_distiller, build_student

    overrides = ["task=cmrc", f"task.data.train_file={FIXTURES / 'train.json'}", "debug=smoke", "logger=none"]
    cfg = compose_run(*overrides, f"cache_dir={tmp_path}")
    prep = prepare_task(cfg, Cache(tmp_path))
    torch.manual_seed(0)
    teacher = build_scratch(cfg["teacher"]["arch"], prep.tokenizer, prep.kind, 2, "eager").eval()
    student = build_student(cfg, prep, teacher, "eager", torch.device("cpu"))
    batches = list(make_loader(prep.features["train"], 5, prep.tokenizer.pad_token_id, seed=0, train=True))
    assert len({b["input_ids"].shape[1] for b in batches}) > 1  # cached rows get re-padded
    tracker = SimpleNamespace(log=lambda metrics, step: None)
    # betas inside each dynamic temperature's bound (cwsm: base / (1 / (1/L + eps) - 1 / (1 + eps)) for L positions)
    temperatures = [
        {"kind": "constant", "base": 4.0},
        {"kind": "flsw", "base": 2.0, "beta": 0.5},
        {"kind": "cwsm", "base": 2.0, "beta": 0.005},
    ]
    for temperature in temperatures:
        for fn in ("ce", "kl", "mse"):
            run_cfg = {**cfg, "scheduler": {**cfg["scheduler"], "temperature": temperature, "probability_shift": True}}
            loss_cfg = {"hard": {"kind": "hard", "weight": 1.0}, "kd": {"kind": "logits", "fn": fn, "weight": 1.0}}
            distiller = build_distiller("basic", run_cfg, student, [teacher], prep, loss_cfg, settings(cfg["trainer"], TrainerSettings), tracker)
            for k, batch in enumerate(batches * 2):  # the second pass reads the teacher cache
                loss, parts = distiller.compute_loss(batch, 0, 10)
                assert torch.isfinite(loss) and set(parts) == {"hard", "kd"}
                if k == len(batches):
                    loss.backward()
    for batch in batches:
        direct = distiller.teacher(batch).logits
        assert torch.equal(distiller.outputs.kept().get(batch["idx"], direct), direct)
    loss_cfg = {
        "kd": {"kind": "logits", "fn": "ce", "weight": 1.0},
        "att": {"kind": "match", "fn": "attention_mse_sum", "feature": "attention", "weight": 1.0},
        "hidden": {"kind": "match", "fn": "hidden_mse", "feature": "hidden", "weight": 1.0},
    }
    distiller = build_distiller("general", cfg, student, [teacher], prep, loss_cfg, settings(cfg["trainer"], TrainerSettings), tracker)
    loss, parts = distiller.compute_loss(batches[0], 0, 10)
    assert torch.isfinite(loss) and set(parts) == {"kd", "att", "hidden"}


# ----------------------------------------------------------------------------- end to end


def _check_split_metrics(metrics: dict) -> None:
    for role in ("teacher", "student"):
        for split in ("validation", "test"):
            entry = metrics[role][split]
            assert {"em", "f1", "unanswered", "questions", "examples_per_second"} <= set(entry)
            assert 0.0 <= entry["em"] <= entry["f1"] <= 1.0


def test_local_cmrc_files_end_to_end_and_reload(cli):
    train, dev = FIXTURES / "train.json", FIXTURES / "dev.json"
    _, run_dir = cli(
        "task=cmrc",
        f"task.data.train_file={train}",
        f"task.data.validation_file={dev}",
        "debug=smoke",
        "logger=none",
        "distiller=general",
        "loss=nst+hidden",
    )
    metrics = read_metrics(run_dir)
    assert metrics["task"]["sizes"] == {"train": 16, "validation": 6, "test": 2}  # test cut from train
    assert metrics["task"]["main_metric"] == "f1" and set(metrics["loss"]) == {"kd", "nst", "hidden"}
    _check_split_metrics(metrics)
    assert metrics["student"]["validation"]["questions"] == 6

    # the saved student reloads as a QA model and reproduces its test metrics
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(run_dir / "student").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "student")
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    rows = load_task_data(cfg["task"]).splits["test"]
    features = KIND.encode(rows, tokenizer, cfg["task"])
    logits = []
    with torch.inference_mode():
        for f in features:
            batch = {k: torch.tensor([f[k]]) for k in ("input_ids", "attention_mask", "token_type_ids", "context_mask")}
            inputs = {k: v for k, v in batch.items() if k != "context_mask"}
            logits.append(KIND.model_logits(model(**inputs), batch)[0].numpy())
    again = KIND.score(logits, features, rows, ["start", "end"])
    for key in ("em", "f1", "unanswered"):
        assert again[key] == pytest.approx(metrics["student"]["test"][key])


def test_flat_hub_rows_of_cmrc_end_to_end(cli, tmp_path):
    """hfl/cmrc2018's own layout (one question per row: id, context, question, answers{text,
    answer_start}) as JSON lines runs the same pipeline."""
    from brewlab.core.files import write_jsonl

    files = {}
    for split, name in (("train", "train.json"), ("validation", "dev.json")):
        files[split] = tmp_path / f"{split}.jsonl"
        write_jsonl(read_local(str(FIXTURES / name), split), files[split])
    first = json.loads(files["train"].read_text().splitlines()[0])
    assert set(first) >= {"id", "context", "question", "answers"} and "answer_start" in first["answers"]
    _, run_dir = cli("task=cmrc", f"task.data.train_file={files['train']}",
                     f"task.data.validation_file={files['validation']}", "debug=smoke", "logger=none")
    metrics = read_metrics(run_dir)
    assert metrics["task"]["sizes"] == {"train": 16, "validation": 6, "test": 2}
    assert metrics["student"]["validation"]["questions"] == 6


def test_cmrc_pd98_end_to_end(cli):
    _, run_dir = cli("task=cmrc_pd98", "debug=smoke", "logger=none")
    metrics = read_metrics(run_dir)
    assert metrics["task"]["sizes"] == {"train": 192, "validation": 64, "test": 64}
    _check_split_metrics(metrics)


def test_hub_offline_points_at_local_files(cli):
    proc, _ = cli("task=cmrc", "debug=smoke", "logger=none", expect_ok=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hfl/cmrc2018" in lines[0] and "task.data.train_file" in lines[0]
