"""Masked arithmetic shared by the distillation losses: 0/1 or bool masks with 1 = valid; masked
positions are zeroed before any arithmetic, so whatever they hold (even inf/nan) changes neither
loss nor gradient; means run over valid elements only (an all-masked batch gives 0, not nan);
`None` means all valid and skips the selects (they cost time on fixed-length batches)."""

from __future__ import annotations

import torch
from torch import Tensor

from brewlab.core.errors import BrewlabError

Valid = Tensor | None  # bool validity; None = all valid


def validity(mask: Tensor | None, shape: torch.Size, device: torch.device, what: str) -> Valid:
    """Bool validity tensor of `shape` (None when `mask` is None); checks the mask shape."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise BrewlabError(f"{what}: mask has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask.detach().to(device=device).bool()


def masked_mean(values: Tensor, valid: Valid) -> Tensor:
    """sum(values[valid]) / count(valid); `valid` broadcasts to `values`; 0 if nothing valid."""
    if valid is None:
        return values.mean()
    valid = valid.expand_as(values)
    total = torch.where(valid, values, 0.0).sum()
    return total / valid.sum().clamp(min=1).to(values.dtype)


def zero_invalid(x: Tensor, valid: Valid) -> Tensor:
    """Replace entries at invalid positions by 0 (`valid` broadcasts to `x`)."""
    return x if valid is None else torch.where(valid, x, 0.0)


def unsqueeze_valid(valid: Valid, dim: int) -> Valid:
    """`valid.unsqueeze(dim)`, keeping None (all valid) as None."""
    return None if valid is None else valid.unsqueeze(dim)


def check_same_shape(s: Tensor, t: Tensor, what: str, hint: str = "") -> None:
    if s.shape != t.shape:
        raise BrewlabError(f"{what}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}{hint}")


def check_ndim(x: Tensor, ndim: int, layout: str, what: str) -> None:
    if x.dim() != ndim:
        raise BrewlabError(f"{what}: expected a {layout} tensor, got shape {tuple(x.shape)}")
