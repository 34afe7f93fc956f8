"""The teacher-output store: a teacher's outputs on a training set, computed once and read from
disk by every later epoch, job, seed and rank.

An entry (`<cache>/teacher_outputs/<task>-<key>/`) is keyed by the teacher's weights, the
encoded training inputs (offline augmented copies included) and the stored precision. It holds
one flat file per array (`logits`, `hidden.<layer>`, `attention.<layer>`), each example's row
unpadded and found by its length, and `manifest.json` listing the arrays that are complete. An
array is written aside, on space reserved up front, and renamed in; the manifest is rewritten
after it, so a kill or a full disk never leaves a half array in an entry, and a later objective
that needs another layer adds that array to the same entry. One process builds an entry at a
time (a file lock); the others wait, lending it their threads, then read. Reads are
memory-mapped.

The store runs the teacher in canonical batches (`canonical_outputs`), not in the training
batches: on a CPU an example's outputs change in their last bits with the shape of the batch it
is run in, and these batches make every kept teacher output a function of the example alone.
The in-memory logit cache of a run without the store is filled the same way, so the two train
the same student bit for bit; a teacher run online on each training batch (intermediate matches
without the store) agrees with the store to rounding only.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.core.cache import Cache, stable_hash
from brewlab.core.files import write_json_atomic
from brewlab.models.adaptors import MODEL_INPUTS, ModelView

log = logging.getLogger("brewlab")

VERSION = 1  # bump when what an array holds changes
MANIFEST = "manifest.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}  # bf16 kept as its bits


class StoreSkipped(Exception):
    """The store cannot hold this entry (budget, full disk); the run goes on without it."""


@dataclass(frozen=True)
class Wanted:
    """What a distiller reads from its teacher: logits and the layers each feature is matched at."""

    hidden: tuple[int, ...] = ()
    attention: tuple[int, ...] = ()

    @classmethod
    def of(cls, matches: Sequence[Any]) -> Wanted:
        from brewlab.distill.objective import layers_of

        layers: dict[str, set[int]] = {"hidden": set(), "attention": set()}
        for term in matches:
            for t_layer, _ in term.pairs:
                layers[term.feature].update(layers_of(t_layer))
        return cls(tuple(sorted(layers["hidden"])), tuple(sorted(layers["attention"])))

    def arrays(self) -> list[str]:
        return ["logits", *(f"hidden.{i}" for i in self.hidden), *(f"attention.{i}" for i in self.attention)]


def weights_id(directory: str | Path) -> str:
    """Content hash of a model directory's weights and config: what the teacher computes."""
    from brewlab.models.build import WEIGHT_FILES

    digest = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES):
        path = Path(directory) / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:24]


def inputs_id(features: Sequence[Mapping[str, Any]]) -> str:
    """Hash of what the teacher reads from each training example, in index order."""
    return stable_hash([[f.get(k) for k in MODEL_INPUTS if k in f] for f in features], 24)


