"""The lazy teacher handle: a teacher's weights are loaded only when something runs it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from brewlab.models.adaptors import HFAdaptor, LazyAdaptor
from brewlab.models.build import set_attention

log = logging.getLogger("brewlab")


class Teacher:
    """A run's teacher: where it came from, its settings, and its model, loaded only when
    something runs it (a teacher whose outputs are all in the teacher store is never loaded)."""

    def __init__(
        self,
        source: str,
        path: str | None,
        config: Mapping[str, Any],
        load: Callable[[], Any] | None = None,
        model: Any | None = None,
        entry: Path | None = None,
    ) -> None:
        self.source = source  # loaded, cache, trained (or given: a model handed in by a harness)
        self.path = path  # its weights: a cache entry, a local model directory or a hub id
        self.config = config
        self.entry = entry  # its cache entry, when it was fine-tuned by brewlab
        self._load, self._model = load, model
        self._attention: str | None = None

    @classmethod
    def of(cls, model: Any) -> Teacher:
        """A teacher model made by the caller (tests, harnesses)."""
        return model if isinstance(model, Teacher) else cls("given", None, {}, model=model)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._load()
            log.info("teacher: loaded %s", self.path)
            if self._attention is not None:
                self.use_attention(self._attention)
        return self._model

    def use_attention(self, implementation: str) -> None:
        """Run with this attention implementation from now on (now, or once it is loaded)."""
        if self._model is None:
            self._attention = implementation
        else:
            set_attention(self._model, implementation)

    def model_config(self) -> Any:
        """The model's config (sizes, depth), read without loading its weights."""
        if self._model is not None:
            return self._model.config
        from transformers import AutoConfig  # lazy: slow to import, and a stored teacher may never need it

        return AutoConfig.from_pretrained(self.path)

    def adaptor(self, kind: Any) -> Any:
        if self.loaded:
            return HFAdaptor(self._model, kind)
        return LazyAdaptor(lambda: self.model, functools.cache(self.model_config), kind)
