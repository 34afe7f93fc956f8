"""Span-extraction reading comprehension (CMRC 2018, DRCD, SQuAD and the generated cmrc_pd98,
whose generator is `brewlab.data.tasks.cmrc_pd98`).

Examples are normalised to ``{"id", "question", "context", "answers": {"text": [...],
"answer_start": [...]}}`` (the flat hub layout; nested SQuAD-layout files are flattened by the
shared local reader). Encoding puts the question first and the passage second and cuts long
passages into overlapping windows (the tokenizer's ``stride`` = ``task.doc_stride`` tokens of
overlap); each window is one feature.

Logits view: ``(B, 2, L)`` = start and end scores per position, with every position that is
neither a passage token of the window nor [CLS] set to ``-1e4``. Softmax over the last axis is
therefore a distribution over passage positions, so the shared KD losses (ce/kl/mse),
temperature schedulers and probability shift treat each head as one "row" of L classes, and
the hard loss is cross-entropy over positions for both heads. The label of a window whose
passage does not contain the whole answer is [CLS] (index 0).

Scoring groups windows by question and picks the best valid span (start <= end, at most
``task.max_answer_length`` tokens, passage tokens only) among the ``task.n_best_size`` best
starts and ends of every window, by start + end score. Chinese tasks are scored by the official
CMRC 2018 rules, English ones by SQuAD v1.1's (`brewlab.data.tasks.mrc_metrics`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from brewlab.core.errors import BrewlabError
from brewlab.data.tasks.base import KINDS, Example, KindBase, example_id
from brewlab.data.tasks.mrc_metrics import answer_metrics

MASKED = -1e4  # logit of positions outside the passage (and padding)
SPECIAL_TOKENS_IN_PAIR = 3  # [CLS] question [SEP] passage [SEP]


# ----------------------------------------------------------------------------- the kind


def check_config(cfg: Mapping) -> None:
    """Window settings must leave room for the passage and overlap less than one window."""
    name = cfg.get("name", "?")
    for key in ("max_seq_length", "doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "doc_stride" else 1):
            raise BrewlabError(f"task.{key}={value!r} must be a whole number >= {0 if key == 'doc_stride' else 1}")
    room = int(cfg["max_seq_length"]) - int(cfg["max_query_length"]) - SPECIAL_TOKENS_IN_PAIR
    if int(cfg["doc_stride"]) >= room:
        raise BrewlabError(
            f"task {name}: task.doc_stride={cfg['doc_stride']} must be smaller than the passage room of a window, "
            f"task.max_seq_length={cfg['max_seq_length']} minus the question budget "
            f"(task.max_query_length={cfg['max_query_length']} + {SPECIAL_TOKENS_IN_PAIR} special tokens) = {room}"
        )
    if cfg.get("language") not in (None, "zh", "en"):
        raise BrewlabError(f"task.language={cfg.get('language')!r} is not valid; choose one of: en, zh")


def _answers(row: Mapping, name: str, split: str) -> tuple[list[str], list[int]]:
    """Gold texts and starts from the hub layout (dict of lists) or a list of answer dicts."""
    raw = row.get("answers")
    if isinstance(raw, Mapping):
        texts, starts = list(raw.get("text") or []), list(raw.get("answer_start") or [])
    elif isinstance(raw, list):
        texts = [a["text"] for a in raw]
        starts = [a.get("answer_start", -1) for a in raw]
    else:
        raise BrewlabError(f"task {name}: {split} example has no answers field; fields: {sorted(row)}")
    if len(texts) != len(starts):
        raise BrewlabError(
            f"task {name}: {split} example {row.get('id')!r} has {len(texts)} texts, {len(starts)} starts"
        )
    return [str(t) for t in texts], [int(s) for s in starts]


def _locate(context: str, text: str, start: int) -> int:
    """The start of `text` in `context`: the given one when right, else the nearest occurrence
    (some published answer_start values are off by a few characters), else -1."""
    if not text:
        return -1
    if 0 <= start and context[start : start + len(text)] == text:
        return start
    found = [m.start() for m in re.finditer(re.escape(text), context)]
    return min(found, key=lambda s: abs(s - start)) if found else -1


def _cap_questions(tokenizer: Any, questions: list[str], limit: int) -> list[str]:
    """Cut each question after its `limit`-th token (so it always fits the window budget)."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for question, offsets in zip(questions, enc["offset_mapping"], strict=True):
        if len(offsets) > limit:
            # re-tokenizing a cut word can give more pieces; back off until it fits
            for keep in range(limit, 0, -1):
                cut = question[: offsets[keep - 1][1]]
                if len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= limit:
                    question = cut
                    break
            else:
                question = ""
        out.append(question)
    return out


