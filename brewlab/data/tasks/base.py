"""The task contract: where the examples come from, how they are encoded, which head and
metric they use.

A task config names a *source* (where raw examples come from) and a *kind* (what the model
predicts). Sources and kinds are registries, so a new data set is one loader function and a new
task type is one kind class (see `TaskKind`); tasks know nothing about teachers, students or
distillers. Per-kind code is limited to data preparation, head, logits view and metric.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry

SPLITS = ("train", "validation", "test")

Example = dict[str, Any]
SOURCES: Registry = Registry("task.source")
KINDS: Registry = Registry("task.kind")


class TaskKind(Protocol):
    """What a task kind provides to the shared pipeline (implemented as a class of static methods).

    Features are dicts of model inputs (`input_ids`, `attention_mask`, `token_type_ids`), `labels`
    and `idx` (position in the feature list); keys starting with "_" are metadata that the
    collator leaves out of batches (e.g. MRC offsets) and the metric reads back. The optional
    hooks, with what a kind that leaves them out gets, are `KindBase`'s; every kind derives
    from it.
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


class KindBase:
    """The optional part of the kind contract and its defaults, so callers never probe a kind
    with hasattr (config validation refuses a registered kind that does not derive from it)."""

    cache_teacher_logits = True  # False: logits too large to keep across epochs (masked LM: L x vocab)
    pooled_head = False  # True: the head reads the encoder's pooler (one prediction per sentence)
    augment_texts: Callable[[Example], list[str]] | None = None  # the texts augmentation may rewrite; None: none

    @staticmethod
    def check_config(cfg: Mapping) -> None:
        """Task settings, checked before any data is read (e.g. MRC window sizes)."""

    @staticmethod
    def describe(rows_by_split: Mapping[str, Sequence[Example]], label_names: Sequence[str]) -> dict[str, Any]:
        """Facts about the data for metrics.json's task entry (e.g. entity counts per split)."""
        return {}

    @staticmethod
    def compact(logits: Any, batch: Mapping) -> Any:
        """What evaluation keeps of a batch's logits (a kind with huge logits keeps what `score` reads)."""
        return logits


def kind_of(name: str, key: str = "task.kind") -> Any:
    """The registered kind `name`, checked to derive from `KindBase` (a plugin's too)."""
    kind = KINDS.get(name, key)
    if not (isinstance(kind, type) and issubclass(kind, KindBase)):
        raise BrewlabError(f"{key}={name}: the registered kind {kind!r} must derive from brewlab.data.tasks.KindBase")
    return kind


@dataclass
class TaskData:
    """Raw examples per split plus what the head needs to know."""

    splits: dict[str, list[Example]]
    label_names: list[str]

    def sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.splits.items()}


# ----------------------------------------------------------------------------- examples


def example_id(row: Example) -> str:
    """The row's own id, else a hash of its content: two runs' predictions then pair up only
    when they were made on the same examples (another split seed or test slice does not)."""
    if row.get("id"):
        return str(row["id"])
    return hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()[:16]
