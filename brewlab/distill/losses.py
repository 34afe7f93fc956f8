"""Distillation losses as pure tensor functions, looked up by name from two registries.

`LOGIT_LOSSES` compare student and teacher output logits at a temperature; `MATCH_LOSSES`
compare intermediate features (hidden states, attention maps, pairs of layers). Conventions
shared by every function here:

* teacher inputs are detached, so no gradient ever reaches the teacher;
* masks are 0/1 or bool tensors with 1 = valid position; masked positions are zeroed before
  any arithmetic, so whatever they hold (even inf/nan) changes neither loss nor gradient;
* reductions are means over valid elements only, so the loss scale does not depend on how
  much padding a batch carries (an all-masked batch gives 0, not nan);
* `mask=None` means every position is valid and skips the selects altogether: on fixed-length
  batches they cost several percent of a step (measured by `benchmarks/bench.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry

Temperature = float | Tensor
Valid = Tensor | None  # bool validity; None = all valid
Feature = Tensor | Sequence[Tensor]
LogitLoss = Callable[..., Tensor]
MatchLoss = Callable[..., Tensor]



@dataclass(frozen=True)
class MatchProps:
    """What a feature-match loss needs, declared where it is registered, so that the layer
    mapping and the startup checks follow from the loss and never from a list of names.

    feature: the feature it reads, "hidden" (B, L, D) or "attention" (B, H, L, L).
    layers: "single" (one layer per side), "within" (a pair of layers per side, by default one
      layer twice: similarity inside a layer) or "consecutive" (a pair per side: each mapped
      layer with the next one, as flow between layers).
    same_size: teacher and student feature sizes must be equal (a projection bridges them).
    same_heads: the attention maps are compared head by head, so the head counts must agree.
    per_token: the loss is a mean over valid tokens of a value of each token alone, so it equals
      the same loss on the valid tokens only, packed as one unpadded row (1, N, D); the distiller
      then projects and compares real tokens only, never the padding.
    """

    feature: str = "hidden"
    layers: str = "single"
    same_size: bool = False
    same_heads: bool = False
    per_token: bool = False

    @property
    def paired(self) -> bool:
        return self.layers != "single"


LOGIT_LOSSES: Registry[LogitLoss] = Registry("loss.kd.fn")
MATCH_LOSSES: Registry[MatchLoss] = Registry("loss.<term>.fn", default_props=MatchProps())
TEACHER_COMBINERS: Registry[Callable[[Sequence[Tensor], Tensor], Tensor]] = Registry("distiller.combine")

ATTENTION = MatchProps(feature="attention")
ATTENTION_PER_HEAD = MatchProps(feature="attention", same_heads=True)
FLOW = MatchProps(layers="consecutive", same_size=True)
WITHIN = MatchProps(layers="within")

__all__ = ["LOGIT_LOSSES", "MATCH_LOSSES", "TEACHER_COMBINERS", "MatchProps", "probability_shift"]


# --------------------------------------------------------------------------- helpers


def _valid(mask: Tensor | None, shape: torch.Size, device: torch.device, what: str) -> Valid:
    """Bool validity tensor of `shape` (None when `mask` is None); checks the mask shape."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise BrewlabError(f"{what}: mask has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask.detach().to(device=device).bool()


def _masked_mean(values: Tensor, valid: Valid) -> Tensor:
    """sum(values[valid]) / count(valid); `valid` broadcasts to `values`; 0 if nothing valid."""
    if valid is None:
        return values.mean()
    valid = valid.expand_as(values)
    total = torch.where(valid, values, 0.0).sum()
    return total / valid.sum().clamp(min=1).to(values.dtype)


def _zero_invalid(x: Tensor, valid: Valid) -> Tensor:
    """Replace entries at invalid positions by 0 (`valid` broadcasts to `x`)."""
    return x if valid is None else torch.where(valid, x, 0.0)


def _expand(valid: Valid, dim: int) -> Valid:
    """`valid.unsqueeze(dim)`, keeping None (all valid) as None."""
    return None if valid is None else valid.unsqueeze(dim)


def _check_same_shape(s: Tensor, t: Tensor, what: str, hint: str = "") -> None:
    if s.shape != t.shape:
        raise BrewlabError(f"{what}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}{hint}")


def _check_ndim(x: Tensor, ndim: int, layout: str, what: str) -> None:
    if x.dim() != ndim:
        raise BrewlabError(f"{what}: expected a {layout} tensor, got shape {tuple(x.shape)}")


