"""The `mlm` augmentation operation: a masked LM's predictions in place of a fraction of the
tokens (TinyBERT's recipe)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from brewlab.config.schema import MaskedLMOptions, with_defaults
from brewlab.core.errors import BrewlabError
from brewlab.data.augment.language import Vocabulary, is_cjk
from brewlab.models.build import check_model_dir, load_tokenizer


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
        settings = with_defaults(op, MaskedLMOptions)
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
