"""The one interface a distiller reads its teacher's outputs through, and its simplest backend:
the teacher run on every training batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from brewlab.models.adaptors import ModelView


@dataclass
class TeacherBatch:
    """The teacher's outputs on one training batch: its view (logits and the features the losses
    match), or only logits kept from an earlier pass, padded to the student's on request."""

    view: ModelView | None
    kept: Callable[[torch.Tensor], torch.Tensor] | None = None  # like -> kept logits padded to it

    def logits(self, like: torch.Tensor) -> torch.Tensor:
        """The teacher's logits, shaped (and, when kept, typed and placed) like `like`."""
        return self.view.logits if self.view is not None else self.kept(like)


class TeacherOutputs(ABC):
    """Where a distiller's teacher outputs come from; the backends differ only in what they keep."""

    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher  # the adaptor (or ensemble) the outputs are of

    @abstractmethod
    def __call__(self, batch: Mapping[str, torch.Tensor], hidden: bool = False, attention: bool = False) -> TeacherBatch:
        """The teacher's outputs on `batch`, with its hidden states or attention maps if asked."""

    @abstractmethod
    def prepare(self) -> None:
        """Ready the outputs before the first step; called after a resume restored `kept()`."""

    def kept(self) -> Any | None:
        """What a checkpoint saves so a resumed run reads the same outputs (a `state_dict` and
        `load_state_dict` holder), or None when nothing is kept in memory."""
        return None

    def entries(self) -> list[str]:
        """The teacher-store entries read, named in checkpoints and `metrics.json`."""
        return self.teacher.store_entries


class OnlineOutputs(TeacherOutputs):
    """The teacher run on each training batch, keeping nothing."""

    def __call__(self, batch: Mapping[str, torch.Tensor], hidden: bool = False, attention: bool = False) -> TeacherBatch:
        with torch.no_grad():
            return TeacherBatch(self.teacher(batch, hidden=hidden, attention=attention))

    def prepare(self) -> None:
        self.teacher.model.eval()
