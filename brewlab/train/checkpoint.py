"""Training checkpoints a killed run continues from exactly.

A checkpoint is one file per save (`step-00000120.pt`), written aside and renamed into place, so
a kill or a full disk at any moment leaves either the new file whole or the older ones untouched.
At start the newest readable one is used; unreadable ones are named in one line and skipped.
Each holds a fingerprint of the run's config, so a changed command never continues an
unrelated run.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.core.errors import BrewlabError
from brewlab.core.files import atomic_open

log = logging.getLogger("brewlab")


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from (dropout, shuffles, augmentation)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """`directory/step-*.pt`, newest `keep` kept; `fingerprint` ties them to one config. With
    `agree` (data-parallel ranks, each with its own directory), the readable steps are offered
    to it at resume and the step it returns is the one loaded, so every rank continues from the
    same step."""

    def __init__(
        self, directory: Path, fingerprint: str, keep: int = 2, agree: Callable[[list[int]], int | None] | None = None
    ) -> None:
        self.directory, self.fingerprint, self.keep, self.agree = Path(directory), fingerprint, keep, agree

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("step-*.pt"), reverse=True) if self.directory.is_dir() else []

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write atomically; on failure (e.g. a full disk) the earlier checkpoints stay valid."""
        final = self.directory / f"step-{step:08d}.pt"
        try:
            with atomic_open(final, "wb", prefix=".step-", fsync=True) as fh:
                torch.save({"fingerprint": self.fingerprint, "step": step, **state}, fh)
        except (OSError, RuntimeError) as exc:  # torch reports some write failures as RuntimeError
            kept = self.files()
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise BrewlabError(
                f"could not write checkpoint {final}: {reason}; "
                + (f"the previous checkpoint {kept[0].name} is intact" if kept else "no earlier checkpoint exists")
            ) from None
        for old in self.files()[self.keep :]:
            old.unlink(missing_ok=True)
        return final

    def latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint of this config (or the step `agree` picks), or None."""
        readable: dict[int, Path] = {}
        for path in self.files():
            state = self._read(path)
            if state is None:
                continue
            if self.agree is None:
                log.info("resuming from checkpoint %s (step %d)", path, state["step"])
                return state
            readable[state["step"]] = path
        if self.agree is None:
            return None
        step = self.agree(sorted(readable))
        if step is None:
            if readable:
                log.warning("%s: no checkpoint step that every rank holds; starting over", self.directory)
                self.clear()
            return None
        log.info("resuming from checkpoint %s (step %d)", readable[step], step)
        return self._read(readable[step])

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped the same way
            log.warning("checkpoint %s is unreadable (%s): skipped in favour of an older one", path, exc)
            return None
        if state.get("fingerprint") != self.fingerprint:
            raise BrewlabError(
                f"{path} was written by a run with another config; resume with the same command, "
                "or set resume=false to start this output directory over"
            )
        return state

    def clear(self) -> None:
        for path in [*self.files(), *self.directory.glob(".step-*.tmp")] if self.directory.is_dir() else []:
            path.unlink(missing_ok=True)
