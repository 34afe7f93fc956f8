"""Where raw examples are read from: local json/jsonl/csv/tsv files (and nested SQuAD-layout
JSON, flattened), the Hugging Face hub (the `hub` source) and data files that installed
packages ship. Every source returns rows in the hub's flat columns."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brewlab.core.errors import BrewlabError
from brewlab.core.hub import hub_unreachable
from brewlab.core.packaged import SCHEME, package_path
from brewlab.data.tasks.base import SOURCES, SPLITS, Example


def package_file(package: str, relative: str, distribution: str | None = None) -> Path:
    """A data file that an installed package ships (module `package`, pip name `distribution`)."""
    return package_path(f"{SCHEME}{package}/{relative}", "task.source", distribution)


def read_local(path: str, key: str) -> list[Example]:
    """Read a local json/jsonl/csv/tsv file with the `datasets` library (same columns as the hub)."""
    file = Path(path)
    if not file.is_file():
        raise BrewlabError(f"{key}={path!r}: file not found")
    suffix = file.suffix.lower()
    if suffix == ".json":
        nested = _read_squad_layout(file, key)
        if nested is not None:
            return nested
    if suffix == ".jsonl":
        _check_json_lines(file, key)
    builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}.get(suffix)
    if builder is None:
        raise BrewlabError(f"{key}={path!r}: unsupported file type; use .json, .jsonl, .csv or .tsv")
    import datasets

    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for malformed files
        raise BrewlabError(f"{key}={path!r}: cannot read it ({type(exc).__name__}: {exc})") from None
    if len(ds) == 0:
        raise BrewlabError(f"{key}={path!r}: the file holds no examples")
    return [dict(row) for row in ds]


def _check_json_lines(file: Path, key: str) -> None:
    """Name the first malformed line (`datasets` reports only that parsing failed)."""
    rows = 0
    with open(file, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rows += 1
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise BrewlabError(f"{key}={str(file)!r} line {number}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise BrewlabError(f"{key}={str(file)!r} line {number}: expected a JSON object, got {line.strip()[:60]}")
    if rows == 0:
        raise BrewlabError(f"{key}={str(file)!r}: the file holds no examples")


def _read_squad_layout(file: Path, key: str) -> list[Example] | None:
    """Rows of a nested SQuAD-layout file, the original form of SQuAD, CMRC 2018 and DRCD
    ({"data": [{"paragraphs": [...]}]}); None for any other JSON, which is left to `datasets`."""
    try:
        with open(file, encoding="utf-8") as fh:
            top = json.load(fh)
    except (ValueError, UnicodeDecodeError):  # JSON lines, or not JSON: `datasets` reports it
        return None
    articles = top.get("data") if isinstance(top, dict) else None
    if not articles or not all(isinstance(a, dict) and "paragraphs" in a for a in articles):
        return None
    return flatten_articles(articles, f"{key}={str(file)!r}")


def flatten_articles(articles: Sequence[Mapping], where: str) -> list[Example]:
    """SQuAD-layout articles ({"title", "paragraphs": [{"context", "qas": [{"id", "question",
    "answers"}]}]}) flattened to the hub's flat columns (id, title, context, question,
    answers{text, answer_start}), so one reader serves nested files and flat hub copies."""
    try:
        return [
            {
                "id": str(qa.get("id", "")),
                "title": str(article.get("title", "")),
                "context": paragraph["context"],
                "question": qa["question"],
                "answers": {
                    "text": [a["text"] for a in qa.get("answers") or []],
                    "answer_start": [int(a["answer_start"]) for a in qa.get("answers") or []],
                },
            }
            for article in articles
            for paragraph in article["paragraphs"]
            for qa in paragraph.get("qas") or []
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise BrewlabError(f"{where}: malformed SQuAD-layout data ({type(exc).__name__}: {exc})") from None


def _hub_rows(split: Any, where: str) -> list[Example]:
    """Rows of one hub split; article-per-row uploads of the nested layout (a `paragraphs`
    column, or a `data` column holding the article, as in voidful/DRCD) are flattened."""
    rows = [dict(r) for r in split]
    if rows and "paragraphs" in rows[0]:
        return flatten_articles(rows, where)
    if rows and isinstance(rows[0].get("data"), Mapping) and "paragraphs" in rows[0]["data"]:
        return flatten_articles([r["data"] for r in rows], where)
    return rows


@SOURCES.register("hub")
def hub(cfg: Mapping) -> dict[str, list[Example]]:
    """A Hugging Face hub data set; fails fast with a pointer to local files when offline."""
    endpoint = hub_unreachable()
    if endpoint is not None:
        raise BrewlabError(
            f"task.hub_id={cfg['hub_id']!r} needs the hub but {endpoint} cannot be reached; without internet "
            "set task.data.train_file / validation_file / test_file to local files in the hub format "
            "(or HF_HUB_OFFLINE=1 to read a local Hugging Face cache)"
        )
    import datasets

    try:
        ds = datasets.load_dataset(cfg["hub_id"], cfg.get("hub_config"))
    except Exception as exc:
        raise BrewlabError(
            f"task.hub_id={cfg['hub_id']!r} could not be loaded ({type(exc).__name__}); without "
            "internet set task.data.train_file / validation_file / test_file to local files "
            "in the hub format"
        ) from None
    names = cfg.get("hub_splits") or {s: s for s in SPLITS}
    where = f"task.hub_id={cfg['hub_id']!r}"
    return {split: _hub_rows(ds[names[split]], where) for split in SPLITS if names.get(split) in ds}
