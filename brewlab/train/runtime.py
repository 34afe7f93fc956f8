"""What a run is given by the machine and the launcher (device, ranks, cache, tracker): passed
to every stage as one object and never written into the config, so the config stays what the
user composed and a run's fingerprint does not depend on where it runs."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from brewlab.config.schema import TrainerSettings
from brewlab.core.cache import Cache
from brewlab.core.parallel import world
from brewlab.models.build import device_of


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    cache: Cache
    tracker: Any  # brewlab.train.tracking: .log(metrics, step)
    rank: int = 0
    world_size: int = 1
    progress: bool = True  # progress bars (rank 0 only)

    @classmethod
    def of(cls, cache_dir: str, trainer: TrainerSettings, tracker: Any) -> Runtime:
        """The runtime of this process for a validated config (ranks from torchrun's environment)."""
        rank, size = world()
        cache = Cache(cache_dir)
        cache.root.mkdir(parents=True, exist_ok=True)
        return cls(device_of(trainer.device), cache, tracker, rank, size, trainer.progress and rank == 0)

    @property
    def data_parallel(self) -> bool:
        """The student's stage is split across ranks (teacher stages run whole on rank 0)."""
        return self.world_size > 1

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def with_tracker(self, tracker: Any) -> Runtime:
        return dataclasses.replace(self, tracker=tracker)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (nlpaug and samplers draw from the first two), and on the CPU
    ask torch for deterministic kernels (a warning, not an error, where an op has none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if not torch.cuda.is_available():  # free on the CPU; on a GPU it would cost speed
        torch.use_deterministic_algorithms(True, warn_only=True)


_HEAP_TRIMMER: list[threading.Thread] = []


def keep_heap_compact(every_s: float | None) -> bool:
    """Every `every_s` seconds hand the allocator's free pages back to the OS (glibc
    `malloc_trim`), from a daemon thread so the training loop is untouched. Dynamic padding
    allocates tensors of ever-changing sizes and glibc keeps the freed holes between live blocks
    resident, enough to put peak RSS above a pad-to-max loop's (`benchmarks/bench.py` measures
    both). False where the C library is not glibc or
    `every_s` is null; the thread is started once per process."""
    if every_s is None:
        return False
    if _HEAP_TRIMMER:
        return True
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]

    def loop() -> None:
        while True:
            time.sleep(every_s)
            trim(0)  # ctypes drops the GIL for the call

    _HEAP_TRIMMER.append(threading.Thread(target=loop, name="brewlab-heap-trim", daemon=True))
    _HEAP_TRIMMER[0].start()
    return True
