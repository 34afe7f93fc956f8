"""Building, loading, initialising, measuring and saving teacher and student models.

Models are plain Hugging Face models; brewlab never edits their code. Everything model-specific
the distillers need goes through `brewlab.models.adaptors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brewlab.core.errors import BrewlabError
from brewlab.core.hub import hub_unreachable

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def _auto_class(kind: Any):
    import transformers

    from brewlab.models import bigru  # noqa: F401  # lazy: registers the BiGRU classes when needed

    return getattr(transformers, kind.auto_model)


def bigru_head(kind: Any, key: str = "student.kind=bigru") -> Any:
    """The BiGRU model class for a task kind, or a clear error for kinds it has no head for."""
    from brewlab.models import bigru  # lazy: transformers' modeling stack is slow to import

    if kind.auto_model not in bigru.HEADS:
        able = ", ".join(sorted(bigru.HEADS))
        raise BrewlabError(f"{key} has no head for {kind.auto_model}; it supports: {able}")
    return bigru.HEADS[kind.auto_model][1]


def build_bigru(arch: Mapping, tokenizer, kind: Any, num_labels: int):
    """A randomly initialised BiGRU student (see `brewlab.models.bigru`) sized to the tokenizer."""
    from brewlab.models.bigru import BiGRUConfig  # lazy: as in bigru_head

    shape = {k: arch[k] for k in ("num_hidden_layers", "hidden_size", "dropout") if arch.get(k) is not None}
    config = BiGRUConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=num_labels, **shape)
    return bigru_head(kind)(config)


def build_scratch(arch: Mapping, tokenizer, kind: Any, num_labels: int, attn_implementation: str = "sdpa"):
    """A randomly initialised BERT of the given shape, sized to the tokenizer and label set."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
        **{k: v for k, v in dict(arch).items() if v is not None},
    )
    config._attn_implementation = attn_implementation
    return _auto_class(kind).from_config(config, attn_implementation=attn_implementation)


def is_local_model_dir(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists() or name_or_path.startswith((".", "/", "~"))


def _require_hub(name_or_path: str, key: str) -> None:
    endpoint = hub_unreachable()
    if endpoint is not None:
        raise BrewlabError(
            f"{key}={name_or_path!r} is a hub id but {endpoint} cannot be reached; give a local model "
            "directory (or set HF_HUB_OFFLINE=1 to read a local Hugging Face cache)"
        )


def check_model_dir(name_or_path: str, key: str) -> None:
    """Local model directories must exist and hold weights; a hub id needs a reachable hub
    (checked in seconds, so an offline run fails at startup rather than after minutes of retries)."""
    if not is_local_model_dir(name_or_path):
        _require_hub(name_or_path, key)
        return
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise BrewlabError(f"{key}={name_or_path!r}: directory not found")
    if not (path / "config.json").is_file() or not any((path / f).is_file() for f in WEIGHT_FILES):
        raise BrewlabError(f"{key}={name_or_path!r}: not a model directory (needs config.json and weights)")


def load_pretrained(
    name_or_path: str,
    kind: Any,
    num_labels: int,
    attn_implementation: str = "sdpa",
    key: str = "teacher.name_or_path",
    new_head: bool = False,
):
    """Load a fine-tuned (or base) model by hub id or local directory. With `new_head` the
    checkpoint is a body for another head (a masked LM fine-tuned for a task), so the report of
    unused and freshly initialised head weights is expected and kept quiet."""
    from transformers.utils import logging as hf_logging

    check_model_dir(name_or_path, key)
    verbosity = hf_logging.get_verbosity()
    if new_head:
        hf_logging.set_verbosity_error()
    try:
        return _auto_class(kind).from_pretrained(
            name_or_path, num_labels=num_labels, attn_implementation=attn_implementation
        )
    except OSError as exc:
        raise BrewlabError(f"{key}={name_or_path!r} could not be loaded: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_tokenizer(name_or_path: str, key: str = "teacher.name_or_path"):
    from transformers import AutoTokenizer

    if not is_local_model_dir(name_or_path):
        _require_hub(name_or_path, key)
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise BrewlabError(f"{key}={name_or_path!r} has no usable tokenizer: {str(exc).splitlines()[0]}") from None


def without_call_settings(tokenizer: Any) -> Any:
    """`tokenizer` with the truncation and padding of its last call taken off its fast backend.

    transformers writes each call's truncation and padding into the backend, where `to_str` and
    `save_pretrained` see them, and every call sets its own again: they record what the tokenizer
    was last used for, not what it is. Without this, a process that encoded a task before saving
    or keying its tokenizer saves and keys another one than a process that read the encoded task
    from the cache (a resumed run)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    return tokenizer


def init_from_teacher_layers(student: nn.Module, teacher: nn.Module, layers: Sequence[int]) -> None:
    """Copy the teacher's embeddings and the chosen encoder layers into the student (in order).

    Only possible when both share hidden size and layer shape; the head stays random because a
    student may have a different label set or pooling.
    """
    s_base, t_base = student.base_model, teacher.base_model
    if student.config.hidden_size != teacher.config.hidden_size:
        raise BrewlabError(
            "student.init_from_teacher_layers needs equal hidden sizes "
            f"(teacher {teacher.config.hidden_size}, student {student.config.hidden_size})"
        )
    s_layers, t_layers = s_base.encoder.layer, t_base.encoder.layer
    if len(layers) != len(s_layers):
        raise BrewlabError(
            f"student.init_from_teacher_layers={list(layers)} names {len(layers)} layers; the student has {len(s_layers)}"
        )
    for s_i, t_i in enumerate(layers):
        if not 0 <= t_i < len(t_layers):
            raise BrewlabError(
                f"student.init_from_teacher_layers: layer {t_i} is beyond the teacher's depth (0..{len(t_layers) - 1})"
            )
        s_layers[s_i].load_state_dict(t_layers[t_i].state_dict())
    s_base.embeddings.load_state_dict(t_base.embeddings.state_dict())


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and non-embedding parameter counts (embeddings scale with vocabulary, not depth)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)
    )
    return {"total": total, "non_embedding": total - embedding}


def save_model(
    model: nn.Module, tokenizer, directory: str | Path, extra: Mapping[str, nn.Module] | None = None
) -> None:
    """Write a from_pretrained-loadable directory; extra modules (projections) go beside it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    without_call_settings(tokenizer).save_pretrained(str(directory))
    for name, module in (extra or {}).items():
        if len(list(module.parameters())):
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().contiguous() for k, v in module.state_dict().items()},
                str(directory / f"{name}.safetensors"),
            )


def set_attention(model: nn.Module, implementation: str) -> None:
    """Switch attention kernels (eager is needed to read attention maps in transformers 5)."""
    if model.config.num_attention_heads and getattr(model.config, "_attn_implementation", None) != implementation:
        model.set_attn_implementation(implementation)


def device_of(cfg_device: str) -> torch.device:
    if cfg_device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg_device)
