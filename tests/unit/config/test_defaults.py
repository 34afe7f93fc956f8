"""Every default is written once, in brewlab/config/schema.py: no YAML under conf/ restates a
schema default unless it is listed below with its reason, and the composed sections that start
from a schema node carry the schema's values wherever a preset leaves a key out."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, compose_run

from brewlab.config import schema

CONF = ROOT / "conf"

# where each schema's keys sit in the composed config ("*": any one key)
SECTIONS: dict[str, type] = {
    "trainer": schema.TrainerSettings,
    "logger": schema.Logger,
    "teacher.train": schema.StageTrainSettings,
    "teacher.pretrain.train": schema.StageTrainSettings,
    "scheduler": schema.Scheduler,
    "task": schema.TaskOptions,
    "task.tokenizer": schema.TokenizerOptions,
    "task.masking": schema.MaskingOptions,
    "student": schema.StudentOptions,
    "teacher": schema.TeacherOptions,
    "augmentation": schema.AugmentationOptions,
    "augmentation.ops.*": schema.MaskedLMOptions,
    "loss.*": schema.LossTermOptions,
}

NAMED_FOR_ITS_VALUE = "the option is named for the value it sets and must keep it whatever the default"
READ_THROUGH_OPTIONS = (
    "a key read through `schema.with_defaults` that the composed config carries: dropping it would change "
    "the run fingerprints and cache keys made with it"
)
# (file under conf/, key in the composed config) -> why the file restates the schema's default
RESTATED: dict[tuple[str, str], str] = {
    ("logger/none.yaml", "logger.name"): NAMED_FOR_ITS_VALUE,
    ("scheduler/t1.yaml", "scheduler.temperature.kind"): NAMED_FOR_ITS_VALUE + " (t1 after flsw: constant)",
    ("scheduler/t4.yaml", "scheduler.temperature.kind"): NAMED_FOR_ITS_VALUE + " (t4 after flsw: constant)",
    ("scheduler/t4.yaml", "scheduler.temperature.base"): NAMED_FOR_ITS_VALUE,
    ("scheduler/t8.yaml", "scheduler.temperature.kind"): NAMED_FOR_ITS_VALUE + " (t8 after flsw: constant)",
    ("experiment/general_distillation.yaml", "teacher.finetune"): "undoes teacher=pretrained_scratch's finetune: true",
    (
        "teacher/pretrained_scratch.yaml",
        "teacher.pretrain.train.epochs",
    ): "the pretraining's length, set apart from the loop's",
    **{
        (f"task/{name}.yaml", "task.label_field"): READ_THROUGH_OPTIONS
        for name in ("chnsenticorp", "mnli", "sst2", "xnli")
    },
    **{
        (f"task/{name}.yaml", "task.tokenizer.min_freq"): READ_THROUGH_OPTIONS
        for name in ("conll03", "msra_ner", "pd98_ner")
    },
    ("task/mlm_zh.yaml", "task.masking.whole_word"): READ_THROUGH_OPTIONS,
    ("teacher/hf.yaml", "teacher.finetune"): READ_THROUGH_OPTIONS,
    ("augmentation_base.yaml", "augmentation.language"): READ_THROUGH_OPTIONS,
    **{
        ("augmentation/mlm.yaml", f"augmentation.ops.mlm.{key}"): READ_THROUGH_OPTIONS
        for key in ("top_k", "batch_size", "max_length")
    },
    **{
        (f"loss/{term}.yaml", f"loss.{term}.weight"): READ_THROUGH_OPTIONS
        for term in ("att", "cos", "fsp", "hard", "hidden", "kd", "nst", "pkd")
    },
    **{
        (f"loss/{term}.yaml", f"loss.{term}.layers"): READ_THROUGH_OPTIONS
        for term in ("att", "cos", "fsp", "hidden", "nst", "pkd")
    },
    **{(f"loss/{term}.yaml", f"loss.{term}.proj"): READ_THROUGH_OPTIONS for term in ("att", "nst")},
    ("loss/kd.yaml", "loss.kd.t2_scaling"): READ_THROUGH_OPTIONS,
}


def schema_defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> default of every field of `cls`, nested schemas flattened."""
    out: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.default is not dataclasses.MISSING:
            out[prefix + spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
            if dataclasses.is_dataclass(value):
                out.update(schema_defaults(type(value), f"{prefix}{spec.name}."))
            else:
                out[prefix + spec.name] = value
    return out


def package(path: Path) -> str:
    """Where a conf file's keys land in the composed config: its `# @package`, else its group."""
    found = re.search(r"^# @package (\S+)", path.read_text(), re.M)
    if found:
        return "" if found.group(1) == "_global_" else found.group(1)
    return ".".join(path.relative_to(CONF).parent.parts)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out[prefix + str(key)] = value
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
    return out


def same(a: Any, b: Any) -> bool:
    """Equal values of one kind (a YAML false is not the number 0, 1 is the float 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def restatements() -> dict[tuple[str, str], Any]:
    """(file, composed key) -> value of every YAML key that restates a schema default."""
    found = {}
    for path in sorted(CONF.rglob("*.yaml")):
        if "hydra" in path.relative_to(CONF).parts:
            continue
        data = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k not in ("defaults", "hydra")}
        pkg = package(path)
        for key, value in flatten(data, f"{pkg}." if pkg else "").items():
            for section, cls in SECTIONS.items():
                match = re.fullmatch(re.escape(section).replace(r"\*", r"[^.]+") + r"\.(.+)", key)
                defaults = schema_defaults(cls)
                if match and match.group(1) in defaults and same(defaults[match.group(1)], value):
                    found[(str(path.relative_to(CONF)), key)] = value
    return found


def test_no_yaml_restates_a_schema_default_unless_listed_with_its_reason():
    found = restatements()
    unlisted = sorted(set(found) - set(RESTATED))
    assert not unlisted, f"these YAML keys restate the default of brewlab/config/schema.py; drop them: {unlisted}"
    stale = sorted(set(RESTATED) - set(found))
    assert not stale, f"listed as restated but no longer are: {stale}"


def test_the_finder_sees_a_restated_default_in_a_task_preset_and_the_scheduler(tmp_path, monkeypatch):
    """The check above is not vacuous: a restated train_fraction or T=4 is caught."""
    (tmp_path / "task").mkdir()
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "task" / "x.yaml").write_text("name: x\ntrain_fraction: 1.0\nsplit: {validation: 0.2, seed: 1234}\n")
    (tmp_path / "scheduler" / "y.yaml").write_text("temperature: {kind: flsw, base: 4.0}\nlr: {warmup_ratio: 0.1}\n")
    monkeypatch.setitem(globals(), "CONF", tmp_path)
    assert restatements() == {
        ("task/x.yaml", "task.train_fraction"): 1.0,
        ("task/x.yaml", "task.split.seed"): 1234,
        ("scheduler/y.yaml", "scheduler.temperature.base"): 4.0,
        ("scheduler/y.yaml", "scheduler.lr.warmup_ratio"): 0.1,
    }


def test_the_schema_defaults_are_the_values_runs_use():
    assert schema_defaults(schema.Scheduler) == {
        "temperature.kind": "constant",
        "temperature.base": 4.0,
        "kd_weight": "constant",
        "hard_weight": "constant",
        "lr.kind": "linear",
        "lr.warmup_ratio": 0.1,
        "probability_shift": False,
    }
    assert schema_defaults(schema.TaskBase) == {
        "train_fraction": 1.0,
        "split.validation": 0.1,
        "split.test": 0.1,
        "split.seed": 1234,
    }


@pytest.mark.parametrize("task", sorted(p.stem for p in (CONF / "task").glob("*.yaml")))
def test_every_task_carries_its_presets_split_else_the_schemas(task):
    preset = flatten(yaml.safe_load((CONF / "task" / f"{task}.yaml").read_text()))
    composed = flatten(compose_run(f"task={task}")["task"])
    for key, default in schema_defaults(schema.TaskBase).items():
        assert same(composed[key], preset.get(key, default)), key


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml")))
def test_every_scheduler_option_changes_only_what_it_names(option):
    preset = flatten(yaml.safe_load((CONF / "scheduler" / f"{option}.yaml").read_text()) or {})
    composed = flatten(compose_run(f"scheduler={option}")["scheduler"])
    expected = {**schema_defaults(schema.Scheduler), **{k: v for k, v in preset.items() if not isinstance(v, dict)}}
    assert {k: v for k, v in composed.items() if not isinstance(v, dict)} == expected
