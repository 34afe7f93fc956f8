"""Validation of the composed config, done once before anything is loaded or trained.

Every check raises `BrewlabError` with one line naming the key, the bad value and the allowed
values. Checks that need model shapes use the shapes the config declares (or a local model's
config.json), so a wrong layer index fails in a second, not after teacher training.
"""

from __future__ import annotations

import codecs
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from brewlab.config import schema
from brewlab.config.schema import AugmentationOptions, StudentOptions, TaskOptions, settings
from brewlab.core.errors import BrewlabError, bad_choice
from brewlab.core.files import check_writable
from brewlab.data.augment.ops import AUGMENTERS, check_config, ops_of
from brewlab.data.tasks import KINDS, SOURCES, kind_of
from brewlab.distill.distillers import DISTILLERS
from brewlab.distill.losses import TEACHER_COMBINERS
from brewlab.distill.objective import parse_objective
from brewlab.distill.schedulers import build_schedules
from brewlab.eval.baselines import LINEAR_BASELINES
from brewlab.models.build import check_model_dir
from brewlab.models.kinds import STUDENT_KINDS, TEACHER_KINDS
from brewlab.models.shape import Shape, arch_shape, model_dir_shape, teacher_shape
from brewlab.train.callbacks import CALLBACKS
from brewlab.train.tracking import TRACKERS

RESUME = ("auto", True, False)


