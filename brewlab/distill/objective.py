"""The objective: the composed `loss` config parsed, once, into the terms a distiller adds up
(hard-label weight, logit KD terms, intermediate matches with their layer pairs and
projections), checked against the two models' depths and sizes. The parsed `Objective` prints
itself as the formula it computes, so a run's log says what was optimised."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from brewlab.config.schema import LossTermOptions, with_defaults
from brewlab.core.errors import BrewlabError
from brewlab.distill.losses import LOGIT_LOSSES, MATCH_LOSSES

PROJECTIONS = {"linear": None, "relu": nn.ReLU, "tanh": nn.Tanh}
FEATURES = ("hidden", "attention")

Layer = int | tuple[int, int]


# ----------------------------------------------------------------------------- loss terms


@dataclass
class LogitTerm:
    name: str
    fn: Callable[..., torch.Tensor]
    weight: float
    t2_scaling: bool
    fn_name: str = ""


@dataclass
class MatchTerm:
    name: str
    fn_name: str
    feature: str
    pairs: list[tuple[Layer, Layer]]  # (teacher layer(s), student layer(s))
    weight: float
    proj: str | None


@dataclass
class Objective:
    """The parsed `loss` config: what the total loss is made of."""

    logit_terms: list[LogitTerm]
    hard_weight: float
    matches: list[MatchTerm]

    @property
    def needs_hidden(self) -> bool:
        return any(m.feature == "hidden" for m in self.matches)

    @property
    def needs_attention(self) -> bool:
        return any(m.feature == "attention" for m in self.matches)

    def __str__(self) -> str:
        """The loss as the formula the distiller computes (before the KD weight schedule)."""
        terms = [f"{self.hard_weight:g}*hard"] if self.hard_weight else []
        for t in self.logit_terms:
            terms.append(f"{t.weight:g}*{t.name}({t.fn_name}{', T^2-scaled' if t.t2_scaling else ''})")
        for m in self.matches:
            pairs = " ".join(f"{t}>{s}" for t, s in m.pairs)
            via = f", {m.proj} projection" if m.proj else ""
            terms.append(f"{m.weight:g}*{m.name}({m.fn_name} on {m.feature}, teacher>student layers {pairs}{via})")
        return " + ".join(terms) or "0"


def uniform_pairs(t_depth: int, s_depth: int, feature: str) -> list[tuple[int, int]]:
    """Evenly spaced layer mapping (the paper's T3 recipe: teacher 0,4,8,12 -> student 0..3).

    Hidden states include the embeddings (index 0..depth); attention maps are per layer
    (0..depth-1), so the last layers are aligned.
    """
    if feature == "hidden":
        if s_depth <= t_depth:
            return [(round(j * t_depth / s_depth), j) for j in range(s_depth + 1)]
        return [(i, round(i * s_depth / t_depth)) for i in range(t_depth + 1)]
    if s_depth <= t_depth:
        return [(round((j + 1) * t_depth / s_depth) - 1, j) for j in range(s_depth)]
    return [(i, round((i + 1) * s_depth / t_depth) - 1) for i in range(t_depth)]


def layers_of(entry: Layer) -> tuple[int, ...]:
    return entry if isinstance(entry, tuple) else (entry,)


def parse_objective(loss_cfg: Mapping[str, Any], teacher: Any | None, student: Any) -> Objective:
    """Turn the composed `loss` config into terms, checking every key against the two models.

    `teacher`/`student` are adaptors (for depths and sizes); teacher is None for `trainer`.
    """
    logit_terms: list[LogitTerm] = []
    hard_weight = 0.0
    matches: list[MatchTerm] = []
    for name, term in loss_cfg.items():
        key = f"loss.{name}"
        term = with_defaults(term, LossTermOptions)
        kind = term.get("kind")  # hard, logits or match: no default, a term must say
        weight = term["weight"]
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0 or math.isnan(weight):
            raise BrewlabError(f"{key}.weight={weight!r} must be a number >= 0")
        if kind == "hard":
            hard_weight += float(weight)
        elif kind == "logits":
            fn_name = term["fn"] or "ce"
            fn = LOGIT_LOSSES.get(fn_name, f"{key}.fn")
            logit_terms.append(LogitTerm(name, fn, float(weight), bool(term["t2_scaling"]), fn_name))
        elif kind == "match":
            if teacher is None:
                continue
            matches.append(_parse_match(name, term, float(weight), teacher, student))
        else:
            raise BrewlabError(f"{key}.kind={kind!r} is not valid; choose one of: hard, logits, match")
    return Objective(logit_terms, hard_weight, matches)


def _parse_match(name: str, term: Mapping[str, Any], weight: float, teacher: Any, student: Any) -> MatchTerm:
    key = f"loss.{name}"
    fn_name = term.get("fn")
    props = MATCH_LOSSES.props(fn_name, f"{key}.fn")
    feature = term.get("feature", props.feature)
    if feature not in FEATURES:
        raise BrewlabError(f"{key}.feature={feature!r} is not valid; choose one of: {', '.join(FEATURES)}")
    if feature != props.feature:
        raise BrewlabError(f"{key}.fn={fn_name!r} works on {props.feature} features: set {key}.feature={props.feature}")
    if feature == "attention" and min(teacher.num_heads, student.num_heads) == 0:
        side = "student" if student.num_heads == 0 else "teacher"
        raise BrewlabError(f"{key}.feature=attention: the {side} has no attention maps (a BiGRU); match hidden states")
    layers = term["layers"]
    if layers == "uniform":
        base = uniform_pairs(teacher.num_layers, student.num_layers, feature)
        if props.layers == "consecutive":
            pairs: list[tuple[Layer, Layer]] = [
                ((t0, t1), (s0, s1)) for (t0, s0), (t1, s1) in zip(base, base[1:], strict=False)
            ]
        elif props.layers == "within":
            pairs = [((t, t), (s, s)) for t, s in base]
        else:
            pairs = list(base)
    else:
        pairs = [_explicit_pair(key, entry, props.paired) for entry in layers]
    top = {"hidden": 0, "attention": 1}[feature]
    for t_layer, s_layer in pairs:
        for side, adaptor, entry in (("teacher", teacher, t_layer), ("student", student, s_layer)):
            limit = adaptor.num_layers - top
            for layer in layers_of(entry):
                if not 0 <= layer <= limit:
                    raise BrewlabError(
                        f"{key}.layers: {side} layer {layer} is beyond the {side}'s depth ({feature} layers 0..{limit})"
                    )
    proj = term["proj"]
    if proj is not None and proj not in PROJECTIONS:
        raise BrewlabError(f"{key}.proj={proj!r} is not valid; choose one of: {', '.join(PROJECTIONS)}, null")
    needs_proj = props.same_size and teacher.hidden_size != student.hidden_size
    if needs_proj and proj is None:
        raise BrewlabError(
            f"{key}.proj=null but {fn_name} needs equal sizes (teacher {teacher.hidden_size}, "
            f"student {student.hidden_size}); set {key}.proj=linear"
        )
    if props.same_heads and teacher.num_heads != student.num_heads:
        raise BrewlabError(
            f"{key}.fn={fn_name} needs equal head counts (teacher {teacher.num_heads}, student "
            f"{student.num_heads}); use a head-averaged attention loss ({', '.join(_head_free())})"
        )
    return MatchTerm(name, fn_name, feature, pairs, weight, proj if needs_proj else None)


def _head_free() -> list[str]:
    return [n for n in MATCH_LOSSES if MATCH_LOSSES.props(n).feature == "attention" and not MATCH_LOSSES.props(n).same_heads]


def _explicit_pair(key: str, entry: Any, paired: bool) -> tuple[Layer, Layer]:
    try:
        t, s = entry["teacher"], entry["student"]
    except (KeyError, TypeError):
        raise BrewlabError(f"{key}.layers entries must be {{teacher: ..., student: ...}}; got {entry!r}") from None

    def norm(value: Any) -> Layer:
        if paired:
            pair = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value, value)
            if len(pair) != 2:
                raise BrewlabError(f"{key}.layers: {entry!r} needs two layers per side")
            return (int(pair[0]), int(pair[1]))
        if isinstance(value, Sequence) and not isinstance(value, str):
            raise BrewlabError(f"{key}.layers: {entry!r} needs one layer per side")
        return int(value)

    return norm(t), norm(s)


def build_projections(matches: Sequence[MatchTerm], teacher: Any, student: Any) -> nn.ModuleDict:
    """One projection (student dim -> teacher dim) per matched student layer that needs it."""
    modules = nn.ModuleDict()
    for term in matches:
        if term.proj is None:
            continue
        for _, s_layer in term.pairs:
            for layer in layers_of(s_layer):
                key = f"{term.name}_{layer}"
                if key not in modules:
                    act = PROJECTIONS[term.proj]
                    linear = nn.Linear(student.hidden_size, teacher.hidden_size)
                    modules[key] = nn.Sequential(linear, act()) if act else linear
    return modules


# ----------------------------------------------------------------------------- teacher cache


