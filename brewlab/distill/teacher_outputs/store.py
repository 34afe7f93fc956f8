"""The entries of one cache: how an entry is found, checked, built (in canonical batches, on disk
space reserved up front, each array renamed in) and extended with the arrays a later objective
needs."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.core.cache import Cache, stable_hash
from brewlab.core.files import write_json_atomic
from brewlab.distill.teacher_outputs.canonical import canonical_outputs
from brewlab.distill.teacher_outputs.disk import Entry
from brewlab.distill.teacher_outputs.layout import (
    DTYPES,
    MANIFEST,
    STORAGE,
    VERSION,
    Wanted,
    inputs_id,
    row_offsets,
    row_sizes,
)
from brewlab.distill.teacher_outputs.locking import Borrowed, locked

log = logging.getLogger("brewlab")


class StoreSkipped(Exception):
    """The store cannot hold this entry (budget, full disk); the run goes on without it."""


class TeacherStore:
    """The entries of one cache, and how an entry is found, checked, built and extended."""

    def __init__(self, cache: Cache, max_gb: float, feature_dtype: str, batch_size: int) -> None:
        self.cache, self.max_bytes = cache, int(max_gb * 1e9)
        self.feature_dtype, self.batch_size = feature_dtype, batch_size

    def entry_dir(self, task: str, teacher_id: str, data_id: str, features: Sequence[Mapping[str, Any]]) -> Path:
        key = self.cache.key(
            {"teacher": teacher_id, "data": data_id, "inputs": inputs_id(features), "features": self.feature_dtype, "version": VERSION}
        )
        return self.cache.entry("teacher_outputs", task, key)

    def open(
        self,
        directory: Path,
        wanted: Wanted,
        features: Sequence[Mapping[str, Any]],
        teacher: Callable[[], Any],
        pad_id: int,
    ) -> Entry:
        """The entry holding every array in `wanted`, computing the missing ones with `teacher()`
        (an adaptor, called only then). Raises `StoreSkipped` when it cannot be held."""
        lengths = np.array([int(sum(f["attention_mask"])) if "attention_mask" in f else len(f["input_ids"]) for f in features])
        lock = directory.with_name(directory.name + ".lock")
        with locked(lock):
            manifest = self._checked(directory, lengths)
            missing = [a for a in wanted.arrays() if a not in manifest["arrays"]]
            if missing:
                with Borrowed(lock) as threads:
                    built = self._build(directory, manifest, missing, features, lengths, teacher(), pad_id, threads)
                manifest = {**manifest, "arrays": {**manifest["arrays"], **built}}
                try:
                    write_json_atomic(directory / MANIFEST, manifest)
                except OSError as exc:  # the arrays just written stay unlisted, so unread
                    raise StoreSkipped(f"teacher store: cannot write {directory / MANIFEST} ({exc}); training reads the teacher online") from None
        return Entry(directory, lengths, manifest)

    def _checked(self, directory: Path, lengths: np.ndarray) -> dict[str, Any]:
        """The entry's manifest with only its intact arrays; a damaged array is named in one line."""
        empty = {"version": VERSION, "examples": len(lengths), "lengths": stable_hash(lengths.tolist()), "arrays": {}}
        path = directory / MANIFEST
        if not path.is_file():
            return empty
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("teacher store %s: manifest unreadable (%s): computing the entry again", directory.name, exc)
            return empty
        if manifest.get("lengths") != empty["lengths"] or manifest.get("version") != VERSION:
            log.warning("teacher store %s: made for other inputs: computing the entry again", directory.name)
            return empty
        intact = {}
        for name, spec in manifest["arrays"].items():
            file = directory / f"{name}.bin"
            size = file.stat().st_size if file.is_file() else 0
            if size == spec["bytes"]:
                intact[name] = spec
            else:
                log.warning(
                    "teacher store %s: %s.bin holds %d of its %d bytes (truncated or damaged): computing it again",
                    directory.name, name, size, spec["bytes"],
                )
        return {**manifest, "arrays": intact}

    def _build(
        self,
        directory: Path,
        manifest: Mapping[str, Any],
        names: Sequence[str],
        features: Sequence[Mapping[str, Any]],
        lengths: np.ndarray,
        teacher: Any,
        pad_id: int,
        threads: Borrowed,
    ) -> dict[str, Any]:
        """Compute the arrays `names` over every example, in canonical batches, with the threads
        of the processes waiting for them."""
        started = time.perf_counter()
        outputs = threads.each(canonical_outputs(teacher, features, names, self.batch_size, pad_id))
        first = next(outputs)  # gives each array's row shape, so its size is known before writing
        rows = {name: _row_template(name, first[1][name], teacher.kind.seq_axis) for name in names}
        dtypes = {name: "fp32" if name == "logits" else self.feature_dtype for name in names}
        sizes = {n: int(row_sizes(rows[n], lengths).sum()) * DTYPES[dtypes[n]].itemsize for n in names}
        held = sum(spec["bytes"] for spec in manifest["arrays"].values())
        total = held + sum(sizes.values())
        if total > self.max_bytes:
            raise StoreSkipped(
                f"teacher store: the entry would take {total / 1e9:.2f} GB, above trainer.teacher_store_max_gb="
                f"{self.max_bytes / 1e9:g}; training reads the teacher online (raise the setting to store it)"
            )
        tmp = {n: directory / f".{n}.bin.tmp" for n in names}
        try:
            directory.mkdir(parents=True, exist_ok=True)
            maps = {}
            for n in names:
                with open(tmp[n], "wb") as fh:
                    if sizes[n]:
                        _reserve(fh.fileno(), sizes[n])
                storage = STORAGE[DTYPES[dtypes[n]]]
                flat = np.memmap(tmp[n], dtype=storage, mode="r+") if sizes[n] else np.zeros(0, storage)
                maps[n] = (flat, row_offsets(rows[n], lengths))
            for chunk, out, _ in itertools.chain([first], outputs):
                for n in names:
                    flat, offsets = maps[n]
                    target = torch.from_numpy(flat)
                    if DTYPES[dtypes[n]] is torch.bfloat16:
                        target = target.view(torch.bfloat16)
                    for i, k in enumerate(chunk):
                        row = _cut(out[n][i], rows[n], int(lengths[k]))
                        target[int(offsets[k]) : int(offsets[k + 1])].copy_(row.reshape(-1).to(DTYPES[dtypes[n]]))
            for n in names:
                flat = maps[n][0]
                if isinstance(flat, np.memmap):
                    flat.flush()
                del maps[n]
                with open(tmp[n], "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp[n], directory / f"{n}.bin")
        except OSError as exc:
            for path in tmp.values():
                path.unlink(missing_ok=True)
            if not manifest["arrays"]:
                shutil.rmtree(directory, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreSkipped(f"teacher store: no space left for {total / 1e9:.2f} GB under {directory.parent}; "
                                   "training reads the teacher online") from None
            raise
        seconds = time.perf_counter() - started
        log.info(
            "teacher store %s: computed %s over %d examples in %.1f s (%.1f MB)",
            directory.name, ", ".join(names), len(lengths), seconds, sum(sizes.values()) / 1e6,
        )
        return {n: {"dtype": dtypes[n], "row": rows[n], "bytes": sizes[n], "seconds": round(seconds, 3)} for n in names}


def _reserve(fd: int, size: int) -> None:
    """Claim `size` bytes of disk for a file, so a full disk fails here, before any row is
    written (a file system without fallocate gets a sparse file instead)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)


def _row_template(name: str, batch_out: torch.Tensor, logit_axis: int | None) -> list[int | None]:
    """One example's row shape with `None` for each dimension that runs over its tokens."""
    shape: list[int | None] = list(batch_out.shape[1:])
    if name == "logits":
        axes = () if logit_axis is None else (logit_axis,)
    elif name.startswith("hidden."):
        axes = (0,)  # (L, D)
    else:
        axes = (1, 2)  # (H, L, L)
    for a in axes:
        shape[a] = None
    return shape


def _cut(row: torch.Tensor, template: Sequence[int | None], length: int) -> torch.Tensor:
    for a, d in enumerate(template):
        if d is None:
            row = row.narrow(a, 0, length)
    return row
