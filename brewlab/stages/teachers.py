"""Where a run's teacher comes from: loaded as is, reused from the cache, or trained (after
pretraining its masked-LM base when it has one) and cached by everything that shapes it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch

from brewlab.config.identity import hashed_view, teacher_identity
from brewlab.config.schema import RunSettings, StageTrainSettings, TeacherOptions, settings
from brewlab.core.cache import TEACHER_META, stable_hash
from brewlab.core.errors import BrewlabError
from brewlab.data.prepare import Prepared, prepare_task
from brewlab.models.build import build_scratch, load_pretrained, load_tokenizer, set_attention
from brewlab.models.kinds import TEACHER_KINDS
from brewlab.models.shape import teacher_source
from brewlab.models.teacher import Teacher
from brewlab.stages.stage import PrefixedTracker, stage_optim, train_and_publish
from brewlab.train.runtime import Runtime

log = logging.getLogger("brewlab")


def teacher_base(cfg: Mapping[str, Any], run: RunSettings, rt: Runtime) -> str | None:
    """The model a teacher starts from (and whose tokenizer the run uses): a hub id or directory
    for `hf`, the cached masked LM for `pretrained_scratch` (pretrained first if missing), or
    None for `scratch`."""
    t_cfg = cfg["teacher"]
    kind = TEACHER_KINDS.props(t_cfg["kind"], "teacher.kind")
    if not kind.from_arch:
        return teacher_source(t_cfg)
    if not kind.masked_lm_base:
        return None
    p_cfg = t_cfg["pretrain"]
    loop = settings(p_cfg["train"], StageTrainSettings)
    key = rt.cache.key(hashed_view({"arch": t_cfg["arch"], "pretrain": p_cfg, "optim": stage_optim(cfg["optim"], loop)}))
    directory = rt.cache.entry("pretrained", p_cfg["task"]["name"], key)
    if (directory / TEACHER_META).is_file():
        log.info("pretrained masked LM: reused cache %s", directory)
        return str(directory)
    stage = {**cfg, "task": p_cfg["task"]}
    prep = prepare_task(stage, rt.cache)
    log.info("pretraining a masked LM on %s %s (cache key %s)", p_cfg["task"]["name"], prep.sizes, key)
    loop = dataclasses.replace(loop, seed=stage_seed(loop, t_cfg))
    torch.manual_seed(loop.seed)
    model = build_scratch(t_cfg["arch"], prep.tokenizer, prep.kind, prep.kind.num_labels(prep.label_names)).to(rt.device)
    train_and_publish("pretrain", stage, run, model, prep, loop, directory, key, rt.with_tracker(PrefixedTracker(rt.tracker, "pretrain/")))
    return str(directory)


def stage_seed(train: StageTrainSettings, t_cfg: Mapping[str, Any]) -> int:
    """A teacher stage's seed: its own `train.seed`, else the teacher's."""
    return int(t_cfg["seed"]) if train.seed is None else train.seed  # the teacher group has no schema


def teacher_configs(cfg: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """One teacher config per entry of `distiller.teachers` (None when the run has one teacher):
    a mapping overrides the run's `teacher` (e.g. its seed), a string names a fine-tuned model."""
    entries = cfg["distiller"].get("teachers")
    if not entries:
        return None
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append({"name": "hf", "kind": "hf", "name_or_path": entry, "finetune": False})
        else:
            out.append(_merged(cfg["teacher"], entry))
    return out


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, Mapping) and isinstance(base.get(key), Mapping)
        out[key] = _merged(base[key], value) if both else value
    return out


