"""Data augmentation for distillation: new training text that the teacher labels.

Augmented copies need no gold label: the pipeline strips their labels, so the distiller trains
them with the KD and intermediate losses only. Operations are registered by kind and built from
`augmentation.ops.<name>`: `char` and `word` wrap nlpaug's random augmenters, `mlm` puts a
masked LM's predictions in place of a fraction of the tokens (TinyBERT's recipe). With several
operations, each augmented text gets one of them, chosen at random (EDA's way of combining).

Which texts of an example may change is the task kind's business (`augment_texts` /
`with_texts`): an MRC answer stays intact, NER words are re-split. nlpaug draws from the global
`random` and NumPy states, so `augment_rows` seeds them and puts them back afterwards.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brewlab.config.schema import MaskedLMOptions, options
from brewlab.core.errors import BrewlabError, bad_choice
from brewlab.core.registry import Registry

log = logging.getLogger("brewlab")


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


def is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def detect_language(texts: Sequence[str]) -> str:
    """'zh' when CJK characters make up at least a third of the letters of a sample, else 'en'."""
    sample = "".join(texts[:500])
    letters = [ch for ch in sample if ch.isalpha()]
    cjk = sum(is_cjk(ch) for ch in letters)
    return "zh" if letters and cjk / len(letters) >= 1 / 3 else "en"


@dataclass
class Vocabulary:
    """What substitutions draw from: the task's own characters and words (training split only)."""

    language: str
    chars: list[str]
    words: list[str]


@functools.cache
def _jieba() -> Any:
    """jieba, imported and quieted once (it is called per text)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def split_words(text: str, language: str) -> list[str]:
    return _jieba().lcut(text, HMM=False) if language == "zh" else text.split()


def join_words(words: Sequence[str], language: str) -> str:
    return "".join(words) if language == "zh" else " ".join(words)


def vocabulary(texts: Sequence[str], language: str, max_words: int = 20000) -> Vocabulary:
    """Characters and words of the training texts; for Chinese only CJK ones, so substitutions
    never put Latin letters or spaces into Chinese text."""
    keep = is_cjk if language == "zh" else str.isalpha
    chars = sorted({ch for text in texts for ch in text if keep(ch)})
    counts = Counter(w for text in texts for w in split_words(text, language) if all(keep(ch) for ch in w))
    words = sorted(w for w, n in counts.most_common(max_words) if n >= 2) or sorted(counts)
    return Vocabulary(language, chars, words)


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
class MaskedLMReplace:
    """TinyBERT-style replacement: a fraction `rate` of the whole-word tokens is masked and each
    gets one of the masked LM's `top_k` predictions (sampled by probability, never the original
    token, never a special or sub-word piece, and CJK only in place of CJK). The text is edited
    by character offsets, so everything else (spaces, punctuation, case) stays as it was."""

    def __init__(
        self, name: str, op: Mapping[str, Any], rate: float, vocab: Vocabulary, model_path: str | None = None, **_: Any
    ) -> None:
        import torch
        from transformers import AutoModelForMaskedLM
        from transformers.utils import logging as hf_logging

        from brewlab.models.build import check_model_dir, load_tokenizer

        key = f"augmentation.ops.{name}.model_name_or_path"
        if not model_path:
            raise BrewlabError(f"{key} is not set: name a masked LM (hub id or local directory)")
        check_model_dir(model_path, key)
        self.tokenizer = load_tokenizer(model_path, key)
        if not getattr(self.tokenizer, "is_fast", False) or self.tokenizer.mask_token_id is None:
            raise BrewlabError(f"{key}={model_path!r} needs a fast tokenizer with a [MASK] token")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(model_path, output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise BrewlabError(f"{key}={model_path!r} could not be loaded: {str(exc).splitlines()[0]}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        if info.get("missing_keys"):  # e.g. a fine-tuned classifier: its LM head would be random
            missing = sorted(info["missing_keys"])
            raise BrewlabError(
                f"{key}={model_path!r} is not a masked LM: {len(missing)} weights are missing ({', '.join(missing[:3])}, ...)"
            )
        self.model = model.eval()
        self.rate = rate
        settings = options(op, MaskedLMOptions)
        self.top_k = int(settings["top_k"])
        self.batch_size = int(settings["batch_size"])
        self.max_length = min(int(settings["max_length"]), int(self.model.config.max_position_embeddings))
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        special = set(self.tokenizer.all_special_ids)
        self.pieces = pieces
        size = int(self.model.config.vocab_size)
        self.cjk = torch.zeros(size, dtype=torch.bool)
        self.word = torch.zeros(size, dtype=torch.bool)
        for i, piece in enumerate(pieces[:size]):
            if i in special or not piece:
                continue
            if len(piece) == 1 and is_cjk(piece):
                self.cjk[i] = True
            elif piece.isalpha() and not piece.startswith("##") and not any(is_cjk(ch) for ch in piece):
                self.word[i] = True

    def _eligible(self, token: int, text: str, start: int, end: int) -> str | None:
        """'cjk' or 'word' when the token is a whole CJK character or a whole alphabetic word
        of the text (judged by its characters, not by the tokenizer's piece markers), else None."""
        if token < len(self.cjk) and self.cjk[token]:
            return "cjk"
        span = text[start:end]
        whole = (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum())
        if whole and span.isalpha() and not any(is_cjk(ch) for ch in span):
            return "word"
        return None

    def __call__(self, texts: list[str]) -> list[str]:
        import torch

        out = list(texts)
        generator = torch.Generator().manual_seed(random.randrange(2**31))
        for begin in range(0, len(texts), self.batch_size):
            chunk = texts[begin : begin + self.batch_size]
            enc = self.tokenizer(
                chunk,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
                return_tensors="pt",
            )
            offsets = enc.pop("offset_mapping")
            special = enc.pop("special_tokens_mask")
            input_ids = enc["input_ids"].clone()
            chosen: list[list[tuple[int, str]]] = []
            for b in range(len(chunk)):
                ids = enc["input_ids"][b].tolist()
                slots = []
                for k in range(len(ids)):
                    if special[b, k] or not enc["attention_mask"][b, k]:
                        continue
                    start, end = offsets[b, k].tolist()
                    script = self._eligible(ids[k], chunk[b], start, end)
                    if script is not None:
                        slots.append((k, script))
                count = min(len(slots), max(1, round(self.rate * len(slots)))) if slots else 0
                order = torch.randperm(len(slots), generator=generator)[:count].tolist()
                picked = sorted(slots[j] for j in order)
                for k, _ in picked:
                    input_ids[b, k] = self.tokenizer.mask_token_id
                chosen.append(picked)
            with torch.inference_mode():
                logits = self.model(**{**enc, "input_ids": input_ids}).logits
            for b, picked in enumerate(chosen):
                text = chunk[b]
                edits = []
                for k, script in picked:
                    scores = logits[b, k, : len(self.cjk)].float().clone()
                    allowed = (self.cjk if script == "cjk" else self.word).clone()
                    allowed[int(enc["input_ids"][b, k])] = False
                    scores[~allowed] = -math.inf
                    top = scores.topk(min(self.top_k, int(allowed.sum())))
                    if top.values.numel() == 0 or not torch.isfinite(top.values[0]):
                        continue
                    pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator).item()
                    start, end = offsets[b, k].tolist()
                    edits.append((start, end, self.pieces[int(top.indices[pick])]))
                for start, end, piece in sorted(edits, reverse=True):
                    text = text[:start] + piece + text[end:]
                out[begin + b] = text
        return out


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
