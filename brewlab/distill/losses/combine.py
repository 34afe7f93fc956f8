"""How several teachers' logits become one distillation target (`distiller.combine`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry

TEACHER_COMBINERS: Registry[Callable[[Sequence[Tensor], Tensor], Tensor]] = Registry("distiller.combine")


def _weighted(logits: Sequence[Tensor], weights: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Stacked teacher logits (N, ...) and weights (N,) normalised to sum 1, both checked."""
    if len(logits) == 0 or len(logits) != weights.numel():
        raise BrewlabError(f"{what}: {len(logits)} teacher logits but {weights.numel()} weights")
    if any(t.shape != logits[0].shape for t in logits):
        raise BrewlabError(f"{what}: teacher logits differ in shape: {[tuple(t.shape) for t in logits]}")
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise BrewlabError(f"{what}: weights must be >= 0 with a positive sum; got {weights.tolist()}")
    stacked = torch.stack([t.detach() for t in logits])
    w = (weights / weights.sum()).to(stacked)
    return stacked, w.view(-1, *([1] * (stacked.dim() - 1)))


@TEACHER_COMBINERS.register("logits")
def mean_logits(logits: Sequence[Tensor], weights: Tensor) -> Tensor:
    """Weighted mean of the teachers' logits (the usual multi-teacher KD target)."""
    stacked, w = _weighted(logits, weights, "combine=logits")
    return (w * stacked).sum(0)


@TEACHER_COMBINERS.register("probs")
def mean_probs(logits: Sequence[Tensor], weights: Tensor) -> Tensor:
    """Log of the weighted mean of the teachers' probabilities (at T=1), usable as logits:
    softmax of the result is the ensemble's mean distribution. Computed in log space, so
    positions every teacher rules out (very negative logits) stay finite."""
    stacked, w = _weighted(logits, weights, "combine=probs")
    return torch.logsumexp(F.log_softmax(stacked.float(), dim=-1) + w.float().log(), dim=0).to(stacked.dtype)