def _check_number(key: str, value: Any, minimum: float, inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (value < minimum if inclusive else value <= minimum):
        op = ">=" if inclusive else ">"
        raise BrewlabError(f"{key}={value!r} must be a number {op} {minimum}")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check the whole composed (plain) config; raise on the first problem found: each section
    by the registry entry it names, then the rules between sections."""
    task, teacher, student = cfg["task"], cfg["teacher"], cfg["student"]
    task_kind = _check_task(task)
    check_writable(cfg["cache_dir"], "cache_dir")
    if cfg["resume"] not in RESUME:
        raise bad_choice("resume", cfg["resume"], ("auto", "true", "false"))
    distiller = DISTILLERS.get(cfg["distiller"]["name"], "distiller")
    TRACKERS.get(cfg["logger"]["name"], "logger")
    check_teacher = TEACHER_KINDS.get(teacher["kind"], "teacher.kind")
    _check_loops(cfg)
    _check_number("optim.lr", cfg["optim"]["lr"], 0, inclusive=False)
    named = distiller.tasks_of(cfg["distiller"])  # the run's own `task` is not trained then
    tasks = {task.get("name", "?"): task} if named is None else dict(named)
    for name, task_cfg in tasks.items():  # the temperature's bound depends on each task's classes
        if isinstance(task_cfg, Mapping) and task_cfg.get("kind") in KINDS:
            classes = KINDS.get(task_cfg["kind"]).logit_classes(task_cfg)
            build_schedules(cfg["scheduler"], classes, f"task {name}")
    s_kind = settings(student, StudentOptions).kind  # its name is checked with the other schema keys
    check_teacher(teacher)
    STUDENT_KINDS.get(s_kind)(student, task_kind)
    t_shape = teacher_shape(teacher)
    s_shape = arch_shape(student["arch"])
    if not STUDENT_KINDS.props(s_kind).attention:  # whatever else `arch` holds (e.g. debug sizes)
        s_shape = replace(s_shape, num_heads=0)
    if student.get("init_from"):
        if student.get("init_from_teacher_layers"):
            raise BrewlabError("student.init_from and student.init_from_teacher_layers exclude each other; set one")
        s_shape = model_dir_shape(str(student["init_from"]), "student.init_from") or s_shape
    if t_shape is None:  # hub teacher: layer checks happen once its config is loaded
        t_shape = Shape(10**6, s_shape.hidden_size, s_shape.num_heads)
    objective = parse_objective(cfg["loss"], t_shape if distiller.uses_teacher else None, s_shape)
    _check_augmentation(cfg, task_kind, distiller, objective)
    if distiller.many_teachers or cfg["distiller"].get("teachers"):
        check_teachers(cfg["distiller"], teacher)
    if named is not None:
        check_tasks(cfg)
    _check_baselines(cfg, distiller)
    if objective.matches and not distiller.allows_matches:
        names = ", ".join(m.name for m in objective.matches)
        raise BrewlabError(
            f"distiller={cfg['distiller']['name']} takes logit losses only but loss has [{names}]; "
            "use distiller=general"
        )
    _check_teacher_layers(student.get("init_from_teacher_layers"), t_shape, s_shape)


def _check_task(task: Mapping[str, Any]) -> Any:
    """The run's `task` section: its kind (returned), where its examples come from, its sizes."""
    kind = kind_of(task["kind"])
    data = task.get("data") or {}
    if not data.get("train_file"):
        SOURCES.get(task["source"], "task.source")
    for split in ("train", "validation", "test"):
        path = data.get(f"{split}_file")
        if path and not Path(path).is_file():
            raise BrewlabError(f"task.data.{split}_file={path!r}: file not found")
        if path:
            _check_utf8(Path(path), f"task.data.{split}_file")
    _check_number("task.max_seq_length", task["max_seq_length"], 8)
    fraction = settings(task, TaskOptions).train_fraction
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
        raise BrewlabError(f"task.train_fraction={fraction!r} must be a fraction in (0, 1]")
    return kind


def _check_teacher_layers(layers: Sequence[Any] | None, t_shape: Shape, s_shape: Shape) -> None:
    """`student.init_from_teacher_layers`: one teacher layer per student layer, each one the teacher has."""
    if layers:
        for layer in layers:
            if not 0 <= int(layer) < t_shape.num_layers:
                raise BrewlabError(
                    f"student.init_from_teacher_layers: layer {layer} is beyond the teacher's depth "
                    f"(0..{t_shape.num_layers - 1})"
                )
        if len(layers) != s_shape.num_layers:
            raise BrewlabError(
                f"student.init_from_teacher_layers={list(layers)} names {len(layers)} layers; "
                f"student.arch.num_hidden_layers={s_shape.num_layers}"
            )


def _check_loops(cfg: Mapping[str, Any]) -> None:
    """Every training loop's settings (the student's and the teacher's stages) and the logger,
    by the ranges and choices of brewlab/config/schema.py."""
    schema.check("trainer", cfg["trainer"], schema.TrainerSettings)
    teacher = cfg["teacher"]
    for key, train in (("teacher.train", teacher.get("train")), ("teacher.pretrain.train", (teacher.get("pretrain") or {}).get("train"))):
        if train is not None:
            schema.check(key, train, schema.StageTrainSettings)
    schema.check("logger", cfg["logger"], schema.Logger)
    schema.check("", cfg, schema.TopLevel)
    task = cfg["task"]
    STUDENT_KINDS.get(settings(cfg["student"], StudentOptions).kind, "student.kind")
    for key, values, options_of in (
        ("student", cfg["student"], schema.StudentOptions),
        ("teacher", teacher, schema.TeacherOptions),
        ("task", task, schema.TaskOptions),
        ("task.split", task.get("split") or {}, schema.SplitOptions),
        ("task.tokenizer", task.get("tokenizer") or {}, schema.TokenizerOptions),
        ("augmentation", cfg["augmentation"], schema.AugmentationOptions),
    ):
        schema.check(key, values, options_of)
    _check_device(str(cfg["trainer"]["device"]))
    for name in cfg["trainer"]["callbacks"]:
        CALLBACKS.get(name, "trainer.callbacks")


def _check_utf8(path: Path, key: str) -> None:
    """Data files are read as UTF-8; any other encoding is named before the run starts."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise BrewlabError(
                    f"{key}={str(path)!r} is not UTF-8 text (byte 0x{chunk[exc.start]:02x} at offset {offset + exc.start}); "
                    "convert it, e.g. iconv -f gb18030 -t utf-8"
                ) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise BrewlabError(f"{key}={str(path)!r} is not UTF-8 text (it ends inside a character)") from None


def _check_device(device: str) -> None:
    """The device must exist here, so that a run never fails on it after loading its data."""
    if device in ("auto", "cpu"):
        return
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BrewlabError(f"trainer.device={device} but this machine has no CUDA device; use trainer.device=cpu or auto")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise BrewlabError(f"trainer.device={device}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
        return
    raise BrewlabError(f"trainer.device={device!r} is not valid; choose one of: auto, cpu, cuda, cuda:<index>")


def _check_baselines(cfg: Mapping[str, Any], distiller: Any) -> None:
    """`baselines`: two switches, each for the runs it can serve."""
    wanted = cfg.get("baselines") or {}
    unknown = sorted(set(wanted) - {"labels_only", "linear"})
    if unknown:
        raise BrewlabError(f"baselines.{unknown[0]} is not a known key; known keys: labels_only, linear")
    for key, value in wanted.items():
        if not isinstance(value, bool):
            raise BrewlabError(f"baselines.{key}={value!r} must be true or false")
    if any(wanted.values()) and distiller.tasks_of(cfg["distiller"]) is not None:
        raise BrewlabError("baselines work with single-task distillers; set baselines.labels_only=false baselines.linear=false")
    if wanted.get("labels_only") and not distiller.uses_teacher:
        raise BrewlabError(
            f"baselines.labels_only=true with distiller={cfg['distiller']['name']}: its student already learns from labels only"
        )
    if wanted.get("labels_only") and ops_of(cfg.get("augmentation") or {}):
        raise BrewlabError(
            "baselines.labels_only=true with augmentation: the labels-only student would not see the augmented "
            "batches the student trains on; use augmentation=none, or compare with a distiller=trainer run"
        )
    if wanted.get("linear") and cfg["task"]["kind"] not in LINEAR_BASELINES:
        raise BrewlabError(
            f"baselines.linear=true: task {cfg['task']['name']} is {cfg['task']['kind']}; the linear baseline covers "
            + ", ".join(LINEAR_BASELINES.names())
        )


def check_tasks(cfg: Mapping[str, Any]) -> None:
    """`distiller.tasks`: task configs (composed from conf/task presets) and the sampling tau."""
    d_cfg = cfg["distiller"]
    tasks = d_cfg.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise BrewlabError(
            f"distiller.tasks={tasks!r} must map task names to task configs, e.g. distiller=multi_task "
            "(reviews_zh + pd98_ner) plus +task@distiller.tasks.<name>=<task preset>"
        )
    for name, task in tasks.items():
        if not isinstance(task, Mapping) or "kind" not in task:
            raise BrewlabError(f"distiller.tasks.{name} is not a task config (no `kind`)")
        kind_of(task["kind"], f"distiller.tasks.{name}.kind")
    _check_number("distiller.tau", d_cfg.get("tau"), 0)
    if ops_of(cfg.get("augmentation") or {}):
        raise BrewlabError("augmentation works with single-task distillers; use augmentation=none with distiller=multi_task")


def check_teachers(d_cfg: Mapping[str, Any], teacher: Mapping[str, Any]) -> None:
    """`distiller.teachers`: overrides of the run's teacher or model directories, with weights."""
    entries = d_cfg.get("teachers")
    if not isinstance(entries, list) or not entries:
        raise BrewlabError(
            f"distiller.teachers={entries!r} must be a non-empty list of teacher overrides "
            "(e.g. [{seed: 1}, {seed: 2}]) or model directories"
        )
    for i, entry in enumerate(entries):
        key = f"distiller.teachers[{i}]"
        if isinstance(entry, str):
            model_dir_shape(entry, key)
        elif isinstance(entry, Mapping):
            unknown = sorted(set(entry) - set(teacher))
            if unknown:
                raise BrewlabError(
                    f"{key} overrides unknown teacher keys {unknown}; teacher={teacher['name']} has: {', '.join(sorted(teacher))}"
                )
        else:
            raise BrewlabError(f"{key}={entry!r} must be a mapping of teacher overrides or a model directory")
    TEACHER_COMBINERS.get(d_cfg.get("combine"), "distiller.combine")
    weights = d_cfg.get("weights")
    if weights is not None:
        numbers = isinstance(weights, list) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights
        )
        if not numbers or len(weights) != len(entries) or sum(weights) <= 0:
            raise BrewlabError(
                f"distiller.weights={weights!r} must hold one number >= 0 per teacher ({len(entries)}), with a positive sum"
            )


