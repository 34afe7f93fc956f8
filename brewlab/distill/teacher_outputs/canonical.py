"""The canonical batching of every kept teacher output: the examples in length order, a fixed
number at a time, so a kept output is a function of the example alone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from brewlab.data.batching import PadCollator


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


def canonical_logits(
    teacher: Any, features: Sequence[Mapping[str, Any]], batch_size: int, pad_id: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The teacher's logits on `features` in the store's batches, for logits kept in memory."""
    for chunk, out, mask in canonical_outputs(teacher, features, ["logits"], batch_size, pad_id):
        yield torch.tensor(chunk), out["logits"], mask
