"""The model facts loss parsing and validation need, known before a model exists: from a
config's `arch`, or from a local model's config.json; and where a configured teacher's
weights are (a hub id, a directory, or a `pkg:` model located in its installed package)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brewlab.core.errors import BrewlabError
from brewlab.core.packaged import resolve
from brewlab.models.build import check_model_dir, is_local_model_dir
from brewlab.models.kinds import TEACHER_KINDS


@dataclass(frozen=True)
class Shape:
    """The model facts loss parsing needs, known before a model exists (adaptor-compatible)."""

    num_layers: int
    hidden_size: int
    num_heads: int


def arch_shape(arch: Mapping[str, Any]) -> Shape:
    """Shape of a config `arch`; models without attention (BiGRU) have 0 heads."""
    return Shape(int(arch["num_hidden_layers"]), int(arch["hidden_size"]), int(arch.get("num_attention_heads") or 0))


def teacher_shape(teacher: Mapping[str, Any]) -> Shape | None:
    """Shape from the teacher config, or from a local model's config.json; None for hub ids."""
    if TEACHER_KINDS.props(teacher["kind"], "teacher.kind").from_arch:
        return arch_shape(teacher["arch"])
    if not teacher.get("name_or_path"):
        raise BrewlabError("teacher.name_or_path is required with teacher=hf (a hub id or a local directory)")
    return model_dir_shape(teacher_source(teacher), "teacher.name_or_path")


def teacher_source(teacher: Mapping[str, Any]) -> str:
    """`teacher.name_or_path` as a hub id or local path; a `pkg:` model is located in its
    installed package and its files checked against `teacher.checksums`."""
    return resolve(str(teacher["name_or_path"]), "teacher.name_or_path", teacher.get("checksums"), teacher.get("package"))


def model_dir_shape(path: str, key: str) -> Shape | None:
    """Shape from a local model's config.json (checked to hold weights); None for hub ids."""
    check_model_dir(path, key)
    if not is_local_model_dir(path):
        return None
    with open(f"{path}/config.json", encoding="utf-8") as fh:
        conf = json.load(fh)
    return Shape(conf["num_hidden_layers"], conf["hidden_size"], conf.get("num_attention_heads") or 0)
