"""Augmentation operations: registered by kind, checked and built from `augmentation.ops.<name>`,
and applied to a task's rows. `char` and `word` wrap nlpaug's random augmenters, `mlm` puts a
masked LM's predictions in place of a fraction of the tokens (`brewlab.data.augment.masked_lm`).
With several operations, each augmented text gets one of them, chosen at random (EDA's way of
combining).

Which texts of an example may change is the task kind's business (`augment_texts` /
`with_texts`): an MRC answer stays intact, NER words are re-split. nlpaug draws from the global
`random` and NumPy states, so `augment_rows` seeds them and puts them back afterwards.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brewlab.core.errors import BrewlabError, bad_choice
from brewlab.core.registry import Registry
from brewlab.data.augment.language import Vocabulary, join_words, split_words
from brewlab.data.augment.masked_lm import MaskedLMReplace


@dataclass(frozen=True)
class OpNeeds:
    """What an operation needs besides its text, asked by config validation and the pipeline."""

    masked_lm: bool = False  # a masked LM (`model_name_or_path`, else one pretrained offline on `masked_lm`)
    packages: tuple[str, ...] = ()  # modules that must be importable
    actions: Mapping[str, tuple[str, ...]] | None = None  # language -> the `actions` it can take; None: takes none


AUGMENTERS: Registry = Registry("augmentation.ops.<name>.kind", OpNeeds())
MODES = ("offline", "online")
CHAR_ACTIONS = {
    "zh": ("swap", "delete", "insert", "substitute"),
    "en": ("swap", "delete", "insert", "substitute", "keyboard", "ocr"),
}
WORD_ACTIONS = ("swap", "delete", "crop", "substitute")
VERSION = 2  # bump when augmented output changes for the same config (part of the offline cache key)

TextFn = Callable[[list[str]], list[str]]  # texts -> augmented texts, drawing from the seeded global RNGs


# ----------------------------------------------------------------------------- config


def ops_of(aug_cfg: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return dict(aug_cfg.get("ops") or {})


def check_config(aug_cfg: Mapping[str, Any]) -> None:
    """Startup check of the `augmentation` group (language-dependent action checks wait for the data)."""
    if aug_cfg.get("mode") not in MODES:
        raise bad_choice("augmentation.mode", aug_cfg.get("mode"), MODES)
    rate = aug_cfg.get("rate")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate <= 1:
        raise BrewlabError(f"augmentation.rate={rate!r} must be a fraction in (0, 1]")
    copies = aug_cfg.get("copies")
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise BrewlabError(f"augmentation.copies={copies!r} must be an integer >= 1")
    for name, op in ops_of(aug_cfg).items():
        AUGMENTERS.get(op.get("kind"), f"augmentation.ops.{name}.kind")
        actions, by_language = op.get("actions"), AUGMENTERS.props(op["kind"]).actions
        if by_language is not None:  # any language's, until the data's language is known
            allowed = tuple(dict.fromkeys(a for language_actions in by_language.values() for a in language_actions))
            if not actions:
                raise BrewlabError(f"augmentation.ops.{name}.actions is empty; choose from: {', '.join(allowed)}")
            for action in actions:
                if action not in allowed:
                    raise bad_choice(f"augmentation.ops.{name}.actions", action, allowed)


def check_language(aug_cfg: Mapping[str, Any], language: str) -> None:
    """Actions that do not exist for the text's language, refused before any model is loaded."""
    for name, op in ops_of(aug_cfg).items():
        by_language = AUGMENTERS.props(op["kind"]).actions
        if by_language is not None:
            allowed = by_language[language]
            for action in op["actions"]:
                if action not in allowed:
                    raise BrewlabError(
                        f"augmentation.ops.{name}.actions: {action!r} is not available for {language} text; "
                        f"choose from: {', '.join(allowed)}"
                    )


# ----------------------------------------------------------------------------- operations


def _first(result: Any, fallback: str) -> str:
    """nlpaug returns a list of one text; an operation that emptied the text keeps the original."""
    text = result[0] if isinstance(result, list) else result
    return text if isinstance(text, str) and text.strip() else fallback


def _nlpaug_fn(augmenters: Sequence[Callable[[str], Any]]) -> TextFn:
    """Each text gets one of the augmenters, chosen at random. nlpaug strips the ends of a
    text; they are put back, so pieces that are joined again (an MRC passage around its
    answer) keep their spaces."""

    def one(text: str) -> str:
        core = text.strip()
        if not core:
            return text
        head, tail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
        return head + _first(random.choice(augmenters)(core), core) + tail

    def apply(texts: list[str]) -> list[str]:
        return [one(t) for t in texts]

    return apply