def _pair(feat: Feature, what: str, side: str) -> tuple[Tensor, Tensor]:
    """Unpack a (layer a, layer b) pair of (B, L, D) tensors."""
    if isinstance(feat, Tensor) or len(feat) != 2:
        raise BrewlabError(f"{what}: the {side} feature must be a pair (a, b) of (B, L, D) tensors")
    a, b = feat
    _check_ndim(a, 3, "(B, L, D)", f"{what} ({side} a)")
    _check_ndim(b, 3, "(B, L, D)", f"{what} ({side} b)")
    if a.shape[:2] != b.shape[:2]:
        raise BrewlabError(f"{what}: {side} layers have different (B, L): {tuple(a.shape[:2])} vs {tuple(b.shape[:2])}")
    return a, b


# --------------------------------------------------------------------------- logit losses


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
    _check_same_shape(logits_s, logits_t, what)
    lead = logits_s.shape[:-1]
    valid = _valid(mask, lead, logits_s.device, what)
    temp = _temperature(temperature, logits_s)
    s = _zero_invalid(logits_s, _expand(valid, -1)) / temp.unsqueeze(-1)
    t = _zero_invalid(logits_t.detach(), _expand(valid, -1)) / temp.unsqueeze(-1)
    loss = per_position(s, t)
    if t2_scaling:
        loss = loss * temp * temp
    return _masked_mean(loss, valid)


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


# --------------------------------------------------------------------------- hidden states


def _hidden_pair(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None, what: str) -> tuple[Tensor, Tensor, Valid]:
    """Validate equal-shape (B, L, D) features; returns student, detached teacher, validity."""
    _check_ndim(feat_s, 3, "(B, L, D)", what)
    _check_same_shape(feat_s, feat_t, what, "; hidden sizes must match (add a projection for the student)")
    valid = _valid(mask, feat_s.shape[:2], feat_s.device, what)
    return feat_s, feat_t.detach(), valid


