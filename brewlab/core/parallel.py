"""Data-parallel training under `torchrun --nproc_per_node=N run.py ...`.

Every rank builds the same run; rank 0 makes shared caches first (tokenizer, pretrained masked
LM, teachers, augmented data) while the others wait, then load them. Each global batch (the
length-grouped batch of `batch_size x N` examples a single process would draw) is split across
ranks, student and projection gradients are averaged after backward, and logged losses are
averaged across ranks, so N processes train like one process with the global batch. The teacher
stays frozen (eval, no grad) on every rank. Only rank 0 tracks, saves and writes metrics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def world() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return world()[0] == 0


def init(device: torch.device) -> None:
    """Join the process group once (gloo on the CPU, nccl on GPUs); no-op for one process."""
    import torch.distributed as dist

    if world()[1] > 1 and not dist.is_initialized():
        from datetime import timedelta

        # long enough for rank 0 to pretrain or train a teacher while the others wait
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=12))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches); the others run it after, reading them."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shared_dir(path: Path) -> Path:
    """Rank 0's run directory, on every rank: the one place all ranks keep their checkpoints
    (the others' own Hydra directories are scratch)."""
    import torch.distributed as dist

    if world()[1] == 1 or not dist.is_initialized():
        return path
    box = [str(path)]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def common_step(steps: Sequence[int]) -> int | None:
    """The newest checkpoint step that every rank holds (ranks killed between their saves of
    one step agree on the one before), or None when they share none."""
    import torch.distributed as dist

    if world()[1] == 1 or not dist.is_initialized():
        return max(steps, default=None)
    gathered: list[Any] = [None] * world()[1]
    dist.all_gather_object(gathered, sorted(steps))
    shared = set.intersection(*(set(g) for g in gathered))
    return max(shared, default=None)


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Mean of every gradient across ranks (a parameter without a gradient counts as zero)."""
    import torch.distributed as dist

    size = world()[1]
    if size == 1 or not dist.is_initialized():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Logged numbers averaged over ranks (every rank must call it with the same keys)."""
    import torch.distributed as dist

    if world()[1] == 1 or not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / world()[1] for k, v in zip(keys, tensor.tolist(), strict=True)}


class RankSlices:
    """This rank's share of each global batch: example i of the batch goes to rank i mod N.
    The global batches come from the single-process sampler, so sharding keeps its length
    grouping and its reshuffle every epoch, and every rank takes the same number of steps."""

    def __init__(self, global_batches: Any, rank: int, size: int) -> None:
        self.batches, self.rank, self.size = global_batches, rank, size

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            # a last batch smaller than N examples: ranks short of one reuse its first example
            yield batch[self.rank :: self.size] or batch[:1]
