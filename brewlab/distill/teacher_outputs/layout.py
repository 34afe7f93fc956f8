"""How a teacher-store entry is keyed and laid out: the arrays a distiller wants, their storage
types, and where each example's unpadded row starts in its flat file."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.core.cache import stable_hash
from brewlab.distill.objective import layers_of
from brewlab.models.adaptors import MODEL_INPUTS
from brewlab.models.build import WEIGHT_FILES

VERSION = 1  # bump when what an array holds changes
MANIFEST = "manifest.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}  # bf16 kept as its bits


@dataclass(frozen=True)
class Wanted:
    """What a distiller reads from its teacher: logits and the layers each feature is matched at."""

    hidden: tuple[int, ...] = ()
    attention: tuple[int, ...] = ()

    @classmethod
    def of(cls, matches: Sequence[Any]) -> Wanted:
        layers: dict[str, set[int]] = {"hidden": set(), "attention": set()}
        for term in matches:
            for t_layer, _ in term.pairs:
                layers[term.feature].update(layers_of(t_layer))
        return cls(tuple(sorted(layers["hidden"])), tuple(sorted(layers["attention"])))

    def arrays(self) -> list[str]:
        return ["logits", *(f"hidden.{i}" for i in self.hidden), *(f"attention.{i}" for i in self.attention)]


def weights_id(directory: str | Path) -> str:
    """Content hash of a model directory's weights and config: what the teacher computes."""
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


def row_sizes(row: Sequence[int | None], lengths: np.ndarray) -> np.ndarray:
    """Elements of each example's row: the fixed dimensions times its length per `None`."""
    fixed = math.prod(d for d in row if d is not None)
    return fixed * lengths.astype(np.int64) ** sum(d is None for d in row)


def row_offsets(row: Sequence[int | None], lengths: np.ndarray) -> np.ndarray:
    """Where each example's row starts in its flat array (and, last, the array's size)."""
    return np.concatenate([[0], np.cumsum(row_sizes(row, lengths))])
