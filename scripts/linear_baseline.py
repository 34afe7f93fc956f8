"""A linear baseline any teacher should beat.

Usage: python scripts/linear_baseline.py [task=reviews_zh] [other task overrides...]
Reads the task's splits through brewlab's own loader (same split, same seed as every run), fits
on train, picks the regularisation on validation, prints validation and test scores.
- classification: TF-IDF + logistic regression; accuracy. Chinese text gets character 1-2-grams,
  English text (`task.language`, else detected from the training text) lower-cased word 1-2-grams.
- token classification (NER): a logistic regression per character over a +-2 window of
  characters and character bigrams, tags predicted independently; entity F1 (seqeval, whole
  sentences, no max_seq_length cut).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    from hydra import compose, initialize_config_dir
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from brewlab.augment import detect_language
    from brewlab.config import to_plain
    from brewlab.tasks import KINDS, load_task_data

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_plain(compose("config", overrides=sys.argv[1:]))
    task = cfg["task"]
    if task["kind"] == "token_classification":
        tagging_baseline(task, load_task_data(task))
        return
    if task["kind"] != "classification":
        raise SystemExit(f"task={task['name']} is {task['kind']}; the linear baselines cover classification and NER")
    kind = KINDS.get("classification")
    data = load_task_data(task)
    text = {split: [" ".join(kind.texts(r)) for r in rows] for split, rows in data.splits.items()}
    label = {split: [r["label"] for r in rows] for split, rows in data.splits.items()}
    started = time.perf_counter()
    language = task.get("language") or detect_language(text["train"][:2000])
    analyzer = "word" if language == "en" else "char"
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=(1, 2), sublinear_tf=True, min_df=2, lowercase=True)
    x_train = vectorizer.fit_transform(text["train"])
    best = None
    for c in (0.25, 1.0, 4.0, 16.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, label["train"])
        dev = model.score(vectorizer.transform(text["validation"]), label["validation"])
        if best is None or dev > best[0]:
            best = (dev, c, model)
    dev, c, model = best
    test = model.score(vectorizer.transform(text["test"]), label["test"])
    seconds = time.perf_counter() - started
    print(f"task={task['name']} sizes={data.sizes()} language={language} {analyzer} 1-2-grams features={x_train.shape[1]} C={c}")
    print(f"linear_baseline dev_accuracy={100 * dev:.2f} test_accuracy={100 * test:.2f} seconds={seconds:.1f}")


def window_features(tokens: list[str], i: int) -> dict[str, int]:
    """The character at i, its neighbours within 2, and the bigrams around it."""
    def at(j: int) -> str:
        return tokens[j] if 0 <= j < len(tokens) else ("<s>" if j < 0 else "</s>")

    feats = {f"c{d}={at(i + d)}": 1 for d in range(-2, 3)}
    feats.update({f"b{d}={at(i + d)}{at(i + d + 1)}": 1 for d in (-2, -1, 0, 1)})
    return feats


def tagging_baseline(task: dict, data) -> None:
    from seqeval.metrics import f1_score
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    names = data.label_names
    started = time.perf_counter()
    split_x = {s: [window_features(r["tokens"], i) for r in rows for i in range(len(r["tokens"]))]
               for s, rows in data.splits.items()}
    split_y = {s: [t for r in rows for t in r["tags"]] for s, rows in data.splits.items()}
    vectorizer = DictVectorizer()
    x_train = vectorizer.fit_transform(split_x["train"])

    def entity_f1(model, split: str) -> float:
        flat = iter(model.predict(vectorizer.transform(split_x[split])))
        pred = [[names[next(flat)] for _ in r["tags"]] for r in data.splits[split]]
        gold = [[names[t] for t in r["tags"]] for r in data.splits[split]]
        return f1_score(gold, pred)

    best = None
    for c in (0.5, 2.0, 8.0):
        model = LogisticRegression(C=c, max_iter=300).fit(x_train, split_y["train"])
        dev = entity_f1(model, "validation")
        if best is None or dev > best[0]:
            best = (dev, c, model)
    dev, c, model = best
    test = entity_f1(model, "test")
    seconds = time.perf_counter() - started
    print(f"task={task['name']} sizes={data.sizes()} features={x_train.shape[1]} C={c}")
    print(f"linear_baseline dev_entity_f1={100 * dev:.2f} test_entity_f1={100 * test:.2f} seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
