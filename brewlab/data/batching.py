"""Batches: dynamic padding and length-grouped shuffling, so little compute is spent on pads."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from brewlab.core.parallel import RankSlices


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of similar length: shuffle, cut into pools of `pool` batches, sort each
    pool by length, slice into batches, then shuffle the batch order. Reseeded per epoch. Bigger
    pools pad less but make batches of alike examples, which costs the student accuracy (the
    README's Performance section has the measured trade-off)."""

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, pool: int, shuffle: bool = True
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = pool
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        size = self.batch_size * self.pool
        batches: list[list[int]] = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        self.epoch += 1
        return iter(batches)


def set_epoch(batches: Any, epoch: int) -> None:
    """Tell a training batch source which epoch comes next (its shuffle depends on it), through
    wrappers and DataLoaders; a source without epochs is left alone. Explicit epochs let a
    resumed run draw the data order of the epoch it stopped in."""
    if hasattr(batches, "set_epoch"):
        batches.set_epoch(epoch)
    elif isinstance(batches, DataLoader) and batches.batch_sampler is not None:
        set_epoch(batches.batch_sampler, epoch)


class PadCollator:
    """Pads every sequence field to the longest in the batch (labels with -100). Fields aligned
    with `input_ids` are padded to a width rounded up to a multiple of `multiple`, never past
    `cap` (the data set's longest example, which fits the model); others (span positions) keep
    their own longest. Keys starting with "_" are per-example metadata and stay out."""

    def __init__(self, pad_token_id: int, multiple: int = 1, cap: int | None = None) -> None:
        self.pad = {"input_ids": pad_token_id, "labels": -100}
        self.multiple, self.cap = multiple, cap

    def _token_width(self, rows: list[dict[str, Any]]) -> int:
        longest = max(len(r["input_ids"]) for r in rows)
        width = -(-longest // self.multiple) * self.multiple
        return max(longest, min(width, self.cap)) if self.cap is not None else width

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        tokens = self._token_width(rows) if "input_ids" in rows[0] else None
        for key in rows[0]:
            if key.startswith("_"):
                continue
            values = [r[key] for r in rows]
            if isinstance(values[0], (list, tuple)):
                aligned = tokens is not None and all(len(v) == len(r["input_ids"]) for v, r in zip(values, rows, strict=True))
                width = tokens if aligned else max(len(v) for v in values)
                fill = self.pad.get(key, 0)
                batch[key] = torch.tensor([list(v) + [fill] * (width - len(v)) for v in values])
            else:
                batch[key] = torch.tensor(values)
        return batch


# Padded lengths are rounded up to a multiple of this: a handful of distinct batch shapes instead
# of one per length keeps oneDNN's per-shape primitive cache (and so peak RSS) small, for a few
# extra padded positions per batch (benchmarks/bench.py measures the memory).
PAD_MULTIPLE = 8


def make_loader(
    features: Sequence[dict[str, Any]],
    batch_size: int,
    pad_token_id: int,
    seed: int,
    train: bool,
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    pool: int = 8,
) -> DataLoader:
    """Training loaders group by length within pools of `pool` batches and reshuffle each epoch;
    evaluation keeps length order (fastest) and the caller restores example order through the
    `idx` field. A training loader of rank r among N (`shard`) yields its slice of global batches
    of batch_size x N."""
    lengths = [len(f["input_ids"]) for f in features]
    rank, size = shard if train else (0, 1)
    sampler: Any = LengthGroupedBatches(lengths, batch_size * size, seed, shuffle=train, pool=pool if train else len(lengths))
    if size > 1:
        sampler = RankSlices(sampler, rank, size)
    collate = PadCollator(pad_token_id, PAD_MULTIPLE, cap=max(lengths, default=0))
    return DataLoader(features, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)


class FreshEachEpoch:
    """Training batches whose examples are rebuilt every epoch (online augmentation: new noise
    each pass). Its length is that of the first epoch; later epochs may differ slightly (MRC
    windows), which the step-counted training loop absorbs."""

    def __init__(
        self,
        make_features: Callable[[int], Sequence[dict[str, Any]]],
        batch_size: int,
        pad_token_id: int,
        seed: int,
        pool: int,
    ) -> None:
        self.make_features = make_features
        self.batch_size, self.pad_token_id, self.seed, self.pool = batch_size, pad_token_id, seed, pool
        self.epoch = 0
        self.first = make_features(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.first) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        features = self.first if self.epoch == 0 else self.make_features(self.epoch)
        loader = make_loader(features, self.batch_size, self.pad_token_id, self.seed + self.epoch, train=True, pool=self.pool)
        self.epoch += 1
        return iter(loader)


class TaskMixture:
    """Training batches drawn from several tasks: each draw picks task t with probability
    proportional to |train_t|^tau (tau=1: by size, 0: uniformly) and takes that task's next
    batch, restarting its loader when exhausted. A pass holds as many batches as all loaders
    together; each batch names its task under `task`."""

    def __init__(self, loaders: Mapping[str, Any], sizes: Mapping[str, int], tau: float, seed: int) -> None:
        self.loaders = dict(loaders)
        self.names = list(self.loaders)
        weights = np.array([float(sizes[n]) ** tau for n in self.names])
        self.probabilities = weights / weights.sum()
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The task draws of pass `epoch`; each task's loader restarts at its own next epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        self.epoch += 1
        rng = np.random.default_rng(self.seed + epoch)
        starts = dict.fromkeys(self.names, 0)

        def start(name: str) -> Iterator[dict[str, Any]]:
            # the k-th pass over a task's loader in mixture pass e has epoch e*10^6+k: a function of
            # (e, k) only, so a resumed run shuffles every task's batches as the uninterrupted one
            set_epoch(self.loaders[name], epoch * 10**6 + starts[name])
            starts[name] += 1
            return iter(self.loaders[name])

        iterators = {n: start(n) for n in self.names}
        for _ in range(len(self)):
            name = self.names[int(rng.choice(len(self.names), p=self.probabilities))]
            try:
                batch = next(iterators[name])
            except StopIteration:
                iterators[name] = start(name)
                batch = next(iterators[name])
            yield {**batch, "task": name}
