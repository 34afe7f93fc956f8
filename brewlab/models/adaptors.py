"""The adaptor contract: the only way distillers see a model.

An adaptor runs a model on a batch and returns a `ModelView` of named pieces (logits, hidden
states, attention maps, masks, labels). Distillers never touch model attributes, so any model
(Hugging Face or not) can be distilled once it has an adaptor; models are never edited. Every
model brewlab builds or loads (Hugging Face encoders, and the BiGRU, which returns the same
outputs) is read by `HFAdaptor`, so there is no adaptor registry to choose from: another model
kind brings a class with the same three properties and call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class ModelView:
    """A model's output in the names the losses use.

    logits: (B, C) or (B, L, C). logits_mask: which logit rows count for KD (None = all).
    class_mask: which classes of a row exist (broadcastable to the logits; None = all).
    hidden: embeddings + one tensor per layer, each (B, L, D). attention: one (B, H, L, L) per layer.
    """

    logits: torch.Tensor
    mask: torch.Tensor
    logits_mask: torch.Tensor | None = None
    class_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    hidden: tuple[torch.Tensor, ...] | None = None
    attention: tuple[torch.Tensor, ...] | None = None


class HFAdaptor:
    """Adaptor for Hugging Face encoder models with a task head."""

    stored = False  # outputs come from running the model (see brewlab.distill.teacher_outputs.disk.StoredView)
    store_entries: list[str] = []  # the teacher-store entries it reads: none

    def __init__(self, model: nn.Module, kind: Any) -> None:
        self.model = model
        self.kind = kind

    @property
    def online(self) -> HFAdaptor:
        """The adaptor that runs the model on any batch (evaluation): this one."""
        return self

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    def __call__(self, batch: Mapping[str, torch.Tensor], hidden: bool = False, attention: bool = False) -> ModelView:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        out = self.model(**inputs, output_hidden_states=hidden, output_attentions=attention)
        labels = batch.get("labels")
        return ModelView(
            logits=self.kind.model_logits(out, batch),
            mask=batch["attention_mask"],
            logits_mask=self.kind.logits_mask(batch),
            class_mask=self.kind.class_mask(batch),
            labels=labels,
            hidden=out.hidden_states if hidden else None,
            attention=out.attentions if attention else None,
        )


class LazyAdaptor(HFAdaptor):
    """`HFAdaptor` over a model loaded on first use (a cached teacher whose outputs may all be in
    the teacher store); its sizes come from the model's config, which loads no weights."""

    def __init__(self, load: Callable[[], nn.Module], config: Callable[[], Any], kind: Any) -> None:
        self._load, self._config, self.kind = load, config, kind

    @property
    def model(self) -> nn.Module:  # type: ignore[override]
        return self._load()

    @property
    def num_layers(self) -> int:
        return int(self._config().num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self._config().hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self._config().num_attention_heads)
