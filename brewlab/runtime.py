"""What a run is given by the machine and the launcher (device, ranks, cache, tracker): passed
to every stage as one object and never written into the config, so the config stays what the
user composed and a run's fingerprint does not depend on where it runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from brewlab.cache import Cache


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    cache: Cache
    tracker: Any  # brewlab.tracking: .log(metrics, step)
    rank: int = 0
    world_size: int = 1
    progress: bool = True  # progress bars (rank 0 only)

    @classmethod
    def of(cls, cfg: Mapping[str, Any], tracker: Any) -> Runtime:
        """The runtime of this process for a validated config (ranks from torchrun's environment)."""
        from brewlab.models import device_of
        from brewlab.parallel import world

        rank, size = world()
        cache = Cache(cfg["cache_dir"])
        cache.root.mkdir(parents=True, exist_ok=True)
        progress = bool(cfg["trainer"]["progress"]) and rank == 0
        return cls(device_of(cfg["trainer"]["device"]), cache, tracker, rank, size, progress)

    @property
    def data_parallel(self) -> bool:
        """The student's stage is split across ranks (teacher stages run whole on rank 0)."""
        return self.world_size > 1

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def with_tracker(self, tracker: Any) -> Runtime:
        return dataclasses.replace(self, tracker=tracker)
