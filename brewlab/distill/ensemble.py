"""Several teacher adaptors seen as one, their logits combined by a registered combiner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from brewlab.distill.losses import TEACHER_COMBINERS
from brewlab.models.adaptors import ModelView


class TeacherEnsemble:
    """Several teacher adaptors seen as one: its logits are the teachers' logits combined by a
    `TEACHER_COMBINERS` function, so every distiller (and the evaluation) can use an
    ensemble wherever it takes one teacher. Intermediate features are not combined."""

    def __init__(self, members: list[Any], combine: str = "logits", weights: list[float] | None = None) -> None:
        self.members = members
        self.kind = members[0].kind
        self.combine_name, self.weight_list = combine, weights
        self.combine = TEACHER_COMBINERS.get(combine, "distiller.combine")
        self.weights = torch.tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)

    @property
    def model(self) -> nn.Module:
        """The members' models as one module (for .eval(), parameter counts, devices)."""
        return nn.ModuleList([m.model for m in self.members])

    @property
    def stored(self) -> bool:
        return all(m.stored for m in self.members)

    @property
    def store_entries(self) -> list[str]:
        return [name for m in self.members for name in m.store_entries]

    @property
    def online(self) -> TeacherEnsemble:
        """The same ensemble over its members' models (for evaluation on any split)."""
        return TeacherEnsemble([m.online for m in self.members], self.combine_name, self.weight_list)

    def __call__(self, batch: Mapping[str, torch.Tensor], hidden: bool = False, attention: bool = False) -> ModelView:
        if hidden or attention:
            raise ValueError("a teacher ensemble exposes combined logits only, not hidden states or attention")
        views = [member(batch) for member in self.members]
        return ModelView(
            logits=self.combine([v.logits for v in views], self.weights),
            mask=views[0].mask,
            logits_mask=views[0].logits_mask,
            class_mask=views[0].class_mask,
            labels=views[0].labels,
        )
