"""A linear baseline any teacher should beat, fitted on the run's own splits.

A teacher that does not clear a bag-of-n-grams model has nothing to teach, so a run can put this
figure beside its teacher and students (`baselines.linear=true`), and
`scripts/linear_baseline.py` prints it for a classification or NER task. It fits on train, picks the
regularisation on validation and scores validation and test.
- classification: TF-IDF + logistic regression; accuracy. Chinese text gets character
  1-2-grams, English text (`task.language`, else detected from the training text) lower-cased
  word 1-2-grams.
- token classification (NER): a logistic regression per character over a +-2 window of
  characters and character bigrams, tags predicted independently; entity F1 (seqeval, whole
  sentences, no max_seq_length cut).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry
from brewlab.data.augment.language import detect_language

Splits = Mapping[str, Sequence[Mapping[str, Any]]]
LINEAR_BASELINES: Registry = Registry("task.kind")  # task kind -> its baseline's fit(task, splits, label_names)


def linear_baseline(task: Mapping[str, Any], splits: Splits, label_names: Sequence[str]) -> dict[str, Any]:
    """{"method", "validation": {metric: value}, "test": {...}, "C", "features", "seconds"} for
    normalised rows of a task whose kind has a linear baseline."""
    if task["kind"] not in LINEAR_BASELINES:
        raise BrewlabError(
            f"task={task['name']} is {task['kind']}; the linear baselines cover {', '.join(LINEAR_BASELINES.names())}"
        )
    return LINEAR_BASELINES.get(task["kind"])(task, splits, label_names)


def _best_of(fit: Any, score: Any, strengths: Sequence[float]) -> tuple[float, float, Any]:
    """(dev score, C, model) of the best regularisation strength on validation."""
    best = None
    for c in strengths:
        model = fit(c)
        dev = score(model, "validation")
        if best is None or dev > best[0]:
            best = (dev, c, model)
    return best


@LINEAR_BASELINES.register("classification")
def _classification(task: Mapping[str, Any], splits: Splits, label_names: Sequence[str]) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    text = {s: [" ".join(t for t in (r["text"], r.get("text_pair")) if t) for r in rows] for s, rows in splits.items()}
    label = {s: [r["label"] for r in rows] for s, rows in splits.items()}
    language = task.get("language") or detect_language(text["train"][:2000])
    analyzer = "word" if language == "en" else "char"
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=(1, 2), sublinear_tf=True, min_df=2, lowercase=True)
    x_train = vectorizer.fit_transform(text["train"])

    def score(model: Any, split: str) -> float:
        return float(model.score(vectorizer.transform(text[split]), label[split]))

    dev, c, model = _best_of(
        lambda c: LogisticRegression(C=c, max_iter=2000).fit(x_train, label["train"]), score, (0.25, 1.0, 4.0, 16.0)
    )
    return {
        "method": f"{analyzer} 1-2-gram TF-IDF + logistic regression ({language})",
        "validation": {"accuracy": dev},
        "test": {"accuracy": score(model, "test")},
        "C": c,
        "features": int(x_train.shape[1]),
        "seconds": time.perf_counter() - started,
    }


def window_features(tokens: Sequence[str], i: int) -> dict[str, int]:
    """The character at i, its neighbours within 2, and the bigrams around it."""

    def at(j: int) -> str:
        return tokens[j] if 0 <= j < len(tokens) else ("<s>" if j < 0 else "</s>")

    feats = {f"c{d}={at(i + d)}": 1 for d in range(-2, 3)}
    feats.update({f"b{d}={at(i + d)}{at(i + d + 1)}": 1 for d in (-2, -1, 0, 1)})
    return feats


@LINEAR_BASELINES.register("token_classification")
def _tagging(task: Mapping[str, Any], splits: Splits, names: Sequence[str]) -> dict[str, Any]:
    from seqeval.metrics import f1_score
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    split_x = {s: [window_features(r["tokens"], i) for r in rows for i in range(len(r["tokens"]))] for s, rows in splits.items()}
    split_y = {s: [t for r in rows for t in r["tags"]] for s, rows in splits.items()}
    vectorizer = DictVectorizer()
    x_train = vectorizer.fit_transform(split_x["train"])

    def entity_f1(model: Any, split: str) -> float:
        flat = iter(model.predict(vectorizer.transform(split_x[split])))
        pred = [[names[next(flat)] for _ in r["tags"]] for r in splits[split]]
        gold = [[names[t] for t in r["tags"]] for r in splits[split]]
        return float(f1_score(gold, pred))

    dev, c, model = _best_of(
        lambda c: LogisticRegression(C=c, max_iter=300).fit(x_train, split_y["train"]), entity_f1, (0.5, 2.0, 8.0)
    )
    return {
        "method": "character-window logistic regression",
        "validation": {"f1": dev},
        "test": {"f1": entity_f1(model, "test")},
        "C": c,
        "features": int(x_train.shape[1]),
        "seconds": time.perf_counter() - started,
    }