class Entry:
    """One store entry: its arrays, memory-mapped, and their rows by example index."""

    def __init__(self, directory: Path, lengths: np.ndarray, manifest: Mapping[str, Any]) -> None:
        self.directory, self.lengths = directory, lengths
        self.manifest = dict(manifest)
        self._maps: dict[str, tuple[torch.Tensor, np.ndarray, list[int | None]]] = {}
        self._token_starts: torch.Tensor | None = None  # each example's first token in the token-major arrays

    @property
    def name(self) -> str:
        return self.directory.name

    def has(self, name: str) -> bool:
        return name in self.manifest["arrays"]

    def _array(self, name: str) -> tuple[torch.Tensor, np.ndarray, list[int | None]]:
        if name not in self._maps:
            spec = self.manifest["arrays"][name]
            dtype = DTYPES[spec["dtype"]]
            flat = np.memmap(self.directory / f"{name}.bin", dtype=_STORAGE[dtype], mode="c")  # private: never writes back
            tensor = torch.from_numpy(flat)
            if dtype is torch.bfloat16:
                tensor = tensor.view(torch.bfloat16)
            self._maps[name] = (tensor, row_offsets(spec["row"], self.lengths), spec["row"])
        return self._maps[name]

    def batch(self, name: str, idx: torch.Tensor, width: int, fill: float) -> torch.Tensor:
        """The rows of `idx` as one batch, each padded with `fill` to `width` along its token
        dimensions. Rows of fixed size, and rows whose only token dimension is the first (a
        (L, D) hidden state, (L, C) token logits), are gathered in one indexing operation."""
        flat, _, row = self._array(name)
        tokens = [a for a, d in enumerate(row) if d is None]
        fixed = [d for d in row if d is not None]
        if not tokens:
            return flat.view(-1, *fixed).index_select(0, idx)
        if tokens != [0]:
            return _padded(self.rows(name, idx.tolist()), tuple(tokens), width, fill)
        valid = torch.arange(width)[None, :] < torch.from_numpy(self.lengths)[idx][:, None]
        out = torch.full((len(idx), width, *fixed), fill, dtype=flat.dtype)
        out[valid] = self.tokens(name, idx)
        return out

    def tokens(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """The rows of `idx` laid end to end along their (first) token dimension: (N, *fixed)
        for N tokens in all, with no padding, in one indexing operation."""
        flat, _, row = self._array(name)
        if row[0] is not None or None in row[1:]:
            raise ValueError(f"teacher store: {name} rows are not token-major {tuple(row)}")
        if self._token_starts is None:
            self._token_starts = torch.from_numpy(row_offsets([None], self.lengths))
        lengths = torch.from_numpy(self.lengths)[idx]
        firsts = torch.cumsum(lengths, 0) - lengths  # where each row starts in the output
        source = torch.arange(int(lengths.sum())) + torch.repeat_interleave(self._token_starts[idx] - firsts, lengths)
        return flat.view(-1, *row[1:]).index_select(0, source)

    def rows(self, name: str, idx: Sequence[int]) -> list[torch.Tensor]:
        """The stored rows of `idx` (unpadded, the stored dtype)."""
        flat, offsets, row = self._array(name)
        out = []
        for k in idx:
            shape = [int(self.lengths[k]) if d is None else d for d in row]
            out.append(flat[int(offsets[k]) : int(offsets[k + 1])].view(shape))
        return out


def row_sizes(row: Sequence[int | None], lengths: np.ndarray) -> np.ndarray:
    """Elements of each example's row: the fixed dimensions times its length per `None`."""
    fixed = math.prod(d for d in row if d is not None)
    return fixed * lengths.astype(np.int64) ** sum(d is None for d in row)


def row_offsets(row: Sequence[int | None], lengths: np.ndarray) -> np.ndarray:
    """Where each example's row starts in its flat array (and, last, the array's size)."""
    return np.concatenate([[0], np.cumsum(row_sizes(row, lengths))])


class StoredView:
    """A teacher read from the store, under the adaptor contract (`brewlab.models.adaptors`): the same
    `ModelView` an online forward of the training batch gives, rows re-padded to the batch.
    Its sizes come from `online` (the adaptor that runs the model), whose weights it never loads."""

    stored = True

    def __init__(self, entry: Entry, online: Any) -> None:
        self.entry, self.online, self.kind = entry, online, online.kind

    @property
    def model(self) -> Any:
        return self.online.model

    @property
    def store_entries(self) -> list[str]:
        return [self.entry.name]

    @property
    def num_layers(self) -> int:
        return self.online.num_layers

    @property
    def hidden_size(self) -> int:
        return self.online.hidden_size

    @property
    def num_heads(self) -> int:
        return self.online.num_heads

    def __call__(self, batch: Mapping[str, torch.Tensor], hidden: bool = False, attention: bool = False) -> ModelView:
        idx = batch["idx"].cpu()
        width = batch["attention_mask"].shape[1]
        logits = self.entry.batch("logits", idx, width, self.kind.logit_pad)
        n = self.num_layers

        device = batch["attention_mask"].device

        def features(feature: str, count: int) -> StoredFeatures:
            return StoredFeatures(self.entry, feature, count, idx, width, device)

        return ModelView(
            logits=logits.to(device),
            mask=batch["attention_mask"],
            logits_mask=self.kind.logits_mask(batch),
            class_mask=self.kind.class_mask(batch),
            labels=batch.get("labels"),
            hidden=features("hidden", n + 1) if hidden else None,
            attention=features("attention", n) if attention else None,
        )


class StoredFeatures(Sequence):
    """One feature's layers for a batch, read from the store when a loss asks for a layer (a
    layer the entry lacks is None): padded to the batch, or as valid tokens only (`tokens`)."""

    def __init__(self, entry: Entry, feature: str, count: int, idx: torch.Tensor, width: int, device: torch.device) -> None:
        self.entry, self.feature, self.count = entry, feature, count
        self.idx, self.width, self.device = idx, width, device
        self._padded: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, layer: int) -> torch.Tensor | None:  # type: ignore[override]
        name = self._name(layer)
        if name is None:
            return None
        if name not in self._padded:
            self._padded[name] = self.entry.batch(name, self.idx, self.width, 0.0).float().to(self.device)
        return self._padded[name]

    def tokens(self, layer: int) -> torch.Tensor:
        """Layer `layer` of the batch's valid tokens, (N, D), example by example."""
        name = self._name(layer)
        if name is None:
            raise KeyError(f"teacher store entry {self.entry.name} has no {self.feature}.{layer}")
        return self.entry.tokens(name, self.idx).float().to(self.device)

    def _name(self, layer: int) -> str | None:
        if not -self.count <= layer < self.count:
            raise IndexError(f"{self.feature} layer {layer} of {self.count}")
        name = f"{self.feature}.{layer % self.count}"
        return name if self.entry.has(name) else None


