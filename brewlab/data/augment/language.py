"""The text's language and vocabulary, for the augmenters: which language a task's text is in,
how it splits into words, and the characters and words that substitutions draw from."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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
