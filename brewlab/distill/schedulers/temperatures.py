"""Distillation temperatures (`scheduler.temperature.kind`): one for every example, or one per
example from how student and teacher logits compare (Wen et al. 2019).

Each is ``fn(logits_s, logits_t, base, *, mask, class_mask, **params) -> float | Tensor(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from brewlab.core.registry import Registry

TemperatureFn = Callable[..., "float | torch.Tensor"]

TEMPERATURES: Registry[TemperatureFn] = Registry("scheduler.temperature.kind")


def _rows_and_examples(
    logits: torch.Tensor, mask: torch.Tensor | None, class_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which logit rows count (shape logits.shape[:-1]) and the allowed classes (logits' shape).

    A row is a distribution over classes: one per example for (B, C) logits, one per position
    for (B, L, C). `mask` (B, L) rules out positions of 3-D logits (it is ignored for 2-D ones,
    which have one row per example); `class_mask`, broadcastable to the logits, rules out
    classes (MRC's positions outside the passage). A row without any allowed class is out too.
    """
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (B, C) or (B, L, C), got shape {tuple(logits.shape)}")
    rows = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if logits.dim() == 3 and mask is not None:
        if tuple(mask.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits (B, L) {tuple(logits.shape[:2])}")
        rows = mask.detach().to(device=logits.device) != 0
    classes = None
    if class_mask is not None:
        classes = torch.broadcast_to(class_mask.detach().to(device=logits.device) != 0, logits.shape)
        rows = rows & classes.any(dim=-1)
    return rows, classes


def _centred(base: float, beta: float, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tau_i = base + beta * (mean_j w_j - w_i)`` per example from per-row weights `w`.

    An example's w_i is the mean of its rows' weights (its only row for (B, C) logits, its valid
    positions for (B, L, C)); the batch mean runs over the examples that have a valid row, so
    it is exactly `base` over them. Examples without one get `base`.
    """
    if w.dim() == 2:
        count = rows.sum(dim=1)
        w = torch.where(rows, w, torch.zeros_like(w)).sum(dim=1) / count.clamp(min=1).to(w.dtype)
        present = count > 0
    else:
        present = rows
    if not bool(present.any()):
        return torch.full_like(w, float(base))
    mean = w[present].mean()
    return torch.where(present, base + beta * (mean - w), torch.full_like(w, float(base)))


@TEMPERATURES.register("constant")
def constant_temperature(logits_s: torch.Tensor, logits_t: torch.Tensor, base: float, **_unused: Any) -> float:
    """The same temperature `base` for every example and every step."""
    return float(base)


@TEMPERATURES.register("flsw")
def flsw_temperature(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    base: float,
    *,
    mask: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
    beta: float = 1.0,
    gamma: float = 2.0,
    **_unused: Any,
) -> torch.Tensor:
    """Per-example temperature that falls as student and teacher disagree (Wen et al., 2019,
    "Preparing Lessons", focal-loss-style sample weighting).

        w_i   = (1 - cos(z_s_i, z_t_i)) ** gamma        (cosine of the L2-normalised logits)
        tau_i = base + beta * (mean_j w_j - w_i)

    An example the two disagree on gets a *lower* temperature, i.e. sharper, more
    discriminative targets; one they agree on a higher one; the batch mean is exactly `base`.
    w_i lies in [0, 2 ** gamma], so ``beta * 2 ** gamma <= base`` keeps every tau_i > 0
    (checked at startup). For (B, L, C) logits w is taken per valid row and averaged per
    example; classes ruled out by `class_mask` are left out of both vectors of the cosine.

    Computed without gradient on detached logits, in float32. Returns a (B,) tensor.
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(
            f"student logits {tuple(logits_s.shape)} and teacher logits "
            f"{tuple(logits_t.shape)} must have the same shape"
        )
    rows, classes = _rows_and_examples(logits_s, mask, class_mask)
    with torch.no_grad():
        z_s = logits_s.detach().float()
        z_t = logits_t.detach().float().to(z_s.device)
        if classes is not None:
            z_s = torch.where(classes, z_s, torch.zeros_like(z_s))
            z_t = torch.where(classes, z_t, torch.zeros_like(z_t))
        # Rounding can push cos a hair outside [-1, 1]; a negative base with a fractional
        # exponent would turn into nan.
        cos = F.cosine_similarity(z_s, z_t, dim=-1)
        w = (1.0 - cos).clamp(min=0.0, max=2.0).pow(gamma)
        return _centred(base, beta, w, rows)


@TEMPERATURES.register("cwsm")
def cwsm_temperature(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    base: float,
    *,
    mask: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
    beta: float = 1.0,
    eps: float = 1e-3,
    **_unused: Any,
) -> torch.Tensor:
    """Per-example temperature that falls as the student is less confident (Wen et al., 2019,
    confidence-weighted by student max).

        w_i   = 1 / (max_k softmax(z_s_i)_k + eps)
        tau_i = base + beta * (mean_j w_j - w_i)

    An example the student is unsure of gets a *lower* temperature, a confident one a higher
    one; the batch mean is exactly `base`. With C allowed classes w_i lies in
    [1 / (1 + eps), 1 / (1 / C + eps)], which bounds the `beta` that keeps every tau_i > 0
    (checked at startup from the task's classes). The teacher's logits are not used. For
    (B, L, C) logits w is taken per valid row and averaged per example; classes ruled out by
    `class_mask` are left out of the softmax.

    Computed without gradient on detached logits, in float32. Returns a (B,) tensor.
    """
    rows, classes = _rows_and_examples(logits_s, mask, class_mask)
    with torch.no_grad():
        z_s = logits_s.detach().float()
        # Keep ruled-out rows (whatever they hold, even inf/nan) and classes out of the softmax.
        z_s = torch.where(rows.unsqueeze(-1), z_s, torch.zeros_like(z_s))
        if classes is not None:
            z_s = z_s.masked_fill(~classes & rows.unsqueeze(-1), float("-inf"))
        w = 1.0 / (z_s.softmax(dim=-1).amax(dim=-1) + eps)
        return _centred(base, beta, w, rows)


def _flsw_spread(num_classes: int | None, *, gamma: float, **_unused: Any) -> float:
    return 2.0**gamma


def _cwsm_spread(num_classes: int | None, *, eps: float, **_unused: Any) -> float | None:
    if num_classes is None:
        return None
    return 1.0 / (1.0 / num_classes + eps) - 1.0 / (1.0 + eps)


# Largest possible difference between two examples' weights w, per dynamic temperature (called
# with the temperature's parameters, defaults filled in): given it, ``beta * spread <= base``
# keeps every temperature above 0 (at least base / batch size). A temperature kind of the form
# base + beta * (mean w - w_i) registers its spread here, or its bound goes unchecked.
WEIGHT_SPREADS: dict[str, Callable[..., float | None]] = {"flsw": _flsw_spread, "cwsm": _cwsm_spread}
