"""The disk backend: a teacher-store entry read through memory maps, as an adaptor
(`StoredView`) that gives the `ModelView` an online forward of the training batch gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.distill.teacher_outputs.layout import DTYPES, STORAGE, row_offsets
from brewlab.distill.teacher_outputs.provider import OnlineOutputs
from brewlab.models.adaptors import ModelView


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
            flat = np.memmap(self.directory / f"{name}.bin", dtype=STORAGE[dtype], mode="c")  # private: never writes back
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


class StoredOutputs(OnlineOutputs):
    """Outputs read from the store by `StoredView` adaptors (one per teacher, combined by an
    ensemble); the teacher's weights are never loaded for training."""

    def prepare(self) -> None:
        """Nothing to ready: putting the teacher in eval mode would load its weights."""