def _check_mlm_language(cfg: Mapping[str, Any], name: str, op: Mapping[str, Any]) -> None:
    """The offline masked LM is pretrained on one language's corpus; on another language's text
    it would only propose [UNK]s, after a long pretraining."""
    aug_language = settings(cfg["augmentation"], AugmentationOptions).language
    language = cfg["task"].get("language") if aug_language == "auto" else aug_language
    corpus = ((op.get("masked_lm") or {}).get("pretrain") or {}).get("task") or {}
    if language and corpus.get("language") and language != corpus["language"]:
        raise BrewlabError(
            f"augmentation.ops.{name}.model_name_or_path is not set, and the offline masked LM is pretrained on "
            f"{corpus['language']} text ({corpus.get('name')}) but task {cfg['task']['name']} is {language}; "
            f"neither packaged teacher has a masked-LM head: name a {language} masked LM (hub id or local "
            f"directory, e.g. bert-base-uncased) or use augmentation=char, word or typo"
        )


def _check_augmentation(cfg: Mapping[str, Any], kind: Any, distiller: Any, objective: Any) -> None:
    """Augmented text has no gold label, so it needs a teacher and a task kind that can rebuild
    its examples from augmented text."""
    aug = cfg.get("augmentation") or {}
    check_config(aug)
    ops = ops_of(aug)
    if not ops:
        return
    if distiller.tasks_of(cfg["distiller"]) is not None:
        raise BrewlabError(
            f"augmentation ops [{', '.join(sorted(ops))}] apply to the run's task, but distiller={cfg['distiller']['name']} "
            "trains distiller.tasks; set augmentation=none"
        )
    if not distiller.uses_teacher:
        raise BrewlabError(
            f"augmentation ops [{', '.join(sorted(ops))}] need a teacher to label the augmented text, but "
            f"distiller={cfg['distiller']['name']} learns from gold labels only; use distiller=basic or general"
        )
    if not (objective.logit_terms or objective.matches):
        raise BrewlabError(
            f"augmentation ops [{', '.join(sorted(ops))}] are learnt from the teacher through KD or match losses, "
            f"but loss has only [{', '.join(sorted(cfg['loss']))}]; add one, e.g. loss=kd+hard"
        )
    for name, op in ops.items():
        needs = AUGMENTERS.props(op["kind"])
        for package in needs.packages:
            if importlib.util.find_spec(package) is None:
                raise BrewlabError(f"augmentation.ops.{name} needs {package}, which brewlab's install brings: pip install -e .")
        if needs.masked_lm and op.get("model_name_or_path"):
            check_model_dir(str(op["model_name_or_path"]), f"augmentation.ops.{name}.model_name_or_path")
        elif needs.masked_lm:
            _check_mlm_language(cfg, name, op)
    if kind.augment_texts is None:
        able = [name for name in KINDS.names() if KINDS.get(name).augment_texts is not None]
        raise BrewlabError(
            f"task.kind={cfg['task']['kind']} does not support augmentation; kinds that do: {', '.join(able)}"
        )
