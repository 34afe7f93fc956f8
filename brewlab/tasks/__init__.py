"""Tasks: where the examples come from, how they are encoded, which head and metric they use.

A task config names a *source* (where raw examples come from) and a *kind* (what the model
predicts). Sources and kinds are registries, so a new data set is one loader function and a new
task type is one kind class (see `TaskKind`); tasks know nothing about teachers, students or
distillers. Per-kind code is limited to data preparation, head, logits view and metric.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from brewlab.errors import BrewlabError
from brewlab.hub import hub_unreachable
from brewlab.registry import Registry

SPLITS = ("train", "validation", "test")

Example = dict[str, Any]
SOURCES: Registry = Registry("task.source")
KINDS: Registry = Registry("task.kind")


class TaskKind(Protocol):
    """What a task kind provides to the shared pipeline (implemented as a class of static methods).

    Features are dicts of model inputs (`input_ids`, `attention_mask`, `token_type_ids`), `labels`
    and `idx` (position in the feature list); keys starting with "_" are metadata that the
    collator leaves out of batches (e.g. MRC offsets) and the metric reads back. A kind may also
    define `check_config(task_cfg)`, called before any data is read (e.g. MRC window sizes).
    """

    auto_model: str  # transformers Auto class of the head
    main_metric: str  # key of `score` that selects the best checkpoint
    seq_axis: int | None  # axis of one example's logits that runs over tokens (None: (C,) rows)
    logit_pad: float  # logit value for padded token positions when re-padding cached logits

    @staticmethod
    def num_labels(label_names: Sequence[str]) -> int: ...

    @staticmethod
    def normalise(row: Example, label_names: Sequence[str], cfg: Mapping, split: str) -> Example: ...

    @staticmethod
    def texts(row: Example) -> list[str]: ...

    @staticmethod
    def encode(rows: Sequence[Example], tokenizer: Any, cfg: Mapping) -> list[dict[str, Any]]: ...

    @staticmethod
    def model_logits(output: Any, batch: Mapping) -> Any: ...

    @staticmethod
    def logits_mask(batch: Mapping) -> Any: ...

    @staticmethod
    def class_mask(batch: Mapping) -> Any:
        """Classes of each logit row that exist for this batch (broadcastable to the logits), or None."""

    @staticmethod
    def logit_classes(cfg: Mapping, label_names: Sequence[str] = (), vocab_size: int | None = None) -> int | None:
        """The most classes a logit row can have, from the task config and, once the data is read,
        its label names and tokenizer size (None when they are not known yet)."""

    @staticmethod
    def supervised_loss(logits: Any, labels: Any) -> Any: ...

    @staticmethod
    def score(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> dict[str, float]: ...

    @staticmethod
    def records(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One JSON-able dict per example (row): `id`, `prediction`, `gold` and the main metric's
        share as `num` and `den`, so that over any subset of examples the metric is
        sum(num) / sum(den). That is what lets a report recompute it on bootstrap resamples."""


@dataclass
class TaskData:
    """Raw examples per split plus what the head needs to know."""

    splits: dict[str, list[Example]]
    label_names: list[str]

    def sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.splits.items()}


# ----------------------------------------------------------------------------- sources


def example_id(row: Example) -> str:
    """The row's own id, else a hash of its content: two runs' predictions then pair up only
    when they were made on the same examples (another split seed or test slice does not)."""
    if row.get("id"):
        return str(row["id"])
    return hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()[:16]


def package_file(package: str, relative: str, distribution: str | None = None) -> Path:
    """A data file that an installed package ships (module `package`, pip name `distribution`)."""
    from brewlab.packaged import SCHEME, package_path

    return package_path(f"{SCHEME}{package}/{relative}", "task.source", distribution)


def _read_local(path: str, key: str) -> list[Example]:
    """Read a local json/jsonl/csv/tsv file with the `datasets` library (same columns as the hub)."""
    file = Path(path)
    if not file.is_file():
        raise BrewlabError(f"{key}={path!r}: file not found")
    suffix = file.suffix.lower()
    if suffix == ".json":
        nested = _read_squad_layout(file, key)
        if nested is not None:
            return nested
    if suffix == ".jsonl":
        _check_json_lines(file, key)
    builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}.get(suffix)
    if builder is None:
        raise BrewlabError(f"{key}={path!r}: unsupported file type; use .json, .jsonl, .csv or .tsv")
    import datasets

    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for malformed files
        raise BrewlabError(f"{key}={path!r}: cannot read it ({type(exc).__name__}: {exc})") from None
    if len(ds) == 0:
        raise BrewlabError(f"{key}={path!r}: the file holds no examples")
    return [dict(row) for row in ds]