@MATCH_LOSSES.register("hidden_mse", MatchProps(same_size=True, per_token=True))
def hidden_mse(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """sum over valid tokens of ||s_i - t_i||^2 / (n_valid_tokens * D), for (B, L, D) inputs.

    TinyBERT-style hidden-state regression; dividing by D keeps it comparable across sizes.
    """
    s, t, valid = _hidden_pair(feat_s, feat_t, mask, "hidden_mse")
    if valid is None:
        return F.mse_loss(s, t)
    # one select on the difference (not one per side): pads may hold NaN and still drop out
    squares = _zero_invalid(s - t, valid.unsqueeze(-1)).pow(2).sum()
    return squares / (valid.sum().clamp(min=1) * s.shape[-1]).to(s.dtype)


@MATCH_LOSSES.register("cos", MatchProps(same_size=True, per_token=True))
def cos(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over valid tokens of 1 - cos(s_i, t_i), for (B, L, D) inputs.

    Matches the direction of hidden states and ignores their norm (DistilBERT's cosine loss).
    """
    s, t, valid = _hidden_pair(feat_s, feat_t, mask, "cos")
    v = _expand(valid, -1)
    sim = F.cosine_similarity(_zero_invalid(s, v), _zero_invalid(t, v), dim=-1, eps=1e-8)
    return _masked_mean(1.0 - sim, valid)


@MATCH_LOSSES.register("pkd", MatchProps(same_size=True))
def pkd(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Patient-KD: mean over batch of sum_d (s0/||s0|| - t0/||t0||)_d^2 at position 0 ([CLS]).

    Normalising removes the scale difference between teacher and student layers. Only
    position 0 is used, so `mask` is ignored.
    """
    del mask
    _check_ndim(feat_s, 3, "(B, L, D)", "pkd")
    _check_ndim(feat_t, 3, "(B, L, D)", "pkd")
    if feat_s.shape[0] != feat_t.shape[0] or feat_s.shape[2] != feat_t.shape[2]:
        raise BrewlabError(
            f"pkd: student (B, L, D)={tuple(feat_s.shape)} and teacher {tuple(feat_t.shape)} "
            "need equal B and D (add a projection for the student)"
        )
    s = F.normalize(feat_s[:, 0], p=2, dim=-1, eps=1e-12)
    t = F.normalize(feat_t.detach()[:, 0], p=2, dim=-1, eps=1e-12)
    return (s - t).pow(2).sum(-1).mean()


# --------------------------------------------------------------------------- attention maps


def _attention_inputs(
    feat_s: Tensor, feat_t: Tensor, mask: Tensor | None, what: str, same_heads: bool, hint: str
) -> tuple[Tensor, Tensor, Valid]:
    """Validate (B, H, L, L) maps; returns student, detached teacher, (B, L) validity."""
    _check_ndim(feat_s, 4, "(B, H, L, L)", what)
    _check_ndim(feat_t, 4, "(B, H, L, L)", what)
    if same_heads and feat_s.shape[1] != feat_t.shape[1]:
        raise BrewlabError(
            f"{what}: student has {feat_s.shape[1]} heads, teacher has {feat_t.shape[1]}; "
            f"{what} needs equal head counts, use {hint} instead"
        )
    b, _, lq, lk = feat_s.shape
    if lq != lk or (feat_t.shape[0], feat_t.shape[2], feat_t.shape[3]) != (b, lq, lk):
        raise BrewlabError(
            f"{what}: attention maps must be (B, H, L, L) with equal B and L; student "
            f"{tuple(feat_s.shape)}, teacher {tuple(feat_t.shape)}"
        )
    valid = _valid(mask, torch.Size((b, lq)), feat_s.device, what)
    return feat_s, feat_t.detach(), valid


def _pair_valid(valid: Valid) -> Valid:
    """(B, L) token validity -> (B, 1, L, L) validity of (query i, key j) pairs."""
    return None if valid is None else (valid.unsqueeze(-1) & valid.unsqueeze(-2)).unsqueeze(1)


def _masked_pair_mse(s: Tensor, t: Tensor, valid: Valid) -> Tensor:
    """Mean squared difference over valid (i, j) pairs and heads of (B, H, L, L) maps."""
    pv = _pair_valid(valid)
    return _masked_mean((_zero_invalid(s, pv) - _zero_invalid(t, pv)).pow(2), pv)


def _masked_attention_ce(s: Tensor, t: Tensor, valid: Valid) -> Tensor:
    """Per head and valid row: -sum_{valid j} p_t log max(p_s, 1e-12); mean over rows, heads."""
    pv = _pair_valid(valid)
    log_s = torch.log(_zero_invalid(s, pv).clamp(min=1e-12))
    rows = -(_zero_invalid(t, pv) * log_s).sum(-1)  # (B, H, L)
    return _masked_mean(rows, _expand(valid, 1))


@MATCH_LOSSES.register("attention_mse", ATTENTION_PER_HEAD)
def attention_mse(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of (A_s - A_t)^2 over heads and valid (query, key) pairs; maps (B, H, L, L).

    TinyBERT attention transfer, head by head, so head counts must be equal.
    """
    s, t, valid = _attention_inputs(
        feat_s, feat_t, mask, "attention_mse", True, "attention_mse_sum or attention_ce_mean"
    )
    return _masked_pair_mse(s, t, valid)


@MATCH_LOSSES.register("attention_mse_sum", ATTENTION)
def attention_mse_sum(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Masked MSE (as attention_mse) between sum_h A_s and sum_h A_t.

    Summing over heads first lets teacher and student have different head counts.
    """
    s, t, valid = _attention_inputs(feat_s, feat_t, mask, "attention_mse_sum", False, "")
    return _masked_pair_mse(s.sum(1, keepdim=True), t.sum(1, keepdim=True), valid)


@MATCH_LOSSES.register("attention_ce", ATTENTION_PER_HEAD)
def attention_ce(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per head and valid query row i: -sum_{valid j} p_t(i,j) log max(p_s(i,j), 1e-12).

    Cross-entropy between the attention distributions of each row (MiniLM-style);
    mean over valid rows and heads. Head counts must be equal.
    """
    s, t, valid = _attention_inputs(
        feat_s, feat_t, mask, "attention_ce", True, "attention_ce_mean or attention_mse_sum"
    )
    return _masked_attention_ce(s, t, valid)


@MATCH_LOSSES.register("attention_ce_mean", ATTENTION)
def attention_ce_mean(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """attention_ce between the head-averaged maps mean_h A_s and mean_h A_t.

    Averaging (not summing) keeps each row a probability distribution; head counts may differ.
    """
    s, t, valid = _attention_inputs(feat_s, feat_t, mask, "attention_ce_mean", False, "")
    return _masked_attention_ce(s.mean(1, keepdim=True), t.mean(1, keepdim=True), valid)


# --------------------------------------------------------------------------- layer pairs


def _pair_inputs(
    feat_s: Feature, feat_t: Feature, mask: Tensor | None, what: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Valid]:
    """Unpack student/teacher pairs; returns s_a, s_b, t_a, t_b (teacher detached), validity."""
    s_a, s_b = _pair(feat_s, what, "student")
    t_a, t_b = _pair(feat_t, what, "teacher")
    if s_a.shape[:2] != t_a.shape[:2]:
        raise BrewlabError(f"{what}: student (B, L)={tuple(s_a.shape[:2])} != teacher (B, L)={tuple(t_a.shape[:2])}")
    valid = _valid(mask, s_a.shape[:2], s_a.device, what)
    return s_a, s_b, t_a.detach(), t_b.detach(), valid


def _gram(a: Tensor, b: Tensor, valid: Valid) -> Tensor:
    """a^T b / n_valid over valid tokens: (B, L, Da), (B, L, Db) -> (B, Da, Db)."""
    if valid is None:
        return a.transpose(1, 2) @ b / a.shape[1]
    v = valid.unsqueeze(-1)
    n = valid.sum(-1).clamp(min=1).to(a.dtype).view(-1, 1, 1)
    return _zero_invalid(a, v).transpose(1, 2) @ _zero_invalid(b, v) / n


@MATCH_LOSSES.register("gram", FLOW)
@MATCH_LOSSES.register("fsp", FLOW)
def gram(feat_s: Feature, feat_t: Feature, mask: Tensor | None = None) -> Tensor:
    """FSP / Gram matching: G = a^T b / n_valid (B, D, D); loss = mean_{B,D,D} (G_s - G_t)^2.

    a, b are two layers of the same model (feature pairs); G describes how features flow
    between them. Only valid tokens enter G. Teacher and student G must have equal dims.
    """
    s_a, s_b, t_a, t_b, valid = _pair_inputs(feat_s, feat_t, mask, "gram/fsp")
    if (s_a.shape[-1], s_b.shape[-1]) != (t_a.shape[-1], t_b.shape[-1]):
        raise BrewlabError(
            f"gram/fsp needs equal hidden sizes: student D=({s_a.shape[-1]}, {s_b.shape[-1]}) "
            f"vs teacher D=({t_a.shape[-1]}, {t_b.shape[-1]}); use mmd/nst for different sizes"
        )
    return (_gram(s_a, s_b, valid) - _gram(t_a, t_b, valid)).pow(2).mean()


def _zero_pair(a: Tensor, b: Tensor, valid: Valid) -> tuple[Tensor, Tensor]:
    """Both layers with pads zeroed; one select when the pair is one layer (NST's usual case)."""
    za = _zero_invalid(a, valid)
    return za, za if b is a else _zero_invalid(b, valid)


def _token_similarity(a: Tensor, b: Tensor, side: str) -> Tensor:
    """a b^T / D: (B, L, D) x (B, L, D) -> (B, L, L)."""
    if a.shape[-1] != b.shape[-1]:
        raise BrewlabError(
            f"mmd/nst: the {side} pair has hidden sizes {a.shape[-1]} and {b.shape[-1]}; "
            "the two layers of one side must share D"
        )
    return a @ b.transpose(1, 2) / a.shape[-1]


@MATCH_LOSSES.register("mmd", WITHIN)
@MATCH_LOSSES.register("nst", WITHIN)
def mmd(feat_s: Feature, feat_t: Feature, mask: Tensor | None = None) -> Tensor:
    """Token-similarity matching: M = a b^T / D (B, L, L); mean of (M_s-M_t)^2 over valid (i,j).

    Each side is normalised by its own hidden size, so teacher and student D may differ
    (the L x L matrices are always comparable).
    """
    s_a, s_b, t_a, t_b, valid = _pair_inputs(feat_s, feat_t, mask, "mmd/nst")
    v = _expand(valid, -1)
    m_s = _token_similarity(*_zero_pair(s_a, s_b, v), "student")
    m_t = _token_similarity(*_zero_pair(t_a, t_b, v), "teacher")
    if valid is None:
        return F.mse_loss(m_s, m_t)
    return _masked_mean((m_s - m_t).pow(2), _pair_valid(valid).squeeze(1))


# --------------------------------------------------------------------------- several teachers


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


# --------------------------------------------------------------------------- teacher fix-up


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
