"""Character vocabularies saved as real BERT fast tokenizers.

Offline there is no pretrained Chinese tokenizer, so scratch models read characters. Saving the
vocabulary as a Hugging Face tokenizer means every model directory brewlab writes is usable with
`AutoTokenizer.from_pretrained`, exactly like a hub checkpoint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _pieces(text: str) -> Iterable[str]:
    """Every character, plus its '##' continuation form for non-CJK characters.

    BERT's basic tokenizer isolates CJK characters but keeps Latin words and numbers whole; the
    continuation pieces let WordPiece spell such words out character by character instead of
    mapping them to [UNK].
    """
    for ch in text.lower():
        if ch.isspace():
            continue
        yield ch
        if not ("\u4e00" <= ch <= "\u9fff"):
            yield "##" + ch


def build_char_tokenizer(texts: Iterable[str], min_freq: int = 1, max_size: int | None = None):
    """A BertTokenizer (fast) whose vocabulary is the characters of `texts`."""
    from transformers import BertTokenizer

    counts = Counter(p for text in texts for p in _pieces(text))
    ranked = sorted((p for p, c in counts.items() if c >= min_freq), key=lambda p: (-counts[p], p))
    if max_size is not None:
        ranked = ranked[: max(0, max_size - len(SPECIAL_TOKENS))]
    vocab = SPECIAL_TOKENS + sorted(ranked)
    return BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