def _language(cfg: Mapping, rows: Sequence[Example]) -> str:
    if cfg.get("language"):
        return str(cfg["language"])
    sample = "".join(r["context"][:200] for r in rows[:50])
    return "zh" if re.search(r"[\u4e00-\u9fff]", sample) else "en"


@KINDS.register("span_extraction")
class SpanExtraction(KindBase):
    """Extractive QA: start/end position heads over the passage; EM and F1."""

    auto_model = "AutoModelForQuestionAnswering"
    main_metric = "f1"
    seq_axis = 1  # one feature's logits are (2, L)
    logit_pad = MASKED

    check_config = staticmethod(check_config)

    @staticmethod
    def num_labels(label_names: Sequence[str]) -> int:
        return 2  # start and end

    @staticmethod
    def normalise(row: Example, label_names: Sequence[str], cfg: Mapping, split: str) -> Example:
        name = cfg.get("name", "?")
        for key in ("context", "question"):
            if not isinstance(row.get(key), str):
                raise BrewlabError(f"task {name}: {split} example has no text field {key!r}; fields: {sorted(row)}")
        texts, starts = _answers(row, name, split)
        context = row["context"]
        return {
            "id": str(row.get("id", "")),
            "question": row["question"].strip(),
            "context": context,
            "answers": {
                "text": texts,
                "answer_start": [_locate(context, t, s) for t, s in zip(texts, starts, strict=True)],
            },
        }

    @staticmethod
    def texts(row: Example) -> list[str]:
        return [row["context"], row["question"]]

    @staticmethod
    def augment_texts(row: Example) -> list[str]:
        """Question, passage before the answer, passage after it: the answer itself never changes."""
        answer = _first_answer(row)
        if answer is None:
            return [row["question"], row["context"], ""]
        text, start = answer
        return [row["question"], row["context"][:start], row["context"][start + len(text) :]]

    @staticmethod
    def with_texts(row: Example, texts: Sequence[str]) -> Example:
        """The augmented passage around the intact answer, whose offset is recomputed."""
        question, before, after = texts
        answer = _first_answer(row)
        if answer is None:
            return {**row, "question": question, "context": before + after}
        text, _ = answer
        answers = {"text": [text], "answer_start": [len(before)]}
        return {**row, "question": question, "context": before + text + after, "answers": answers}

    @staticmethod
    def encode(rows: Sequence[Example], tokenizer: Any, cfg: Mapping) -> list[dict[str, Any]]:
        check_config(cfg)
        max_len, stride = int(cfg["max_seq_length"]), int(cfg["doc_stride"])
        decode = {  # one shared dict: what `score` needs and the kind cannot otherwise see
            "n_best_size": int(cfg["n_best_size"]),
            "max_answer_length": int(cfg["max_answer_length"]),
            "language": _language(cfg, rows),
        }
        features: list[dict[str, Any]] = []
        chunk = 512
        for begin in range(0, len(rows), chunk):
            part = rows[begin : begin + chunk]
            enc = tokenizer(
                _cap_questions(tokenizer, [r["question"] for r in part], int(cfg["max_query_length"])),
                [r["context"] for r in part],
                truncation="only_second",
                max_length=max_len,
                stride=stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            inputs = [k for k in enc.keys() if k not in ("offset_mapping", "overflow_to_sample_mapping")]
            for i, local in enumerate(enc["overflow_to_sample_mapping"]):
                row = part[local]
                ids = enc["input_ids"][i]
                cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
                offsets = [
                    tuple(o) if s == 1 else None
                    for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i), strict=True)
                ]
                features.append(
                    {
                        **{k: enc[k][i] for k in inputs},
                        "labels": _window_labels(row, offsets, cls),
                        "context_mask": [int(o is not None or k == cls) for k, o in enumerate(offsets)],
                        "idx": len(features),
                        "_example": begin + local,
                        "_offsets": offsets,
                        "_decode": decode,
                    }
                )
        return features

    @staticmethod
    def model_logits(output: Any, batch: Mapping) -> Any:
        import torch

        logits = torch.stack([output.start_logits, output.end_logits], dim=1)
        allowed = batch["context_mask"].bool().unsqueeze(1)
        return logits.masked_fill(~allowed, MASKED)

    @staticmethod
    def logits_mask(batch: Mapping) -> None:
        """Both heads of every window count; positions are masked inside the logits."""
        return None

    @staticmethod
    def class_mask(batch: Mapping) -> Any:
        """(B, 1, L): a head's classes are the window's passage positions and [CLS]; the rest hold
        the `MASKED` fill, which must not enter per-row statistics such as a cosine."""
        return batch["context_mask"].bool().unsqueeze(1)

    @staticmethod
    def logit_classes(cfg: Mapping, label_names: Sequence[str] = (), vocab_size: int | None = None) -> int:
        """The positions of a window."""
        return int(cfg["max_seq_length"])

    @staticmethod
    def supervised_loss(logits: Any, labels: Any) -> Any:
        """Cross-entropy of both heads averaged over labelled windows (augmented ones carry -100)."""
        import torch.nn.functional as F

        flat = labels.flatten()
        total = F.cross_entropy(logits.flatten(0, 1), flat, ignore_index=-100, reduction="sum")
        return total / (flat != -100).sum().clamp(min=1).to(total.dtype)

    @staticmethod
    def score(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> dict[str, float]:
        predictions, language = _predictions(logits, features, rows)
        return answer_metrics(predictions, [r["answers"]["text"] for r in rows], language)

    @staticmethod
    def records(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Per question: the decoded span, the gold answers, EM, and F1 (the official F1 is a mean
        over questions, so each adds its F1 over 1)."""
        predictions, language = _predictions(logits, features, rows)
        out = []
        for prediction, row in zip(predictions, rows, strict=True):
            golds = list(row["answers"]["text"])
            scores = answer_metrics([prediction], [golds], language)
            out.append(
                {"id": example_id(row), "prediction": prediction, "gold": golds, "em": scores["em"], "num": scores["f1"], "den": 1}
            )
        return out


def _predictions(
    logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example]
) -> tuple[list[str], str]:
    """The best span of every question (windows grouped by question), and the scoring language."""
    windows: dict[int, list[tuple[np.ndarray, dict]]] = defaultdict(list)
    for row_logits, feature in zip(logits, features, strict=True):
        windows[feature["_example"]].append((row_logits, feature))
    decode = features[0]["_decode"] if features else {"n_best_size": 20, "max_answer_length": 30}
    language = decode.get("language") or _language({}, rows)
    predictions = [
        best_span(windows.get(i, []), row["context"], decode["n_best_size"], decode["max_answer_length"])
        for i, row in enumerate(rows)
    ]
    return predictions, language


def _first_answer(row: Example) -> tuple[str, int] | None:
    """The first gold answer located in the passage, as (text, start)."""
    for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True):
        if start >= 0:
            return text, start
    return None


def _window_labels(row: Example, offsets: list[tuple[int, int] | None], cls: int) -> list[int]:
    """[start, end] token indices of the first gold answer found in the passage when the window
    holds all of it, else [cls, cls]."""
    located = [(t, s) for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True) if s >= 0]
    positions = [k for k, o in enumerate(offsets) if o is not None]
    if not located or not positions:
        return [cls, cls]
    first, last = located[0][1], located[0][1] + len(located[0][0])
    if offsets[positions[0]][0] > first or offsets[positions[-1]][1] < last:
        return [cls, cls]
    start = next((k for k in positions if offsets[k][1] > first), None)
    end = next((k for k in reversed(positions) if offsets[k][0] < last), None)
    if start is None or end is None or end < start:  # answer made only of dropped characters
        return [cls, cls]
    return [start, end]


def best_span(windows: Sequence[tuple[np.ndarray, dict]], context: str, n_best: int, max_answer: int) -> str:
    """Highest start+end score over every window's valid spans; "" when none is valid."""
    best_score, best_text = -np.inf, ""
    for row_logits, feature in windows:
        offsets = feature["_offsets"]
        positions = np.array([k for k, o in enumerate(offsets) if o is not None], dtype=np.int64)
        if positions.size == 0:
            continue
        start_scores, end_scores = row_logits[0], row_logits[1]
        starts = positions[np.argsort(-start_scores[positions], kind="stable")[:n_best]]
        ends = positions[np.argsort(-end_scores[positions], kind="stable")[:n_best]]
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer:
                    continue
                value = float(start_scores[s]) + float(end_scores[e])
                if value > best_score:
                    best_score, best_text = value, context[offsets[s][0] : offsets[e][1]]
    return best_text
