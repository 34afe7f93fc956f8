"""A linear baseline any teacher should beat: character 1-2-gram TF-IDF + logistic regression.

Usage: python scripts/linear_baseline.py [task=reviews_zh] [other task overrides...]
Reads the task's splits through brewlab's own loader (same split, same seed as every run), fits
on train, picks C on validation, prints validation and test accuracy. Classification tasks only.
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

    from brewlab.config import to_plain
    from brewlab.tasks import KINDS, load_task_data

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_plain(compose("config", overrides=sys.argv[1:]))
    task = cfg["task"]
    if task["kind"] != "classification":
        raise SystemExit(f"task={task['name']} is {task['kind']}; the linear baseline is for classification")
    kind = KINDS.get("classification")
    data = load_task_data(task)
    text = {split: [" ".join(kind.texts(r)) for r in rows] for split, rows in data.splits.items()}
    label = {split: [r["label"] for r in rows] for split, rows in data.splits.items()}
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=2)
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
    print(f"task={task['name']} sizes={data.sizes()} features={x_train.shape[1]} C={c}")
    print(f"linear_baseline dev_accuracy={100 * dev:.2f} test_accuracy={100 * test:.2f} seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
