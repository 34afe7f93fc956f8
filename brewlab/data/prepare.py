"""A task made ready for models: read, tokenised (tokenizer built or taken from the teacher's
base), encoded once and cached, and batched. Knows tasks, never distillers or teachers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brewlab.config.schema import LoopSettings, TokenizerOptions, with_defaults
from brewlab.core.cache import Cache, stable_hash
from brewlab.core.errors import BrewlabError
from brewlab.core.files import atomic_open, publish_dir
from brewlab.data.batching import make_loader, set_epoch
from brewlab.data.tasks import KINDS, load_task_data
from brewlab.models.build import load_tokenizer, without_call_settings
from brewlab.models.vocab import build_char_tokenizer

log = logging.getLogger("brewlab")


@dataclass
class Prepared:
    """A task ready for models: tokenizer and encoded splits."""

    kind: Any
    label_names: list[str]
    tokenizer: Any
    features: dict[str, list[dict[str, Any]]]
    rows: dict[str, list[dict[str, Any]]]
    sizes: dict[str, int]
    tokenizer_id: str
    data_id: str = ""  # hash of the rows, task settings, tokenizer and encoding code


def prepare_task(
    cfg: Mapping[str, Any],
    cache: Cache,
    tokenizer_from: str | None = None,
    vocab_tasks: Sequence[Mapping[str, Any]] | None = None,
) -> Prepared:
    """Read and encode the task. The tokenizer is the one saved with `tokenizer_from` (a model
    the teacher starts from), else a character vocabulary built from the training split (of
    every task in `vocab_tasks`, so tasks that share a student share its vocabulary)."""
    task_cfg = cfg["task"]
    kind = KINDS.get(task_cfg["kind"], "task.kind")
    data = load_task_data(task_cfg)
    for split, n in data.sizes().items():
        if n == 0:
            raise BrewlabError(f"task {task_cfg['name']}: the {split} split is empty")
    log.info("task %s: %s", task_cfg["name"], data.sizes())
    if tokenizer_from is not None:
        tokenizer = load_tokenizer(tokenizer_from)
    else:
        texts: list[str] = []
        others = {t["name"]: t for t in vocab_tasks or ()} | {task_cfg["name"]: task_cfg}
        tok_cfg = others[min(others)].get("tokenizer") or {}  # a shared vocabulary follows its first task's settings
        for name in sorted(others):  # one order whichever task asks, so the vocabularies are equal
            t_kind = KINDS.get(others[name]["kind"], "task.kind")
            rows = data.splits["train"] if name == task_cfg["name"] else load_task_data(others[name]).splits["train"]
            texts += [t for row in rows for t in t_kind.texts(row)]
        key = stable_hash({"texts": stable_hash(texts, 24), "tok": tok_cfg})
        tok_dir = cache.entry("tokenizers", "+".join(sorted(others)), key)
        if (tok_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(str(tok_dir), "tokenizer cache")
        else:
            tokenizer = build_char_tokenizer(texts, int(with_defaults(tok_cfg, TokenizerOptions)["min_freq"]), tok_cfg.get("max_size"))
            build = cache.build_dir(tok_dir)
            tokenizer.save_pretrained(str(build))
            publish_dir(build, tok_dir)
    tokenizer_id = stable_hash(tokenizer.get_vocab())
    features, data_id = encode_cached(kind, data.splits, tokenizer, task_cfg, cache)
    return Prepared(kind, data.label_names, tokenizer, features, data.splits, data.sizes(), tokenizer_id, data_id)


def encode_cached(
    kind: Any, splits: Mapping[str, list[dict[str, Any]]], tokenizer: Any, task_cfg: Mapping[str, Any], cache: Cache
) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Encoded splits and their key, read from the cache when this data set was tokenised before.

    Keyed by the rows themselves, the task settings, the whole tokenizer, the source of the task
    kinds and the transformers version, so a change to any of them re-encodes. An unreadable entry (a kill
    while writing, a full disk) is reported in one line and rebuilt.
    """
    import pickle
    import sys

    import transformers

    backend = getattr(without_call_settings(tokenizer), "backend_tokenizer", None)
    tasks_dir = Path(sys.modules[kind.__module__].__file__).parent  # the kinds and their shared helpers
    source = b"".join(f.read_bytes() for f in sorted(tasks_dir.glob("*.py"))) + transformers.__version__.encode()
    key = stable_hash(
        {
            "rows": stable_hash(splits, 24),
            "task": task_cfg,
            "tokenizer": [type(tokenizer).__name__, backend.to_str() if backend else tokenizer.get_vocab()],
            "code": hashlib.sha256(source).hexdigest(),
        }
    )
    path = cache.entry("features", task_cfg["name"], key, ".pkl")
    if path.is_file():
        try:
            with path.open("rb") as fh:
                return pickle.load(fh), key
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            log.warning("encoded data cache %s is unreadable (%s): encoding again", path, exc)
    features = {split: kind.encode(rows, tokenizer, task_cfg) for split, rows in splits.items()}
    with atomic_open(path, "wb") as fh:
        pickle.dump(features, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return features, key


def train_loader(
    features: Any, loop: LoopSettings, pad_token_id: int, seed: int, shard: tuple[int, int] = (0, 1)
) -> Any:
    """Length-grouped training batches (`length_pool` batches per sorted pool), this rank's share
    of each (`shard`: rank, world size); the same for the student and for a teacher's stages."""
    return make_loader(features, loop.batch_size, pad_token_id, seed, True, shard=shard, pool=loop.length_pool)


class DeviceLoader:
    """Moves each batch to the training device as it is drawn."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        set_epoch(self.loader, epoch)

    def __iter__(self):
        return (
            {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in self.loader
        )