def _padded(rows: list[torch.Tensor], axes: tuple[int, ...], width: int, fill: float) -> torch.Tensor:
    """Rows of unequal length stacked into one batch, padded along `axes` to `width`."""
    shape = list(rows[0].shape)
    for a in axes:
        shape[a] = width
    out = torch.full((len(rows), *shape), fill, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        target = out[i]
        for a in axes:
            target = target.narrow(a, 0, row.shape[a])
        target.copy_(row)
    return out


# ----------------------------------------------------------------------------- building


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes (parallel jobs, torchrun ranks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("teacher store: waiting for another process to finish %s", path.with_suffix("").name)
            with _waiting(path):
                fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _waiting(lock: Path) -> Iterator[None]:
    """Say, while this process waits for `lock`, how many threads it leaves idle."""
    directory = lock.with_name(lock.name + ".waiting")
    mine = directory / f"{socket.gethostname()}-{os.getpid()}"
    try:
        directory.mkdir(exist_ok=True)
        mine.write_text(str(torch.get_num_threads()))
    except OSError:  # only a hint to the lock's holder: waiting works without it
        yield
        return
    try:
        yield
    finally:
        mine.unlink(missing_ok=True)


def waiting_threads(lock: Path) -> int:
    """The threads of the live processes on this machine that wait for `lock`."""
    host, total = socket.gethostname(), 0
    for path in lock.with_name(lock.name + ".waiting").glob(f"{host}-*"):
        try:
            pid, threads = int(path.name.rsplit("-", 1)[1]), int(path.read_text())
            os.kill(pid, 0)  # still there (a killed waiter leaves its file behind)
        except (OSError, ValueError):
            continue
        total += threads
    return total


class Borrowed:
    """While one process computes what others wait for, their threads would sit idle: it takes
    them (up to its CPUs) batch by batch and gives them back when done. The thread count does
    not change the teacher's outputs; only the batch shapes do."""

    def __init__(self, lock: Path) -> None:
        self.lock, self.own, self.most = lock, torch.get_num_threads(), torch.get_num_threads()
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or self.own

    def __enter__(self) -> Borrowed:
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.own)

    def each(self, items: Iterator[Any]) -> Iterator[Any]:
        """`items`, each computed with this process's threads and those of the waiting ones."""
        while True:
            threads = max(self.own, min(self.cpus, self.own + waiting_threads(self.lock)))
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            if threads > self.most:
                self.most = threads
                log.info("teacher store: computing with %d threads while other processes wait for it", threads)
            try:
                yield next(items)
            except StopIteration:
                return


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
                storage = _STORAGE[DTYPES[dtypes[n]]]
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


def canonical_outputs(
    teacher: Any, features: Sequence[Mapping[str, Any]], names: Sequence[str], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]]:
    """The teacher's outputs `names` ("logits", "hidden.<layer>", "attention.<layer>") on every
    example, batch by batch, with each batch's example indices and attention mask.

    Batches are the examples in length order, `batch_size` at a time, padded to their longest.
    On a CPU an example's outputs depend in their last bits on the shape of the batch it is run
    in, so every teacher output that is kept (the store, the in-memory logit cache) is computed
    in these batches: it is then a function of the example alone, never of the seed or of the
    training batch the example falls in, and a stored run matches an unstored one bit for bit."""
    from brewlab.data.batching import PadCollator

    collate = PadCollator(pad_id)
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    need_hidden = any(n.startswith("hidden.") for n in names)
    need_attention = any(n.startswith("attention.") for n in names)
    teacher.model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size].tolist()
        batch = collate([{**features[k], "idx": k} for k in chunk])
        batch = {k: v.to(_device_of(teacher)) for k, v in batch.items()}
        with torch.inference_mode():
            view = teacher(batch, hidden=need_hidden, attention=need_attention)
        out = {"logits": view.logits.float()}
        for name in names:
            feature, _, layer = name.partition(".")
            if layer:
                out[name] = getattr(view, feature)[int(layer)]
        yield chunk, out, batch["attention_mask"]


