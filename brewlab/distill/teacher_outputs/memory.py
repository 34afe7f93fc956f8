"""The memory backend: a teacher's logits kept for one run (`trainer.cache_teacher_outputs`, the
store off), filled before training in canonical batches and saved in checkpoints so a resumed
run reads the logits it kept."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from brewlab.distill.teacher_outputs.provider import OnlineOutputs, TeacherBatch

log = logging.getLogger("brewlab")

CanonicalLogits = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]  # -> (indices, logits, mask) batches


class TeacherCache:
    """Teacher logits per training example, reused across epochs when inputs repeat exactly.

    Rows are stored unpadded (cut at the example's length along the task kind's `seq_axis`) so
    examples can be regrouped into differently padded batches later. They are packed into a few
    large flat buffers rather than kept as one small tensor each: thousands of small long-lived
    allocations scattered between freed activations fragment the heap and keep it resident
    (measured by `benchmarks/bench.py`'s memory figure).
    """

    FIRST, SLAB = 1 << 14, 1 << 20  # elements in the first buffer (64 KiB of fp32); each next one doubles, to 4 MiB

    def __init__(self, seq_axis: int | None, pad_value: float) -> None:
        self.axis = seq_axis
        self.pad_value = pad_value
        self.slabs: list[torch.Tensor] = []
        self.where: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # idx -> (slab, offset, shape)
        self.used = 0  # elements filled in the last slab

    def __len__(self) -> int:
        return len(self.where)

    def _row(self, key: int) -> torch.Tensor:
        slab, offset, shape = self.where[key]
        return self.slabs[slab].narrow(0, offset, math.prod(shape)).view(shape)

    def has(self, idx: torch.Tensor) -> bool:
        return all(k in self.where for k in idx.tolist())

    def get(self, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """The cached rows of `idx` padded to `like`'s shape, or None if one was never cached."""
        if not self.has(idx):
            return None
        keys = idx.tolist()
        if self.axis is None:
            return torch.stack([self._row(k) for k in keys]).to(like.device, like.dtype)
        out = torch.full(like.shape, self.pad_value, dtype=like.dtype)
        for i, k in enumerate(keys):
            row = self._row(k)
            out[i].narrow(self.axis, 0, row.shape[self.axis]).copy_(row)
        return out.to(like.device)

    def put(self, idx: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> None:
        lengths = mask.sum(-1).tolist()
        logits = logits.detach().cpu()
        for i, k in enumerate(idx.tolist()):
            self._append(k, logits[i] if self.axis is None else logits[i].narrow(self.axis, 0, int(lengths[i])))

    def _append(self, key: int, row: torch.Tensor) -> None:
        size = row.numel()
        if not self.slabs or self.used + size > self.slabs[-1].numel():
            # sentence logits fill ~100 KiB (reviews_zh): a fixed 4 MiB first buffer was most of the cache
            grow = min(2 * self.slabs[-1].numel(), self.SLAB) if self.slabs else self.FIRST
            self.slabs.append(torch.empty(max(grow, size), dtype=row.dtype))
            self.used = 0
        self.slabs[-1].narrow(0, self.used, size).copy_(row.reshape(-1))
        self.where[key] = (len(self.slabs) - 1, self.used, tuple(row.shape))
        self.used += size

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: only the filled part of the last buffer."""
        slabs = [*self.slabs[:-1], self.slabs[-1][: self.used].clone()] if self.slabs else []
        return {"slabs": slabs, "where": self.where}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint's cache; also accepts the older layout (`{idx: row}`), repacked."""
        if "slabs" not in state:
            self.slabs, self.where, self.used = [], {}, 0
            for key, row in state.items():
                self._append(int(key), row)
            return
        self.slabs, self.where = list(state["slabs"]), dict(state["where"])
        self.used = self.slabs[-1].numel() if self.slabs else 0  # a resumed last buffer is full


class MemoryOutputs(OnlineOutputs):
    """The teacher's logits kept in a `TeacherCache`: computed up front from `canonical` (None:
    as epoch 1 runs the teacher on its training batches) and read from memory after that."""

    def __init__(self, teacher: Any, kind: Any, canonical: CanonicalLogits | None = None) -> None:
        super().__init__(teacher)
        self.cache = TeacherCache(kind.seq_axis, kind.logit_pad)
        self.canonical = canonical

    def __call__(self, batch: Mapping[str, torch.Tensor], hidden: bool = False, attention: bool = False) -> TeacherBatch:
        if "idx" not in batch:
            return super().__call__(batch, hidden, attention)
        if self.cache.has(batch["idx"]):
            return TeacherBatch(None, functools.partial(self.cache.get, batch["idx"]))
        outputs = super().__call__(batch, hidden, attention)
        self.cache.put(batch["idx"], outputs.view.logits, batch["attention_mask"])
        return outputs

    def prepare(self) -> None:
        """Fill an empty cache up front from `canonical` (a resumed run restored its cache from
        the checkpoint instead)."""
        super().prepare()
        if len(self.cache) or self.canonical is None:
            return
        started = time.perf_counter()
        for idx, logits, mask in self.canonical():
            self.cache.put(idx, logits, mask)
        log.info("teacher logits: %d examples computed up front, in length-sorted batches, in %.1f s", len(self.cache), time.perf_counter() - started)

    def kept(self) -> TeacherCache:
        return self.cache
