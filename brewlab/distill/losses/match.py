"""Feature matching: student against teacher hidden states, attention maps or pairs of layers
(`loss.<term>.fn`), each loss registered with the `MatchProps` that say what it reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry
from brewlab.distill.losses.masking import (
    Valid,
    check_ndim,
    check_same_shape,
    masked_mean,
    unsqueeze_valid,
    validity,
    zero_invalid,
)

Feature = Tensor | Sequence[Tensor]
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


MATCH_LOSSES: Registry[MatchLoss] = Registry("loss.<term>.fn", default_props=MatchProps())

ATTENTION = MatchProps(feature="attention")
ATTENTION_PER_HEAD = MatchProps(feature="attention", same_heads=True)
FLOW = MatchProps(layers="consecutive", same_size=True)
WITHIN = MatchProps(layers="within")


def _pair(feat: Feature, what: str, side: str) -> tuple[Tensor, Tensor]:
    """Unpack a (layer a, layer b) pair of (B, L, D) tensors."""
    if isinstance(feat, Tensor) or len(feat) != 2:
        raise BrewlabError(f"{what}: the {side} feature must be a pair (a, b) of (B, L, D) tensors")
    a, b = feat
    check_ndim(a, 3, "(B, L, D)", f"{what} ({side} a)")
    check_ndim(b, 3, "(B, L, D)", f"{what} ({side} b)")
    if a.shape[:2] != b.shape[:2]:
        raise BrewlabError(f"{what}: {side} layers have different (B, L): {tuple(a.shape[:2])} vs {tuple(b.shape[:2])}")
    return a, b


# -------------------------------------------------------------- hidden states


def _hidden_pair(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None, what: str) -> tuple[Tensor, Tensor, Valid]:
    """Validate equal-shape (B, L, D) features; returns student, detached teacher, validity."""
    check_ndim(feat_s, 3, "(B, L, D)", what)
    check_same_shape(feat_s, feat_t, what, "; hidden sizes must match (add a projection for the student)")
    valid = validity(mask, feat_s.shape[:2], feat_s.device, what)
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
    squares = zero_invalid(s - t, valid.unsqueeze(-1)).pow(2).sum()
    return squares / (valid.sum().clamp(min=1) * s.shape[-1]).to(s.dtype)


@MATCH_LOSSES.register("cos", MatchProps(same_size=True, per_token=True))
def cos(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over valid tokens of 1 - cos(s_i, t_i), for (B, L, D) inputs.

    Matches the direction of hidden states and ignores their norm (DistilBERT's cosine loss).
    """
    s, t, valid = _hidden_pair(feat_s, feat_t, mask, "cos")
    v = unsqueeze_valid(valid, -1)
    sim = F.cosine_similarity(zero_invalid(s, v), zero_invalid(t, v), dim=-1, eps=1e-8)
    return masked_mean(1.0 - sim, valid)


@MATCH_LOSSES.register("pkd", MatchProps(same_size=True))
def pkd(feat_s: Tensor, feat_t: Tensor, mask: Tensor | None = None) -> Tensor:
    """Patient-KD: mean over batch of sum_d (s0/||s0|| - t0/||t0||)_d^2 at position 0 ([CLS]).

    Normalising removes the scale difference between teacher and student layers. Only
    position 0 is used, so `mask` is ignored.
    """
    del mask
    check_ndim(feat_s, 3, "(B, L, D)", "pkd")
    check_ndim(feat_t, 3, "(B, L, D)", "pkd")
    if feat_s.shape[0] != feat_t.shape[0] or feat_s.shape[2] != feat_t.shape[2]:
        raise BrewlabError(
            f"pkd: student (B, L, D)={tuple(feat_s.shape)} and teacher {tuple(feat_t.shape)} "
            "need equal B and D (add a projection for the student)"
        )
    s = F.normalize(feat_s[:, 0], p=2, dim=-1, eps=1e-12)
    t = F.normalize(feat_t.detach()[:, 0], p=2, dim=-1, eps=1e-12)
    return (s - t).pow(2).sum(-1).mean()


# ------------------------------------------------------------- attention maps


def _attention_inputs(
    feat_s: Tensor, feat_t: Tensor, mask: Tensor | None, what: str, same_heads: bool, hint: str
) -> tuple[Tensor, Tensor, Valid]:
    """Validate (B, H, L, L) maps; returns student, detached teacher, (B, L) validity."""
    check_ndim(feat_s, 4, "(B, H, L, L)", what)
    check_ndim(feat_t, 4, "(B, H, L, L)", what)
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
    valid = validity(mask, torch.Size((b, lq)), feat_s.device, what)
    return feat_s, feat_t.detach(), valid


def _pair_valid(valid: Valid) -> Valid:
    """(B, L) token validity -> (B, 1, L, L) validity of (query i, key j) pairs."""
    return None if valid is None else (valid.unsqueeze(-1) & valid.unsqueeze(-2)).unsqueeze(1)


def _masked_pair_mse(s: Tensor, t: Tensor, valid: Valid) -> Tensor:
    """Mean squared difference over valid (i, j) pairs and heads of (B, H, L, L) maps."""
    pv = _pair_valid(valid)
    return masked_mean((zero_invalid(s, pv) - zero_invalid(t, pv)).pow(2), pv)


def _masked_attention_ce(s: Tensor, t: Tensor, valid: Valid) -> Tensor:
    """Per head and valid row: -sum_{valid j} p_t log max(p_s, 1e-12); mean over rows, heads."""
    pv = _pair_valid(valid)
    log_s = torch.log(zero_invalid(s, pv).clamp(min=1e-12))
    rows = -(zero_invalid(t, pv) * log_s).sum(-1)  # (B, H, L)
    return masked_mean(rows, unsqueeze_valid(valid, 1))


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


# ---------------------------------------------------------------- layer pairs


def _pair_inputs(
    feat_s: Feature, feat_t: Feature, mask: Tensor | None, what: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Valid]:
    """Unpack student/teacher pairs; returns s_a, s_b, t_a, t_b (teacher detached), validity."""
    s_a, s_b = _pair(feat_s, what, "student")
    t_a, t_b = _pair(feat_t, what, "teacher")
    if s_a.shape[:2] != t_a.shape[:2]:
        raise BrewlabError(f"{what}: student (B, L)={tuple(s_a.shape[:2])} != teacher (B, L)={tuple(t_a.shape[:2])}")
    valid = validity(mask, s_a.shape[:2], s_a.device, what)
    return s_a, s_b, t_a.detach(), t_b.detach(), valid


def _gram(a: Tensor, b: Tensor, valid: Valid) -> Tensor:
    """a^T b / n_valid over valid tokens: (B, L, Da), (B, L, Db) -> (B, Da, Db)."""
    if valid is None:
        return a.transpose(1, 2) @ b / a.shape[1]
    v = valid.unsqueeze(-1)
    n = valid.sum(-1).clamp(min=1).to(a.dtype).view(-1, 1, 1)
    return zero_invalid(a, v).transpose(1, 2) @ zero_invalid(b, v) / n


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
    za = zero_invalid(a, valid)
    return za, za if b is a else zero_invalid(b, valid)


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
    v = unsqueeze_valid(valid, -1)
    m_s = _token_similarity(*_zero_pair(s_a, s_b, v), "student")
    m_t = _token_similarity(*_zero_pair(t_a, t_b, v), "teacher")
    if valid is None:
        return F.mse_loss(m_s, m_t)
    return masked_mean((m_s - m_t).pow(2), _pair_valid(valid).squeeze(1))
