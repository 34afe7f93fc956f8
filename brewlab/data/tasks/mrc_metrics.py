"""The official answer metrics of span-extraction MRC: CMRC 2018 for Chinese, SQuAD v1.1 for English.

Figures are only comparable with published ones when they are computed by the same rules, so
both follow their official evaluation scripts (read for their rules, written anew here).

**CMRC 2018** (Cui et al., 2019). Text is lower-cased and stripped, then cut by *mixed
segmentation*: every CJK ideograph (U+4E00..U+9FA5) and every character of the script's
punctuation list is a token of its own, while each run of other characters (Latin letters,
digits, spaces, ASCII punctuation) is split into words by NLTK's Treebank word tokenizer, so
"Windows" and "1998" are one token each. For F1 the punctuation-list characters are dropped
first (without ending the run they sit in, as in the script), the overlap is the length of the
longest common *contiguous* run of tokens, and F1 = 2PR / (P + R) with P and R that overlap over
the prediction's and the gold answer's token counts (0 when nothing overlaps). EM compares the
lower-cased, stripped strings with the punctuation-list characters removed (inner spaces stay).
One known difference: the script splits a Latin run into sentences with NLTK's Punkt model
before tokenising, which needs a downloaded model; here each run is tokenised as one line
(`preserve_line=True`), which differs only where a period ends a sentence inside one Latin run.

**SQuAD v1.1** (Rajpurkar et al., 2016). Lower case, ASCII punctuation removed, the articles
a/an/the removed, whitespace collapsed; EM compares the normalised strings, F1 is the bag-of-words
overlap. Two answers that normalise to nothing have EM 1 and F1 0, as in the official script.

Both take the maximum over a question's gold answers; scores are in 0..1.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

# The CMRC 2018 script's punctuation list. Its "……" entry is two characters long and is compared
# with single characters, so it never matches: "…" is not removed, here as there.
CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fa5"


@cache
def _word_tokenizer() -> Any:
    """NLTK's Treebank word tokenizer; imported on first use (only Chinese MRC scoring needs it)."""
    from nltk.tokenize import word_tokenize

    return word_tokenize


def mixed_segmentation(text: str, drop_punctuation: bool = False) -> list[str]:
    """CMRC 2018 tokens of `text`: one per CJK character or listed punctuation mark, words elsewhere."""
    tokens: list[str] = []
    run = ""

    def flush() -> None:
        nonlocal run
        if run:
            tokens.extend(_word_tokenizer()(run, preserve_line=True))
            run = ""

    for ch in str(text).lower().strip():
        if ch in CMRC_PUNCTUATION and drop_punctuation:
            continue
        if _is_cjk(ch) or ch in CMRC_PUNCTUATION:
            flush()
            tokens.append(ch)
        else:
            run += ch
    flush()
    return tokens


def cmrc_strip(text: str) -> str:
    """The string CMRC 2018's EM compares: lower-cased, stripped, listed punctuation removed."""
    return "".join(ch for ch in str(text).lower().strip() if ch not in CMRC_PUNCTUATION)


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous run of items shared by `a` and `b`."""
    best, previous = 0, [0] * (len(b) + 1)
    for item in a:
        current = [0] * (len(b) + 1)
        for j, other in enumerate(b, start=1):
            if item == other:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def _f1(overlap: int, predicted: int, gold: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / gold
    return 2 * precision * recall / (precision + recall)


def score_zh(prediction: str, gold: str) -> tuple[float, float]:
    """(EM, F1) of one prediction against one gold answer by the CMRC 2018 rules."""
    em = float(cmrc_strip(prediction) == cmrc_strip(gold))
    p, g = mixed_segmentation(prediction, True), mixed_segmentation(gold, True)
    return em, _f1(longest_common_run(p, g), len(p), len(g))


def normalise_en(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no ASCII punctuation, no articles, single spaces."""
    text = "".join(ch for ch in str(text).lower() if ch not in _ASCII_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def score_en(prediction: str, gold: str) -> tuple[float, float]:
    """(EM, F1) of one prediction against one gold answer by the SQuAD v1.1 rules."""
    p, g = normalise_en(prediction), normalise_en(gold)
    overlap = sum((Counter(p.split()) & Counter(g.split())).values())
    return float(p == g), _f1(overlap, len(p.split()), len(g.split()))


def answer_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]], language: str) -> dict[str, float]:
    """Mean EM and F1 (each the max over a question's gold answers), empty predictions, count."""
    pair = score_zh if language == "zh" else score_en
    em = f1 = 0.0
    for prediction, answers in zip(predictions, golds, strict=True):
        scores = [pair(prediction, gold) for gold in (answers or [""])]
        em += max(s[0] for s in scores)
        f1 += max(s[1] for s in scores)
    n = max(len(predictions), 1)
    return {
        "em": em / n,
        "f1": f1 / n,
        "unanswered": float(sum(1 for p in predictions if not p.strip())),
        "questions": float(len(predictions)),
    }
