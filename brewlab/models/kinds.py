"""Teacher and student kinds (`teacher.kind`, `student.kind`): each entry checks its own config
section and carries the properties that code building, training or measuring a model asks
about, so no caller keeps its own list of kind names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from brewlab.core.errors import BrewlabError
from brewlab.core.registry import Registry
from brewlab.models.build import bigru_head, build_bigru, build_scratch


@dataclass(frozen=True)
class TeacherKind:
    """Where a teacher's weights come from."""

    from_arch: bool  # built from `teacher.arch` (else loaded from `teacher.name_or_path`)
    masked_lm_base: bool  # starts from a masked LM that is pretrained on `teacher.pretrain` first
    always_trains: bool  # trained on the task whatever `teacher.finetune` says


@dataclass(frozen=True)
class StudentKind:
    """How a random student of this kind is built, and whether it has attention."""

    attention: bool  # False: no attention heads (its shape has 0 heads, whatever `arch` holds)
    build: Callable[[Mapping, Any, Any, int, str], Any]  # (arch, tokenizer, task kind, num_labels, attention implementation)


TEACHER_KINDS: Registry[Callable[[Mapping[str, Any]], None]] = Registry("teacher.kind")
STUDENT_KINDS: Registry[Callable[[Mapping[str, Any], Any], None]] = Registry("student.kind")


def check_heads(side: str, arch: Mapping[str, Any] | None) -> None:
    """A BERT `arch` splits its hidden size evenly over its attention heads."""
    arch = arch or {}
    size, heads = arch.get("hidden_size"), arch.get("num_attention_heads")
    if isinstance(size, int) and isinstance(heads, int) and heads > 0 and size % heads:
        raise BrewlabError(
            f"{side}.arch.hidden_size={size} is not a multiple of {side}.arch.num_attention_heads={heads}; "
            f"e.g. {side}.arch.hidden_size={size - size % heads or heads}"
        )


@TEACHER_KINDS.register("scratch", TeacherKind(from_arch=True, masked_lm_base=False, always_trains=True))
@TEACHER_KINDS.register("pretrained_scratch", TeacherKind(from_arch=True, masked_lm_base=True, always_trains=False))
def check_arch_teacher(teacher: Mapping[str, Any]) -> None:
    """A teacher built from `arch`."""
    check_heads("teacher", teacher.get("arch"))


@TEACHER_KINDS.register("hf", TeacherKind(from_arch=False, masked_lm_base=False, always_trains=False))
def check_hf_teacher(teacher: Mapping[str, Any]) -> None:
    """A hub or local model: its `name_or_path` is checked where its shape is read (`teacher_shape`)."""


@STUDENT_KINDS.register("bert", StudentKind(attention=True, build=build_scratch))
def check_bert_student(student: Mapping[str, Any], task_kind: Any) -> None:
    """A BERT student of `arch`."""
    check_heads("student", student.get("arch"))


def _build_bigru(arch: Mapping, tokenizer: Any, kind: Any, num_labels: int, attn_implementation: str) -> Any:
    return build_bigru(arch, tokenizer, kind, num_labels)  # no attention to implement


@STUDENT_KINDS.register("bigru", StudentKind(attention=False, build=_build_bigru))
def check_bigru_student(student: Mapping[str, Any], task_kind: Any) -> None:
    """A BiGRU has a head for some task kinds, no encoder layers to copy, and an even hidden size
    (two directions)."""
    bigru_head(task_kind)
    if student.get("init_from_teacher_layers"):
        raise BrewlabError("student.init_from_teacher_layers needs a BERT student; student.kind=bigru has no such layers")
    if student["arch"].get("hidden_size", 0) % 2:
        raise BrewlabError(f"student.arch.hidden_size={student['arch']['hidden_size']} must be even for a BiGRU")