def _check_json_lines(file: Path, key: str) -> None:
    """Name the first malformed line (`datasets` reports only that parsing failed)."""
    rows = 0
    with open(file, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rows += 1
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise BrewlabError(f"{key}={str(file)!r} line {number}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise BrewlabError(f"{key}={str(file)!r} line {number}: expected a JSON object, got {line.strip()[:60]}")
    if rows == 0:
        raise BrewlabError(f"{key}={str(file)!r}: the file holds no examples")


def _read_squad_layout(file: Path, key: str) -> list[Example] | None:
    """Rows of a nested SQuAD-layout file, the original form of SQuAD, CMRC 2018 and DRCD
    ({"data": [{"paragraphs": [...]}]}); None for any other JSON, which is left to `datasets`."""
    try:
        with open(file, encoding="utf-8") as fh:
            top = json.load(fh)
    except (ValueError, UnicodeDecodeError):  # JSON lines, or not JSON: `datasets` reports it
        return None
    articles = top.get("data") if isinstance(top, dict) else None
    if not articles or not all(isinstance(a, dict) and "paragraphs" in a for a in articles):
        return None
    return flatten_articles(articles, f"{key}={str(file)!r}")


def flatten_articles(articles: Sequence[Mapping], where: str) -> list[Example]:
    """SQuAD-layout articles ({"title", "paragraphs": [{"context", "qas": [{"id", "question",
    "answers"}]}]}) flattened to the hub's flat columns (id, title, context, question,
    answers{text, answer_start}), so one reader serves nested files and flat hub copies."""
    try:
        return [
            {
                "id": str(qa.get("id", "")),
                "title": str(article.get("title", "")),
                "context": paragraph["context"],
                "question": qa["question"],
                "answers": {
                    "text": [a["text"] for a in qa.get("answers") or []],
                    "answer_start": [int(a["answer_start"]) for a in qa.get("answers") or []],
                },
            }
            for article in articles
            for paragraph in article["paragraphs"]
            for qa in paragraph.get("qas") or []
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise BrewlabError(f"{where}: malformed SQuAD-layout data ({type(exc).__name__}: {exc})") from None


def _hub_rows(split: Any, where: str) -> list[Example]:
    """Rows of one hub split; article-per-row uploads of the nested layout (a `paragraphs`
    column, or a `data` column holding the article, as in voidful/DRCD) are flattened."""
    rows = [dict(r) for r in split]
    if rows and "paragraphs" in rows[0]:
        return flatten_articles(rows, where)
    if rows and isinstance(rows[0].get("data"), Mapping) and "paragraphs" in rows[0]["data"]:
        return flatten_articles([r["data"] for r in rows], where)
    return rows


@SOURCES.register("hub")
def hub(cfg: Mapping) -> dict[str, list[Example]]:
    """A Hugging Face hub data set; fails fast with a pointer to local files when offline."""
    endpoint = hub_unreachable()
    if endpoint is not None:
        raise BrewlabError(
            f"task.hub_id={cfg['hub_id']!r} needs the hub but {endpoint} cannot be reached; without internet "
            "set task.data.train_file / validation_file / test_file to local files in the hub format "
            "(or HF_HUB_OFFLINE=1 to read a local Hugging Face cache)"
        )
    import datasets

    try:
        ds = datasets.load_dataset(cfg["hub_id"], cfg.get("hub_config"))
    except Exception as exc:
        raise BrewlabError(
            f"task.hub_id={cfg['hub_id']!r} could not be loaded ({type(exc).__name__}); without "
            "internet set task.data.train_file / validation_file / test_file to local files "
            "in the hub format"
        ) from None
    names = cfg.get("hub_splits") or {s: s for s in SPLITS}
    where = f"task.hub_id={cfg['hub_id']!r}"
    return {split: _hub_rows(ds[names[split]], where) for split in SPLITS if names.get(split) in ds}


def load_task_data(cfg: Mapping) -> TaskData:
    """Raw splits for a task: local files when given, else its source; then carve missing
    validation/test splits from train with a fixed seed and apply any debug limits."""
    kind = KINDS.get(cfg["kind"], "task.kind")
    if hasattr(kind, "check_config"):  # optional kind hook: task settings, checked before any reading
        kind.check_config(cfg)
    data_cfg = cfg.get("data") or {}
    if data_cfg.get("train_file"):
        raw = {"train": _read_local(data_cfg["train_file"], "task.data.train_file")}
        for split in ("validation", "test"):
            if data_cfg.get(f"{split}_file"):
                raw[split] = _read_local(data_cfg[f"{split}_file"], f"task.data.{split}_file")
    else:
        raw = SOURCES.get(cfg["source"], "task.source")(cfg)
    label_names = list(cfg["label_names"])
    splits = _carve_splits(raw, cfg.get("split") or {})
    splits = {name: [kind.normalise(row, label_names, cfg, name) for row in rows] for name, rows in splits.items()}
    fraction = cfg.get("train_fraction", 1.0)
    if fraction < 1:  # a fixed-seed subset, in the split's order, so runs with one fraction agree
        keep = max(1, math.ceil(round(fraction * len(splits["train"]), 6)))  # 0.07 * 100 is 7, not 8
        chosen = sorted(random.Random(int((cfg.get("split") or {}).get("seed", 1234))).sample(range(len(splits["train"])), keep))
        splits["train"] = [splits["train"][i] for i in chosen]
    limits = cfg.get("limit") or {}
    for name in SPLITS:
        if limits.get(name):
            splits[name] = splits[name][: int(limits[name])]
    return TaskData(splits=splits, label_names=label_names)


def _carve_splits(raw: dict[str, list[Example]], split_cfg: Mapping) -> dict[str, list[Example]]:
    """Splits the source lacks are cut from its pool ("all", else "train") by a fixed seed."""
    out = {s: raw[s] for s in SPLITS if s in raw}
    missing = [s for s in ("validation", "test") if s not in out]
    if "all" not in raw and not missing:
        return out
    pool = list(raw["all"] if "all" in raw else raw["train"])
    random.Random(int(split_cfg.get("seed", 1234))).shuffle(pool)
    total = len(pool)
    for split in missing:
        n = int(round(float(split_cfg.get(split, 0.1)) * total))
        out[split], pool = pool[:n], pool[n:]
    out["train"] = pool
    return {s: out[s] for s in SPLITS}


# kinds and sources register themselves on import
from brewlab.tasks import classification  # noqa: E402,F401,I001 (one line per kind, appended)
from brewlab.tasks import ner  # noqa: E402,F401
from brewlab.tasks import mrc  # noqa: E402,F401
from brewlab.tasks import mlm  # noqa: E402,F401
