"""How a run's student stage reads its teachers: from the store where it can, saying in the log
which outputs came from it, or in one line why the store is bypassed."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from brewlab.config.schema import TrainerSettings
from brewlab.core.cache import Cache
from brewlab.distill.teacher_outputs.disk import StoredView
from brewlab.distill.teacher_outputs.layout import Wanted, weights_id
from brewlab.distill.teacher_outputs.store import StoreSkipped, TeacherStore
from brewlab.models.build import is_local_model_dir

log = logging.getLogger("brewlab")


class StorePlan:
    """How a run's student stage reads its teachers: from the store where it can, saying in the
    log which outputs came from it, or in one line why the store is bypassed."""

    def __init__(self, store: TeacherStore, task: str, data_id: str, features: Sequence[Mapping[str, Any]], pad_id: int) -> None:
        self.store, self.task, self.data_id, self.features, self.pad_id = store, task, data_id, features, pad_id

    @classmethod
    def of(
        cls,
        trainer: TrainerSettings,
        cache: Cache,
        task: str,
        prep: Any,
        features: Sequence[Mapping[str, Any]] | None,
    ) -> StorePlan | None:
        """The plan for one task's training `features` (None: they differ every epoch)."""
        if not trainer.teacher_store:
            return None
        if features is None:
            log.info("teacher store: bypassed, online augmentation gives the teacher new inputs every epoch")
            return None
        if not prep.kind.cache_teacher_logits:
            log.info("teacher store: bypassed, task kind %s keeps no teacher logits (too large per example)", type(prep.kind).__name__)
            return None
        store = TeacherStore(
            cache, trainer.teacher_store_max_gb, trainer.teacher_store_features, trainer.eval_batch_size
        )
        return cls(store, task, prep.data_id, features, prep.tokenizer.pad_token_id)

    def attach(self, view: Any, teacher: Any, matches: Sequence[Any]) -> Any:
        """`view` (a teacher's adaptor) read from the store, or `view` itself when it cannot be."""
        if teacher.path is None or not is_local_model_dir(teacher.path):
            log.info("teacher store: bypassed, teacher %s has no local weights to key its outputs by", teacher.path or "(given)")
            return view
        directory = self.store.entry_dir(self.task, weights_id(teacher.path), self.data_id, self.features)
        wanted = Wanted.of(matches)
        try:
            entry = self.store.open(directory, wanted, self.features, lambda: view, self.pad_id)
        except StoreSkipped as exc:
            log.warning("%s", exc)
            return view
        loaded = "" if teacher.loaded else "; the teacher's weights are not loaded for training"
        log.info("teacher outputs %s: read from the teacher store %s%s", ", ".join(wanted.arrays()), entry.directory, loaded)
        return StoredView(entry, view)
