"""The cache directory: its layout, how its entries are keyed, and how they are published.

Every entry is named `<kind>/<name>-<key>`, where the key is a content hash of everything that
made it, so a changed input makes a new entry and an unchanged one is found again by any run,
job or rank. Entries are written aside and renamed into place whole (`brewlab.core.files.publish_dir`), so a
kill leaves no half entry and two parallel jobs that make the same entry keep one copy.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LAYOUT = {
    "tokenizers": "character vocabularies built from training text (one per set of tasks)",
    "features": "encoded splits of a task, per tokenizer (pickles)",
    "augmented": "offline augmented training rows (JSON lines)",
    "pretrained": "masked LMs pretrained for teacher=pretrained_scratch",
    "teachers": "teachers fine-tuned on a task",
    "teacher_outputs": "a teacher's logits and matched features on a training set (brewlab.distill.teacher_outputs)",
    "checkpoints": "training states of the stages above that have not finished (removed once published)",
}  # generated data sets (cmrc_pd98) go to their task's `data_dir`, by default <cache>/data
TEACHER_META = "brewlab_teacher.json"  # in every published model entry: its key and how it was trained


def stable_hash(data: Any, length: int = 12) -> str:
    """Content hash of plain data (order-independent for dicts): the one hash behind every key."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


class Cache:
    """One cache root (`cache_dir`) and the entries under it."""

    def __init__(self, root: str | Path) -> None:
        self.written = str(root)  # as the config wrote it, e.g. before `~` is expanded
        self.root = Path(root).expanduser()

    def key(self, data: Any) -> str:
        """Content hash of an entry's config. Paths inside the cache (e.g. a generated data set)
        are hashed relative to it, so a config keeps its key wherever the cache lives (cwd,
        BREWLAB_CACHE) and a moved cache is still found."""
        roots = {self.written.rstrip("/"), str(self.root)}

        def relative(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: relative(v) for k, v in value.items()}
            if isinstance(value, list):
                return [relative(v) for v in value]
            if isinstance(value, str):
                for root in roots:
                    if value == root or value.startswith(root + "/"):
                        return "<cache>" + value[len(root) :]
            return value

        return stable_hash(relative(data))

    def entry(self, kind: str, name: str, key: str, suffix: str = "") -> Path:
        """Where the entry `name`-`key` of `kind` (one of LAYOUT) lives."""
        if kind not in LAYOUT:
            raise ValueError(f"cache kind {kind!r} is not one of {sorted(LAYOUT)}")
        return self.root / kind / f"{name}-{key}{suffix}"

    def checkpoints_of(self, final: Path) -> Path:
        """Where the stage that makes the entry `final` keeps its training checkpoints."""
        return self.root / "checkpoints" / final.parent.name / final.name

    def build_dir(self, final: Path) -> Path:
        """An empty directory beside `final` to write the entry into, then `brewlab.core.files.publish_dir`."""
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=final.parent, prefix=".build-"))