@AUGMENTERS.register("char", OpNeeds(packages=("nlpaug",), actions=CHAR_ACTIONS))
def char_op(name: str, op: Mapping[str, Any], rate: float, vocab: Vocabulary, **_: Any) -> TextFn:
    """Character noise. Chinese: each character is a token; swap/delete move or drop a fraction
    `rate` of them and insert/substitute draw from the task's own CJK characters. English:
    nlpaug's random, keyboard and OCR noise on a fraction `rate` of the words."""
    check_language({"ops": {name: op}}, vocab.language)
    actions = list(op["actions"])
    import nlpaug.augmenter.char as nac
    import nlpaug.augmenter.word as naw

    augmenters = []
    for action in actions:
        if vocab.language == "zh":
            chars = {"tokenizer": list, "reverse_tokenizer": "".join}
            if action in ("swap", "delete"):
                augmenters.append(
                    naw.RandomWordAug(action=action, aug_p=rate, aug_min=1, aug_max=None, **chars).augment
                )
            else:
                augmenters.append(
                    nac.RandomCharAug(
                        action=action,
                        aug_word_p=rate,
                        aug_word_min=1,
                        aug_word_max=None,
                        aug_char_p=1.0,
                        aug_char_min=1,
                        aug_char_max=1,
                        min_char=1,
                        candidates=vocab.chars,
                        **chars,
                    ).augment
                )
            continue
        words = {  # whitespace words, so words that are not picked stay exactly as they were
            "aug_word_p": rate,
            "aug_word_min": 1,
            "aug_word_max": None,
            "aug_char_min": 1,
            "aug_char_max": 2,
            "tokenizer": str.split,
            "reverse_tokenizer": " ".join,
        }
        if action == "keyboard":
            augmenters.append(nac.KeyboardAug(aug_char_p=0.2, min_char=2, **words).augment)
        elif action == "ocr":
            augmenters.append(nac.OcrAug(aug_char_p=0.2, min_char=2, **words).augment)
        else:
            augmenters.append(
                nac.RandomCharAug(
                    action=action,
                    aug_char_p=0.2,
                    min_char=2,
                    include_numeric=False,
                    include_upper_case=False,
                    spec_char="",
                    **words,
                ).augment
            )
    return _nlpaug_fn(augmenters)


@AUGMENTERS.register("word", OpNeeds(packages=("nlpaug",), actions=dict.fromkeys(CHAR_ACTIONS, WORD_ACTIONS)))
def word_op(name: str, op: Mapping[str, Any], rate: float, vocab: Vocabulary, **_: Any) -> TextFn:
    """Word swap/delete/crop/substitute on a fraction `rate` of the words (jieba words joined
    without spaces for Chinese, whitespace words for English); substitutes are the task's words."""
    import nlpaug.augmenter.word as naw

    language = vocab.language

    def make(action: str) -> Callable[[str], Any]:
        aug = naw.RandomWordAug(
            action=action,
            aug_p=rate,
            aug_min=2 if action == "crop" else 1,
            aug_max=None,
            tokenizer=lambda text: split_words(text, language),
            reverse_tokenizer=lambda words: join_words(words, language),
            target_words=vocab.words if action == "substitute" else None,
        )
        if action != "crop":
            return aug.augment
        # nlpaug's crop cannot cut fewer than two words (its range sampling comes up empty), so
        # texts too short for a two-word crop at this rate are left whole
        shortest = max(3, math.ceil(2 / rate))
        return lambda text: aug.augment(text) if len(split_words(text, language)) >= shortest else text

    augmenters = [make(action) for action in op["actions"]]
    return _nlpaug_fn(augmenters)


@AUGMENTERS.register("mlm", OpNeeds(masked_lm=True))
def mlm_op(
    name: str, op: Mapping[str, Any], rate: float, vocab: Vocabulary, model_path: str | None = None, **_: Any
) -> TextFn:
    """TinyBERT-style replacement by a masked LM's predictions (`brewlab.data.augment.masked_lm`),
    imported only when a config asks for it (it loads torch and transformers)."""
    return MaskedLMReplace(name, op, rate, vocab, model_path)


def build(
    aug_cfg: Mapping[str, Any], vocab: Vocabulary, model_paths: Mapping[str, str | None] | None = None
) -> TextFn | None:
    """The augmentation function of the config (None when it has no operations). `model_paths`
    gives each `mlm` operation the masked LM it was resolved to."""
    ops = ops_of(aug_cfg)
    if not ops:
        return None
    rate = float(aug_cfg["rate"])
    fns = {
        name: AUGMENTERS.get(op["kind"], f"augmentation.ops.{name}.kind")(
            name, op, rate, vocab, model_path=(model_paths or {}).get(name)
        )
        for name, op in sorted(ops.items())
    }
    if len(fns) == 1:
        return next(iter(fns.values()))
    names = sorted(fns)

    def one_each(texts: list[str]) -> list[str]:
        """Each text gets one operation chosen at random; each operation runs once on its share."""
        picks = [random.choice(names) for _ in texts]
        out = list(texts)
        for name in names:
            where = [i for i, p in enumerate(picks) if p == name]
            if where:
                for i, text in zip(where, fns[name]([texts[i] for i in where]), strict=True):
                    out[i] = text
        return out

    return one_each


def augment_rows(rows: Sequence[Mapping], kind: Any, fn: TextFn, copies: int, seed: int) -> list[dict]:
    """`copies` augmented versions of every row (copy-major order), deterministic for a seed.
    The global RNG states nlpaug draws from are restored afterwards."""
    if kind.augment_texts is None:
        raise BrewlabError(f"task kind {type(kind).__name__} does not support augmentation")
    states = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        sources = [row for _ in range(copies) for row in rows]
        slots = [kind.augment_texts(row) for row in sources]
        flat = [text for texts in slots for text in texts]
        changed = fn(flat) if flat else []
        out, at = [], 0
        for row, texts in zip(sources, slots, strict=True):
            out.append(kind.with_texts(row, changed[at : at + len(texts)]))
            at += len(texts)
        return out
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