def _device_of(teacher: Any) -> torch.device:
    return next(teacher.model.parameters()).device


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


# ----------------------------------------------------------------------------- a run's use


class StorePlan:
    """How a run's student stage reads its teachers: from the store where it can, saying in the
    log which outputs came from it, or in one line why the store is bypassed."""

    def __init__(self, store: TeacherStore, task: str, data_id: str, features: Sequence[Mapping[str, Any]], pad_id: int) -> None:
        self.store, self.task, self.data_id, self.features, self.pad_id = store, task, data_id, features, pad_id

    @classmethod
    def of(
        cls,
        trainer_cfg: Mapping[str, Any],
        cache: Cache,
        task: str,
        prep: Any,
        features: Sequence[Mapping[str, Any]] | None,
    ) -> StorePlan | None:
        """The plan for one task's training `features` (None: they differ every epoch)."""
        if not trainer_cfg["teacher_store"]:
            return None
        if features is None:
            log.info("teacher store: bypassed, online augmentation gives the teacher new inputs every epoch")
            return None
        if not prep.kind.cache_teacher_logits:
            log.info("teacher store: bypassed, task kind %s keeps no teacher logits (too large per example)", type(prep.kind).__name__)
            return None
        store = TeacherStore(
            cache, float(trainer_cfg["teacher_store_max_gb"]), str(trainer_cfg["teacher_store_features"]), int(trainer_cfg["eval_batch_size"])
        )
        return cls(store, task, prep.data_id, features, prep.tokenizer.pad_token_id)

    def attach(self, view: Any, teacher: Any, matches: Sequence[Any]) -> Any:
        """`view` (a teacher's adaptor) read from the store, or `view` itself when it cannot be."""
        from brewlab.models.build import is_local_model_dir

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
