"""Probability shift: a teacher's wrong top class trades places with the gold class, so its soft
target ranks the gold class first (`scheduler.probability_shift`)."""

from __future__ import annotations

from torch import Tensor

from brewlab.core.errors import BrewlabError


def probability_shift(logits_t: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Copy of teacher logits where wrong predictions have argmax and gold values swapped.

    Where argmax_c t != label (and label != ignore_index) the logit at the argmax and at the
    gold class trade places, so the teacher's soft target ranks the gold class first while
    keeping its "dark knowledge" about the others. Shapes (B, C)+(B,) or (B, L, C)+(B, L).
    The result is detached from the teacher graph.
    """
    if logits_t.dim() not in (2, 3) or tuple(labels.shape) != tuple(logits_t.shape[:-1]):
        raise BrewlabError(
            f"probability_shift: logits {tuple(logits_t.shape)} and labels "
            f"{tuple(labels.shape)} must be (B, C)+(B,) or (B, L, C)+(B, L)"
        )
    num_classes = logits_t.shape[-1]
    out = logits_t.detach().clone()
    flat = out.view(-1, num_classes)
    gold = labels.detach().to(out.device).reshape(-1).long()
    keep = gold != ignore_index
    if bool(((gold[keep] < 0) | (gold[keep] >= num_classes)).any()):
        raise BrewlabError(f"probability_shift: labels must be in [0, {num_classes}) or {ignore_index}")
    top = flat.argmax(-1)
    rows = (keep & (top != gold)).nonzero().squeeze(1)
    top, gold = top[rows], gold[rows]
    top_values = flat[rows, top].clone()
    flat[rows, top] = flat[rows, gold]
    flat[rows, gold] = top_values
    return out