def get_teachers(cfg: Mapping[str, Any], run: RunSettings, prep: Prepared, base: str | None, attn: str, rt: Runtime) -> list[Teacher]:
    """The run's teacher, or one per `distiller.teachers` entry; every teacher must read the
    run's tokenizer."""
    configs = teacher_configs(cfg)
    if configs is None:
        return [get_teacher(cfg, run, prep, base, attn, rt)]
    out = []
    for i, t_cfg in enumerate(configs):
        stage = {**cfg, "teacher": t_cfg}
        t_base = teacher_base(stage, run, rt)
        key = f"distiller.teachers[{i}]"
        if t_base not in (None, base) and stable_hash(load_tokenizer(t_base, key).get_vocab()) != prep.tokenizer_id:
            raise BrewlabError(
                f"{key}={t_base!r} uses another vocabulary than the run's tokenizer (from teacher={cfg['teacher']['name']}); "
                "every teacher must share it"
            )
        out.append(get_teacher(stage, run, prep, t_base, attn, rt, f"teacher{i}/"))
    return out


def get_teacher(
    cfg: Mapping[str, Any],
    run: RunSettings,
    prep: Prepared,
    base: str | None,
    attn: str,
    rt: Runtime,
    prefix: str = "teacher/",
) -> Teacher:
    """The teacher: loaded as is from `base`, reused from the cache, or trained now.

    A teacher with `finetune: true` (always for `scratch`) is trained on the task with the
    `trainer` distiller, starting from `base`, and cached by everything that shapes it. A loaded
    or cached teacher's weights are read only when something runs it."""
    t_cfg = cfg["teacher"]
    num_labels = prep.kind.num_labels(prep.label_names)
    finetune = TEACHER_KINDS.props(t_cfg["kind"], "teacher.kind").always_trains or settings(t_cfg, TeacherOptions).finetune
    if base is not None and not finetune:

        def load_base() -> Any:
            model = load_pretrained(base, prep.kind, num_labels, attn)
            if model.config.vocab_size < len(prep.tokenizer):
                raise BrewlabError(
                    f"teacher.name_or_path={base!r}: vocabulary {model.config.vocab_size} "
                    f"is smaller than its tokenizer ({len(prep.tokenizer)})"
                )
            return model.to(rt.device).eval()

        return Teacher("loaded", base, t_cfg, load_base)
    loop = settings(t_cfg["train"], StageTrainSettings)
    key = rt.cache.key(
        {
            "teacher": teacher_identity(t_cfg),
            "task": cfg["task"],  # everything that shapes the data
            "tokenizer": prep.tokenizer_id,
            "init": "teacher-seed",  # weights are initialised from teacher.seed, not the run's seed
            "optim": stage_optim(cfg["optim"], loop),
        }
    )
    directory = rt.cache.entry("teachers", cfg["task"]["name"], key)
    loop = dataclasses.replace(loop, seed=stage_seed(loop, t_cfg))

    def train() -> Any:
        log.info("teacher: training %s (cache key %s)", f"from {base}" if base else "from scratch", key)
        torch.manual_seed(int(t_cfg["seed"]))
        if base is None:
            model = build_scratch(t_cfg["arch"], prep.tokenizer, prep.kind, num_labels)
        else:
            model = load_pretrained(base, prep.kind, num_labels, key="teacher base", new_head=True)
        model = model.to(rt.device)
        tracker = rt.with_tracker(PrefixedTracker(rt.tracker, prefix))
        train_and_publish(prefix.rstrip("/"), cfg, run, model, prep, loop, directory, key, tracker)
        set_attention(model, attn)
        return model.eval()

    def load_cached() -> Any:
        try:
            model = load_pretrained(str(directory), prep.kind, num_labels, attn, key="teacher cache")
        except Exception as exc:  # noqa: BLE001 - damaged after it was published (any reader's error type)
            log.warning("teacher cache %s is unreadable (%s): training it again", directory, str(exc).splitlines()[0])
            cached.source = "trained"
            return train()
        return model.to(rt.device).eval()

    if (directory / TEACHER_META).is_file():
        log.info("teacher: reused cache %s", directory)
        cached = Teacher("cache", str(directory), t_cfg, load_cached, entry=directory)
        return cached
    return Teacher("trained", str(directory), t_cfg, model=train(), entry=directory)
