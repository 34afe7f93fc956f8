"""A student that is not a transformer: embeddings + stacked bidirectional GRUs + a task head.

Written as Hugging Face `PreTrainedModel`s and registered with the Auto classes, so the rest of
brewlab (adaptor, saving, `from_pretrained` loading) treats it like any other model once this
module is imported; `brewlab.models.build` imports it. Each GRU layer's output is one "hidden state"
(the embeddings are state 0), all of width `hidden_size` (two directions of hidden_size/2), so
hidden-state matches against a teacher work through the usual projections. It has no attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import (
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


class BiGRUConfig(PretrainedConfig):
    model_type = "brewlab-bigru"

    def __init__(
        self,
        vocab_size: int = 1000,
        hidden_size: int = 256,
        num_hidden_layers: int = 2,
        dropout: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if hidden_size % 2:
            raise ValueError(f"hidden_size={hidden_size} must be even (two GRU directions of hidden_size/2)")
        kwargs.pop("num_attention_heads", None)
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = 0  # no attention maps to match
        self.dropout = dropout
        self.initializer_range = initializer_range


class BiGRUPreTrainedModel(PreTrainedModel):
    config_class = BiGRUConfig
    base_model_prefix = "encoder"
    _supports_sdpa = True  # nothing to switch: lets callers ask for any attention kernel

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.GRU):
            module.reset_parameters()


class BiGRUEncoder(nn.Module):
    """Packed sequences, so neither direction ever reads padding (inputs are right-padded)."""

    def __init__(self, config: BiGRUConfig) -> None:
        super().__init__()
        size = config.hidden_size
        self.embeddings = nn.Embedding(config.vocab_size, size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(
            nn.GRU(size, size // 2, batch_first=True, bidirectional=True) for _ in range(config.num_hidden_layers)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        x = self.embeddings(input_ids)
        states = [x]
        for gru in self.layers:
            packed = pack_padded_sequence(self.dropout(x), lengths, batch_first=True, enforce_sorted=False)
            out, _ = gru(packed)
            x, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
            states.append(x)
        return states


class _BiGRUWithHead(BiGRUPreTrainedModel):
    head_size: int | None = None  # output units per position; None = num_labels

    def __init__(self, config: BiGRUConfig) -> None:
        super().__init__(config)
        self.encoder = BiGRUEncoder(config)
        self.dropout = nn.Dropout(config.dropout)
        self.head = self._make_head(config)
        self.post_init()

    def _make_head(self, config: BiGRUConfig) -> nn.Module:
        return nn.Linear(config.hidden_size, self.head_size or config.num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,  # accepted for BERT-style batches, unused
        output_hidden_states: bool | None = False,
        output_attentions: bool | None = False,
        **kwargs: Any,
    ) -> Any:
        if output_attentions:
            raise ValueError("a BiGRU model has no attention maps; match hidden states instead")
        states = self.encoder(input_ids, attention_mask)
        hidden = tuple(states) if output_hidden_states else None
        return self._output(self.dropout(states[-1]), attention_mask, hidden)

    def _output(self, last: torch.Tensor, mask: torch.Tensor | None, hidden: tuple | None) -> Any:
        raise NotImplementedError


class BiGRUForSequenceClassification(_BiGRUWithHead):
    """Masked mean and max pooling over the last layer, concatenated, then a linear head."""

    def _make_head(self, config: BiGRUConfig) -> nn.Module:
        return nn.Linear(2 * config.hidden_size, config.num_labels)

    def _output(self, last: torch.Tensor, mask: torch.Tensor | None, hidden: tuple | None) -> Any:
        valid = (mask if mask is not None else torch.ones(last.shape[:2], device=last.device)).unsqueeze(-1).bool()
        mean = last.masked_fill(~valid, 0).sum(1) / valid.sum(1).clamp(min=1)
        peak = last.masked_fill(~valid, torch.finfo(last.dtype).min).amax(1)
        return SequenceClassifierOutput(logits=self.head(torch.cat([mean, peak], -1)), hidden_states=hidden)


class BiGRUForTokenClassification(_BiGRUWithHead):
    def _output(self, last: torch.Tensor, mask: torch.Tensor | None, hidden: tuple | None) -> Any:
        return TokenClassifierOutput(logits=self.head(last), hidden_states=hidden)


class BiGRUForQuestionAnswering(_BiGRUWithHead):
    head_size = 2

    def _output(self, last: torch.Tensor, mask: torch.Tensor | None, hidden: tuple | None) -> Any:
        start, end = self.head(last).unbind(-1)
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end, hidden_states=hidden)


HEADS = {
    "AutoModelForSequenceClassification": (AutoModelForSequenceClassification, BiGRUForSequenceClassification),
    "AutoModelForTokenClassification": (AutoModelForTokenClassification, BiGRUForTokenClassification),
    "AutoModelForQuestionAnswering": (AutoModelForQuestionAnswering, BiGRUForQuestionAnswering),
}

AutoConfig.register(BiGRUConfig.model_type, BiGRUConfig, exist_ok=True)
for auto, model_class in HEADS.values():
    auto.register(BiGRUConfig, model_class, exist_ok=True)
