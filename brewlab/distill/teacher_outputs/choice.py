"""Which backend gives a distiller its teacher outputs; the distiller only sees the interface."""

from __future__ import annotations

from typing import Any

from brewlab.config.schema import TrainerSettings
from brewlab.distill.teacher_outputs.disk import StoredOutputs
from brewlab.distill.teacher_outputs.memory import CanonicalLogits, MemoryOutputs
from brewlab.distill.teacher_outputs.provider import OnlineOutputs, TeacherOutputs


def outputs_for(
    teacher: Any | None,
    objective: Any,
    trainer: TrainerSettings,
    kind: Any,
    inputs_repeat: bool = True,
    canonical: CanonicalLogits | None = None,
) -> TeacherOutputs | None:
    """The store when `teacher` reads it; else logits kept in memory when inputs repeat exactly
    across epochs (`inputs_repeat=False`: online augmentation), no feature is matched and the
    task kind's logits are small enough; else the teacher run on each batch. None: no teacher."""
    if teacher is None:
        return None
    if teacher.stored:
        return StoredOutputs(teacher)
    keep = (
        trainer.cache_teacher_outputs
        and inputs_repeat
        and not objective.matches
        and kind.cache_teacher_logits  # a kind may have logits too large to keep
    )
    return MemoryOutputs(teacher, kind, canonical) if keep else OnlineOutputs(teacher)
