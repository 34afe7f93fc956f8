"""Logit distillation: the student's output logits against the teacher's at a temperature
(`loss.kd.fn`), each loss a mean over valid examples or positions."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry
from brewlab.distill.losses.masking import check_same_shape, masked_mean, unsqueeze_valid, validity, zero_invalid

Temperature = float | Tensor
LogitLoss = Callable[..., Tensor]

LOGIT_LOSSES: Registry[LogitLoss] = Registry("loss.kd.fn")


def _temperature(temperature: Temperature, logits: Tensor) -> Tensor:
    """Per-position temperature of shape logits.shape[:-1], detached (treated as a constant).

    A float is one temperature for all; a (B,) tensor is a per-example (dynamic) temperature,
    repeated over the L positions of 3-D logits.
    """
    lead = logits.shape[:-1]
    if isinstance(temperature, Tensor):
        t = temperature.detach().to(device=logits.device, dtype=logits.dtype)
        if t.dim() == 0:
            t = t.expand(lead)
        elif tuple(t.shape) == (logits.shape[0],):
            t = t.view(-1, *([1] * (len(lead) - 1))).expand(lead)
        else:
            raise BrewlabError(
                f"temperature tensor has shape {tuple(t.shape)}; expected a float or shape "
                f"({logits.shape[0]},) (one per example)"
            )
        if not bool((t > 0).all()):
            raise BrewlabError("temperature must be > 0 everywhere")
        return t
    if not float(temperature) > 0:
        raise BrewlabError(f"temperature must be > 0, got {temperature!r}")
    return torch.full(lead, float(temperature), dtype=logits.dtype, device=logits.device)


def _logit_loss(
    per_position: Callable[[Tensor, Tensor], Tensor],
    logits_s: Tensor,
    logits_t: Tensor,
    temperature: Temperature,
    mask: Tensor | None,
    t2_scaling: bool,
    name: str,
) -> Tensor:
    """Shared driver: validate, scale by 1/T, compute per-position loss, weight, masked mean."""
    what = f"kd loss {name!r}"
    if logits_s.dim() not in (2, 3):
        raise BrewlabError(f"{what}: logits must be (B, C) or (B, L, C), got {tuple(logits_s.shape)}")
    check_same_shape(logits_s, logits_t, what)
    lead = logits_s.shape[:-1]
    valid = validity(mask, lead, logits_s.device, what)
    temp = _temperature(temperature, logits_s)
    s = zero_invalid(logits_s, unsqueeze_valid(valid, -1)) / temp.unsqueeze(-1)
    t = zero_invalid(logits_t.detach(), unsqueeze_valid(valid, -1)) / temp.unsqueeze(-1)
    loss = per_position(s, t)
    if t2_scaling:
        loss = loss * temp * temp
    return masked_mean(loss, valid)


def _ce(s: Tensor, t: Tensor) -> Tensor:
    return -(F.softmax(t, dim=-1) * F.log_softmax(s, dim=-1)).sum(-1)


RULED_OUT = -1e3  # teacher logits at or below this mark classes a task rules out (MRC: outside the passage)


def _kl(s: Tensor, t: Tensor) -> Tensor:
    log_p_t = F.log_softmax(t, dim=-1)
    return (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=-1))).sum(-1)


@LOGIT_LOSSES.register("ce")
def kd_ce(
    logits_s: Tensor,
    logits_t: Tensor,
    temperature: Temperature,
    mask: Tensor | None = None,
    t2_scaling: bool = False,
) -> Tensor:
    """Soft cross-entropy: per position -sum_c softmax(t/T)_c * log_softmax(s/T)_c.

    Hinton-style KD: the student matches the teacher's softened distribution. Equals "kl"
    plus the teacher entropy (a constant), so gradients are the same as "kl".
    `t2_scaling=True` multiplies each position's loss by its T^2 before averaging (Hinton's
    correction keeping gradient size independent of T); off by default so the loss value
    is the plain formula and any scaling is an explicit config choice.
    Mean over valid examples/positions.
    """
    return _logit_loss(_ce, logits_s, logits_t, temperature, mask, t2_scaling, "ce")


@LOGIT_LOSSES.register("mse")
def kd_mse(
    logits_s: Tensor,
    logits_t: Tensor,
    temperature: Temperature,
    mask: Tensor | None = None,
    t2_scaling: bool = False,
) -> Tensor:
    """Logit regression: per position mean_c (s/T - t/T)^2 (MEAN over classes, not sum).

    Matches raw logits rather than probabilities (Ba & Caruana style); averaging over the C
    classes keeps the scale independent of the vocabulary/label count. `t2_scaling` as in
    "ce" (multiply each position's loss by T^2; default off). Mean over valid positions.
    Classes the teacher rules out (logit <= RULED_OUT) are left out of the class mean, so an
    MRC window's loss does not shrink with the padding and question around the passage.
    """
    kept = (logits_t.detach() > RULED_OUT).to(logits_s.dtype)

    def per_position(s: Tensor, t: Tensor) -> Tensor:
        return ((s - t).pow(2) * kept).sum(-1) / kept.sum(-1).clamp(min=1.0)

    return _logit_loss(per_position, logits_s, logits_t, temperature, mask, t2_scaling, "mse")


@LOGIT_LOSSES.register("kl")
def kd_kl(
    logits_s: Tensor,
    logits_t: Tensor,
    temperature: Temperature,
    mask: Tensor | None = None,
    t2_scaling: bool = False,
) -> Tensor:
    """KL(p_t || p_s): per position sum_c p_t (log p_t - log_softmax(s/T)), p_t = softmax(t/T).

    Same gradient as "ce" but 0 when the student matches the teacher, which makes the value
    readable. `t2_scaling` as in "ce" (multiply each position's loss by T^2; default off).
    Mean over valid positions.
    """
    return _logit_loss(_kl, logits_s, logits_t, temperature, mask, t2_scaling, "kl")
