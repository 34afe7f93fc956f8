"""The whole run: task -> tokenizer -> teacher -> student -> distil -> evaluate -> save.

With `run.py`, this is the only module that knows every piece; each piece is reached through its
registry, so new tasks, distillers, losses and trackers plug in without edits here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.cache import Cache, stable_hash
from brewlab.config import teacher_source
from brewlab.errors import BrewlabError
from brewlab.files import atomic_open, publish_dir, write_json_atomic, write_jsonl
from brewlab.parallel import main_first
from brewlab.runtime import Runtime
from brewlab.schema import keyed

log = logging.getLogger("brewlab")

TEACHER_META = "brewlab_teacher.json"
PREDICTIONS = "predictions"  # <run>/predictions/[<task>/]<teacher|student|labels_only>/<split>.jsonl
HARD_ONLY = {"hard": {"kind": "hard", "weight": 1.0}}  # the objective of every labels-only stage


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (nlpaug and samplers draw from the first two), and on the CPU
    ask torch for deterministic kernels (a warning, not an error, where an op has none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if not torch.cuda.is_available():  # free on the CPU; on a GPU it would cost speed
        torch.use_deterministic_algorithms(True, warn_only=True)


_HEAP_TRIMMER: list[threading.Thread] = []


def keep_heap_compact(every_s: float | None) -> bool:
    """Every `every_s` seconds hand the allocator's free pages back to the OS (glibc
    `malloc_trim`), from a daemon thread so the training loop is untouched. Dynamic padding
    allocates tensors of ever-changing sizes and glibc keeps the freed holes between live blocks
    resident: over two epochs of the default run that was ~150 MB, enough to put peak RSS above
    a pad-to-max loop's (`scripts/bench.py`). False where the C library is not glibc or
    `every_s` is null; the thread is started once per process."""
    if every_s is None:
        return False
    if _HEAP_TRIMMER:
        return True
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]

    def loop() -> None:
        while True:
            time.sleep(every_s)
            trim(0)  # ctypes drops the GIL for the call

    _HEAP_TRIMMER.append(threading.Thread(target=loop, name="brewlab-heap-trim", daemon=True))
    _HEAP_TRIMMER[0].start()
    return True


@dataclass
class Prepared:
    """A task ready for models: tokenizer and encoded splits."""

    kind: Any
    label_names: list[str]
    tokenizer: Any
    features: dict[str, list[dict[str, Any]]]
    rows: dict[str, list[dict[str, Any]]]
    sizes: dict[str, int]
    tokenizer_id: str
    data_id: str = ""  # hash of the rows, task settings, tokenizer and encoding code


# ----------------------------------------------------------------------------- data


def prepare_task(
    cfg: Mapping[str, Any],
    cache: Cache,
    tokenizer_from: str | None = None,
    vocab_tasks: Sequence[Mapping[str, Any]] | None = None,
) -> Prepared:
    """Read and encode the task. The tokenizer is the one saved with `tokenizer_from` (a model
    the teacher starts from), else a character vocabulary built from the training split (of
    every task in `vocab_tasks`, so tasks that share a student share its vocabulary)."""
    from brewlab.models import load_tokenizer
    from brewlab.tasks import KINDS, load_task_data
    from brewlab.vocab import build_char_tokenizer

    task_cfg = cfg["task"]
    kind = KINDS.get(task_cfg["kind"], "task.kind")
    data = load_task_data(task_cfg)
    for split, n in data.sizes().items():
        if n == 0:
            raise BrewlabError(f"task {task_cfg['name']}: the {split} split is empty")
    log.info("task %s: %s", task_cfg["name"], data.sizes())
    if tokenizer_from is not None:
        tokenizer = load_tokenizer(tokenizer_from)
    else:
        texts: list[str] = []
        others = {t["name"]: t for t in vocab_tasks or ()} | {task_cfg["name"]: task_cfg}
        tok_cfg = others[min(others)].get("tokenizer") or {}  # a shared vocabulary follows its first task's settings
        for name in sorted(others):  # one order whichever task asks, so the vocabularies are equal
            t_kind = KINDS.get(others[name]["kind"], "task.kind")
            rows = data.splits["train"] if name == task_cfg["name"] else load_task_data(others[name]).splits["train"]
            texts += [t for row in rows for t in t_kind.texts(row)]
        key = stable_hash({"texts": stable_hash(texts, 24), "tok": tok_cfg})
        tok_dir = cache.entry("tokenizers", "+".join(sorted(others)), key)
        if (tok_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(str(tok_dir), "tokenizer cache")
        else:
            tokenizer = build_char_tokenizer(texts, int(tok_cfg.get("min_freq", 1)), tok_cfg.get("max_size"))
            build = cache.build_dir(tok_dir)
            tokenizer.save_pretrained(str(build))
            publish_dir(build, tok_dir)
    tokenizer_id = stable_hash(tokenizer.get_vocab())
    features, data_id = encode_cached(kind, data.splits, tokenizer, task_cfg, cache)
    return Prepared(kind, data.label_names, tokenizer, features, data.splits, data.sizes(), tokenizer_id, data_id)


def encode_cached(
    kind: Any, splits: Mapping[str, list[dict[str, Any]]], tokenizer: Any, task_cfg: Mapping[str, Any], cache: Cache
) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Encoded splits and their key, read from the cache when this data set was tokenised before.

    Keyed by the rows themselves, the task settings, the whole tokenizer, the source of the task
    kinds and the transformers version, so a change to any of them re-encodes. An unreadable entry (a kill
    while writing, a full disk) is reported in one line and rebuilt.
    """
    import pickle
    import sys

    import transformers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    tasks_dir = Path(sys.modules[kind.__module__].__file__).parent  # the kinds and their shared helpers
    source = b"".join(f.read_bytes() for f in sorted(tasks_dir.glob("*.py"))) + transformers.__version__.encode()
    key = stable_hash(
        {
            "rows": stable_hash(splits, 24),
            "task": task_cfg,
            "tokenizer": [type(tokenizer).__name__, backend.to_str() if backend else tokenizer.get_vocab()],
            "code": hashlib.sha256(source).hexdigest(),
        }
    )
    path = cache.entry("features", task_cfg["name"], key, ".pkl")
    if path.is_file():
        try:
            with path.open("rb") as fh:
                return pickle.load(fh), key
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            log.warning("encoded data cache %s is unreadable (%s): encoding again", path, exc)
    features = {split: kind.encode(rows, tokenizer, task_cfg) for split, rows in splits.items()}
    with atomic_open(path, "wb") as fh:
        pickle.dump(features, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return features, key


# ----------------------------------------------------------------------------- evaluation


def predict(
    adaptor: Any, features: Sequence[dict[str, Any]], batch_size: int, pad_id: int, device: torch.device
) -> tuple[np.ndarray, float]:
    """Logits for every example in input order, and the wall time spent in the model."""
    from brewlab.data import make_loader

    loader = make_loader(features, batch_size, pad_id, seed=0, train=False)
    adaptor.model.eval()
    rows: dict[int, np.ndarray] = {}
    seconds = 0.0
    compact = getattr(adaptor.kind, "compact", None)  # kinds with huge logits keep only what `score` reads
    with torch.inference_mode():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            start = time.perf_counter()
            logits = adaptor(batch).logits
            seconds += time.perf_counter() - start
            if compact is not None:
                logits = compact(logits, batch)
            for i, k in enumerate(batch["idx"].tolist()):
                rows[k] = logits[i].float().cpu().numpy()
    return [rows[i] for i in range(len(features))], seconds


def evaluate(
    adaptor: Any, prep: Prepared, split: str, batch_size: int, device: torch.device, records_to: Path | None = None
) -> dict[str, float]:
    """The split's scores; with `records_to`, its per-example predictions go there as JSON lines."""
    feats = prep.features[split]
    logits, seconds = predict(adaptor, feats, batch_size, prep.tokenizer.pad_token_id, device)
    metrics = prep.kind.score(logits, feats, prep.rows[split], prep.label_names)
    if records_to is not None:
        write_jsonl(prep.kind.records(logits, feats, prep.rows[split], prep.label_names), records_to)
    metrics["examples_per_second"] = len(prep.rows[split]) / max(seconds, 1e-9)
    return metrics


# ----------------------------------------------------------------------------- models


def build_distiller(
    name: str,
    cfg: Mapping[str, Any],
    student_model: Any,
    teacher_models: Sequence[Any] | None,
    prep: Prepared,
    loss_cfg: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    tracker: Any,
    inputs_repeat: bool = True,
):
    """The named distiller over adaptors of the models; a many-teacher distiller gets its
    teachers as one `TeacherEnsemble` (combined as `distiller.combine`/`weights` say).
    `inputs_repeat=False` (online augmentation: new inputs every epoch) keeps no teacher logits."""
    from hydra.utils import instantiate

    from brewlab.adaptors import ADAPTORS, TeacherEnsemble
    from brewlab.distillers import DISTILLERS, build_projections, parse_objective
    from brewlab.schedulers import build_schedules

    distiller_cls = DISTILLERS.get(name, "distiller")
    adaptor_cls = ADAPTORS.get("hf")
    student = adaptor_cls(student_model, prep.kind)
    teacher = None
    if distiller_cls.uses_teacher and teacher_models:
        views = [adaptor_cls(model, prep.kind) for model in teacher_models]
        d_cfg = cfg["distiller"]
        many = distiller_cls.many_teachers
        teacher = TeacherEnsemble(views, d_cfg["combine"], d_cfg.get("weights")) if many else views[0]
    objective = parse_objective(loss_cfg, teacher, student)
    # with the data read, every task's class count is known (an MLM's vocabulary too): the
    # temperature's bound is checked again before any KD step, where a temperature is used
    task_cfg = cfg.get("task") or {}  # harnesses may build a distiller from a partial config
    classes = prep.kind.logit_classes(task_cfg, prep.label_names, len(prep.tokenizer)) if teacher else None
    projections = build_projections(objective.matches, teacher, student) if teacher else None
    return distiller_cls(
        student=student,
        objective=objective,
        schedules=build_schedules(cfg["scheduler"], classes, f"task {task_cfg.get('name', '?')}"),
        trainer_cfg=trainer_cfg,
        make_optimizer=instantiate(cfg["optim"], _partial_=True),
        kind=prep.kind,
        teacher=teacher,
        projections=projections,
        log=tracker.log,
        inputs_repeat=inputs_repeat,
    )


class DeviceLoader:
    """Moves each batch to the training device as it is drawn."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        from brewlab.data import set_epoch

        set_epoch(self.loader, epoch)

    def __iter__(self):
        return (
            {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in self.loader
        )


def train_loop(
    distiller: Any,
    prep: Prepared,
    trainer_cfg: Mapping[str, Any],
    seed: int,
    rt: Runtime,
    batches: Any | None = None,
    checkpoints: Any | None = None,
    parallel: bool = False,
):
    """Fit on `batches` (CPU batches with a length), by default the task's training split
    (split across ranks when `parallel`: the student's stage under torchrun)."""
    loader = batches
    if loader is None:
        shard = rt.shard if parallel else (0, 1)
        loader = train_loader(prep.features["train"], trainer_cfg, prep.tokenizer.pad_token_id, seed, shard)
    eval_bs = int(trainer_cfg["eval_batch_size"])
    return distiller.fit(
        DeviceLoader(loader, rt.device),
        evaluate=lambda: evaluate(distiller.student, prep, "validation", eval_bs, rt.device),
        main_metric=prep.kind.main_metric,
        progress=rt.progress,
        checkpoints=checkpoints,
        parallel=parallel,
    )


def train_loader(
    features: Any, trainer_cfg: Mapping[str, Any], pad_token_id: int, seed: int, shard: tuple[int, int] = (0, 1)
) -> Any:
    """Length-grouped training batches (`length_pool` batches per sorted pool), this rank's share
    of each (`shard`: rank, world size); the same for the student and for a teacher's stages."""
    from brewlab.data import make_loader

    bs, pool = int(trainer_cfg["batch_size"]), int(trainer_cfg["length_pool"])
    return make_loader(features, bs, pad_token_id, seed, True, shard=shard, pool=pool)


def _unlabelled(feature: dict[str, Any]) -> dict[str, Any]:
    """An augmented feature keeps no gold label (-100 everywhere), so the hard-label loss skips it."""
    labels = feature["labels"]
    return {**feature, "labels": [-100] * len(labels) if isinstance(labels, (list, tuple)) else -100}


def augmented_training(cfg: Mapping[str, Any], prep: Prepared, rt: Runtime) -> tuple[Any, dict[str, Any]] | None:
    """The student's training batches: the task's examples plus `augmentation.copies` augmented
    copies of each (labelled by the teacher through the KD losses), and a description for
    metrics.json; None without augmentation. Offline copies are made once and cached on disk,
    keyed by the training rows and the augmentation config; online ones are remade each epoch."""
    from brewlab import augment
    from brewlab.data import FreshEachEpoch

    aug_cfg = cfg["augmentation"]
    ops = augment.ops_of(aug_cfg)
    if not ops:
        return None
    kind, rows, task_cfg = prep.kind, prep.rows["train"], cfg["task"]
    texts = [t for row in rows for t in kind.augment_texts(row) if t]
    language = aug_cfg.get("language", "auto")
    language = augment.detect_language(texts) if language == "auto" else language
    augment.check_language(aug_cfg, language)  # before any masked LM is loaded or pretrained
    models = {
        name: op.get("model_name_or_path") or teacher_base({**cfg, "teacher": op["masked_lm"]}, rt)
        for name, op in ops.items()
        if op["kind"] == "mlm"
    }
    fn = augment.build(aug_cfg, augment.vocabulary(texts, language), models)
    copies, seed = int(aug_cfg["copies"]), int(aug_cfg["seed"])
    started = time.perf_counter()

    def mixed(augmented_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        extra = [_unlabelled(f) for f in kind.encode(augmented_rows, prep.tokenizer, task_cfg)]
        return [{**f, "idx": i} for i, f in enumerate([*prep.features["train"], *extra])]

    bs, pad = int(cfg["trainer"]["batch_size"]), prep.tokenizer.pad_token_id
    info = {"ops": sorted(ops), "mode": aug_cfg["mode"], "copies": copies, "rate": aug_cfg["rate"], "language": language}
    if aug_cfg["mode"] == "online":
        batches = FreshEachEpoch(
            lambda epoch: mixed(augment.augment_rows(rows, kind, fn, copies, seed * 1_000_003 + epoch)),
            bs,
            pad,
            int(cfg["seed"]),  # batch order follows the run's seed, as without augmentation
            pool=int(cfg["trainer"]["length_pool"]),
        )
        info["features"] = len(batches.first)
    else:
        from importlib.metadata import version

        stamp = {
            "rows": stable_hash(rows, 24),
            "augmentation": aug_cfg,
            "models": {name: [path, _weights_stamp(path)] for name, path in models.items()},
            "language": language,
            "code": [augment.VERSION, version("nlpaug"), version("jieba")],
        }
        key = rt.cache.key(stamp)
        path = rt.cache.entry("augmented", task_cfg["name"], key, ".jsonl")
        if path.is_file():
            with open(path, encoding="utf-8") as fh:  # iterate on "\n" only: texts may hold U+2028 and kin
                augmented = [json.loads(line) for line in fh]
            log.info("augmentation: reused cache %s (%d examples)", path, len(augmented))
        else:
            augmented = augment.augment_rows(rows, kind, fn, copies, seed)
            write_jsonl(augmented, path)
            log.info("augmentation: %d examples written to %s", len(augmented), path)
        features = mixed(augmented)
        batches = train_loader(features, cfg["trainer"], pad, int(cfg["seed"]), rt.shard)
        info.update(features=len(features), cache=str(path))
    info.update(original_examples=len(rows), augmented_examples=copies * len(rows))
    info["seconds"] = time.perf_counter() - started
    log.info("augmentation %s: %d original + %d augmented examples", "+".join(sorted(ops)), len(rows), copies * len(rows))
    return batches, info


def _weights_stamp(path: str) -> list[Any]:
    """Size and time of a local model's weight files, so retrained weights at the same path
    make new augmented data; empty for hub ids."""
    from brewlab.models import WEIGHT_FILES, is_local_model_dir

    if not is_local_model_dir(path):
        return []
    files = [Path(path).expanduser() / name for name in WEIGHT_FILES]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def teacher_base(cfg: Mapping[str, Any], rt: Runtime) -> str | None:
    """The model a teacher starts from (and whose tokenizer the run uses): a hub id or directory
    for `hf`, the cached masked LM for `pretrained_scratch` (pretrained first if missing), or
    None for `scratch`."""
    t_cfg = cfg["teacher"]
    if t_cfg["kind"] == "hf":
        return teacher_source(t_cfg)
    if t_cfg["kind"] != "pretrained_scratch":
        return None
    from brewlab.models import build_scratch

    p_cfg = t_cfg["pretrain"]
    key = rt.cache.key(keyed({"arch": t_cfg["arch"], "pretrain": p_cfg}))
    directory = rt.cache.entry("pretrained", p_cfg["task"]["name"], key)
    if (directory / TEACHER_META).is_file():
        log.info("pretrained masked LM: reused cache %s", directory)
        return str(directory)
    stage = {**cfg, "task": p_cfg["task"]}
    prep = prepare_task(stage, rt.cache)
    log.info("pretraining a masked LM on %s %s (cache key %s)", p_cfg["task"]["name"], prep.sizes, key)
    train_cfg = {**p_cfg["train"], "seed": stage_seed(p_cfg["train"], t_cfg)}
    torch.manual_seed(train_cfg["seed"])
    model = build_scratch(t_cfg["arch"], prep.tokenizer, prep.kind, prep.kind.num_labels(prep.label_names)).to(rt.device)
    _train_and_cache(stage, model, prep, train_cfg, directory, key, rt.with_tracker(_Prefixed(rt.tracker, "pretrain/")))
    return str(directory)


def stage_seed(train_cfg: Mapping[str, Any], t_cfg: Mapping[str, Any]) -> int:
    """A teacher stage's seed: its own `train.seed`, else the teacher's."""
    return int(t_cfg["seed"] if train_cfg["seed"] is None else train_cfg["seed"])


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


def get_teachers(
    cfg: Mapping[str, Any], prep: Prepared, base: str | None, attn: str, rt: Runtime
) -> list[tuple[Any, str, Path | None, dict[str, Any]]]:
    """(model, source, cache entry, config) of the run's teacher, or of each `distiller.teachers`
    entry; every teacher must read the run's tokenizer."""
    from brewlab.models import load_tokenizer

    configs = teacher_configs(cfg)
    if configs is None:
        return [(*get_teacher(cfg, prep, base, attn, rt), cfg["teacher"])]
    out = []
    for i, t_cfg in enumerate(configs):
        stage = {**cfg, "teacher": t_cfg}
        t_base = teacher_base(stage, rt)
        key = f"distiller.teachers[{i}]"
        if t_base not in (None, base) and stable_hash(load_tokenizer(t_base, key).get_vocab()) != prep.tokenizer_id:
            raise BrewlabError(
                f"{key}={t_base!r} uses another vocabulary than the run's tokenizer (from teacher={cfg['teacher']['name']}); "
                "every teacher must share it"
            )
        out.append((*get_teacher(stage, prep, t_base, attn, rt, f"teacher{i}/"), t_cfg))
    return out


def get_teacher(
    cfg: Mapping[str, Any],
    prep: Prepared,
    base: str | None,
    attn: str,
    rt: Runtime,
    prefix: str = "teacher/",
) -> tuple[Any, str, Path | None]:
    """The teacher model, where it came from ('loaded', 'cache', 'trained') and its cache entry.

    A teacher with `finetune: true` (always for `scratch`) is trained on the task with the
    `trainer` distiller, starting from `base`, and cached by everything that shapes it."""
    from brewlab.models import build_scratch, load_pretrained, set_attention

    t_cfg = cfg["teacher"]
    num_labels = prep.kind.num_labels(prep.label_names)
    finetune = t_cfg["kind"] == "scratch" or bool(t_cfg.get("finetune", False))
    if base is not None and not finetune:
        model = load_pretrained(base, prep.kind, num_labels, attn)
        if model.config.vocab_size < len(prep.tokenizer):
            raise BrewlabError(
                f"teacher.name_or_path={base!r}: vocabulary {model.config.vocab_size} "
                f"is smaller than its tokenizer ({len(prep.tokenizer)})"
            )
        return model.to(rt.device).eval(), "loaded", None
    key = rt.cache.key(
        {
            "teacher": teacher_identity(t_cfg),
            "task": cfg["task"],  # everything that shapes the data
            "tokenizer": prep.tokenizer_id,
            "init": "teacher-seed",  # weights are initialised from teacher.seed, not the run's seed
        }
    )
    directory = rt.cache.entry("teachers", cfg["task"]["name"], key)
    if (directory / TEACHER_META).is_file():
        try:
            model = load_pretrained(str(directory), prep.kind, num_labels, attn, key="teacher cache")
        except Exception as exc:  # noqa: BLE001 - damaged after it was published (any reader's error type)
            log.warning("teacher cache %s is unreadable (%s): training it again", directory, str(exc).splitlines()[0])
        else:
            log.info("teacher: reused cache %s", directory)
            return model.to(rt.device).eval(), "cache", directory
    log.info("teacher: training %s (cache key %s)", f"from {base}" if base else "from scratch", key)
    torch.manual_seed(int(t_cfg["seed"]))
    if base is None:
        model = build_scratch(t_cfg["arch"], prep.tokenizer, prep.kind, num_labels)
    else:
        model = load_pretrained(base, prep.kind, num_labels, key="teacher base", new_head=True)
    model = model.to(rt.device)
    train_cfg = {**t_cfg["train"], "seed": stage_seed(t_cfg["train"], t_cfg)}
    _train_and_cache(cfg, model, prep, train_cfg, directory, key, rt.with_tracker(_Prefixed(rt.tracker, prefix)))
    set_attention(model, attn)
    return model.eval(), "trained", directory


def paired_difference(ours: Path, reference: Path, split: str = "test") -> dict[str, float]:
    """Test-metric difference of two models of one run with its paired-bootstrap interval and p
    (`brewlab.significance`, over the test examples; one seed, so no seed spread is in it)."""
    from brewlab.significance import compare, read_records

    (c,) = compare([[read_records(ours / f"{split}.jsonl")]], [read_records(reference / f"{split}.jsonl")])
    return {"difference": c.difference, "low": c.low, "high": c.high, "p": c.p}


def labels_only_student(
    cfg: Mapping[str, Any],
    prep: Prepared,
    teacher: Any,
    attn: str,
    trainer_cfg: Mapping[str, Any],
    seed: int,
    rt: Runtime,
) -> tuple[Any, Any]:
    """The same student (architecture, seed, data order, trainer settings) trained on labels
    only: the row that distillation has to beat, made in the same run (`baselines.labels_only`)."""
    log.info("labels_only: training the same student on labels only")
    seed_everything(seed)
    model = build_student(cfg, prep, teacher, attn, rt.device)
    distiller = build_distiller("trainer", cfg, model, None, prep, HARD_ONLY, trainer_cfg, _Prefixed(rt.tracker, "labels_only/"))
    return model, train_loop(distiller, prep, trainer_cfg, seed, rt, parallel=rt.data_parallel)


def teacher_identity(t_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher settings its cache entry is keyed by: not its name or licence notice, and not
    the package keys that a preset leaves unset (so hub and local teachers keep their keys)."""
    unset_ok = ("package", "checksums")
    return keyed(
        {k: v for k, v in t_cfg.items() if k not in ("name", "notice") and not (k in unset_ok and v is None)}
    )


def _train_and_cache(
    cfg: Mapping[str, Any],
    model: Any,
    prep: Prepared,
    train_cfg: Mapping[str, Any],
    directory: Path,
    key: str,
    rt: Runtime,
) -> None:
    """Train `model` on the task's labels and publish it (with its tokenizer) to `directory`,
    written aside and renamed into place so an interrupted run never leaves a half cache.

    The stage checkpoints like the student's (every `trainer.checkpoint_every` steps and after
    each evaluation) into the cache, keyed like the entry, so a killed run, or any later run
    that needs the same entry, continues it instead of starting over."""
    from brewlab.checkpoint import CheckpointStore
    from brewlab.models import save_model

    lr = cfg["optim"]["lr"] if train_cfg["lr"] is None else train_cfg["lr"]
    stage_cfg = {**cfg, "optim": {**cfg["optim"], "lr": lr}}
    loop_cfg = {**train_cfg, "checkpoint_every": cfg["trainer"]["checkpoint_every"]}
    distiller = build_distiller("trainer", stage_cfg, model, None, prep, HARD_ONLY, loop_cfg, rt.tracker)
    store = CheckpointStore(
        rt.cache.checkpoints_of(directory), stable_hash([key, prep.data_id]), keep=int(cfg["trainer"]["checkpoints_kept"])
    )
    if cfg["resume"] is False:
        store.clear()
    result = train_loop(distiller, prep, loop_cfg, int(train_cfg["seed"]), rt, checkpoints=store)
    build = rt.cache.build_dir(directory)
    save_model(model, prep.tokenizer, build)
    write_json_atomic(
        build / TEACHER_META,
        {
            "key": key,
            "task": prep.sizes,
            "best_dev": result.best_metric,
            "dev": result.history[-1] if result.history else {},
            "train_seconds": result.train_seconds,
            "steps": result.steps,
        },
    )
    publish_dir(build, directory)
    shutil.rmtree(store.directory, ignore_errors=True)
    log.info("cached %s (best dev %s=%.4g, %d steps)", directory, prep.kind.main_metric, result.best_metric, result.steps)


class _Prefixed:
    """Sends teacher-training metrics to the run's tracker under their own prefix."""

    def __init__(self, tracker: Any, prefix: str) -> None:
        self.tracker, self.prefix = tracker, prefix

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.tracker.log({self.prefix + k: v for k, v in metrics.items()}, step)


def build_student(cfg: Mapping[str, Any], prep: Prepared, teacher: Any, attn: str, device: torch.device):
    """A random student of `student.arch`, or one initialised from a saved model
    (`student.init_from`, e.g. a general-distilled student) or from teacher layers."""
    from brewlab.models import build_bigru, build_scratch, init_from_teacher_layers, load_pretrained

    s_cfg = cfg["student"]
    num_labels = prep.kind.num_labels(prep.label_names)
    vocab = s_cfg.get("vocab_size")
    if vocab is not None and int(vocab) != len(prep.tokenizer):
        raise BrewlabError(
            f"student.vocab_size={vocab} does not match the task's tokenizer ({len(prep.tokenizer)} tokens); "
            "leave it null to take the tokenizer's size"
        )
    init_from = s_cfg.get("init_from")
    if init_from:
        model = load_pretrained(init_from, prep.kind, num_labels, attn, key="student.init_from", new_head=True)
    elif s_cfg.get("kind", "bert") == "bigru":
        model = build_bigru(s_cfg["arch"], prep.tokenizer, prep.kind, num_labels)
    else:
        model = build_scratch(s_cfg["arch"], prep.tokenizer, prep.kind, num_labels, attn)
    if s_cfg.get("init_from_teacher_layers"):
        init_from_teacher_layers(model, teacher, [int(i) for i in s_cfg["init_from_teacher_layers"]])
    return model.to(device)


def check_student_init(cfg: Mapping[str, Any], prep: Prepared) -> None:
    """A student initialised from a saved model must share the run's vocabulary; checked
    before any teacher is trained."""
    from brewlab.models import load_tokenizer

    init_from = cfg["student"].get("init_from")
    if init_from and stable_hash(load_tokenizer(init_from, "student.init_from").get_vocab()) != prep.tokenizer_id:
        raise BrewlabError(
            f"student.init_from={init_from!r} was trained with another vocabulary than this run's tokenizer; "
            "use the teacher it was distilled from (e.g. the same teacher=pretrained_scratch settings)"
        )


# ----------------------------------------------------------------------------- resuming

# config keys that do not change what a run computes (a resume may change them)
NOT_TRAINING = ("logger", "resume", "study", "cache_dir")
NOT_TRAINING_TRAINER = ("progress", "checkpoint_every", "checkpoints_kept", "log_every", "nonfinite", "heap_trim_every_s")


def run_fingerprint(cfg: Mapping[str, Any]) -> str:
    """Hash of everything that shapes a run's results: a checkpoint or a finished run counts as
    this run's only when it matches."""
    kept = {k: v for k, v in cfg.items() if k not in NOT_TRAINING}
    kept["trainer"] = {k: v for k, v in cfg["trainer"].items() if k not in NOT_TRAINING_TRAINER}
    if not any((cfg.get("baselines") or {}).values()):  # runs without baselines keep their earlier fingerprint
        kept.pop("baselines", None)
    return Cache(cfg["cache_dir"]).key(keyed(kept))  # paths inside the cache count relative to it


def checkpoint_store(cfg: Mapping[str, Any], run_dir: Path, preps: Sequence[Prepared], rt: Runtime) -> Any | None:
    """The run directory's checkpoints (none under torchrun, whose ranks share no directory),
    tied to the config and to the encoded data (`preps`), whose cached teacher logits they hold."""
    from brewlab.checkpoint import CheckpointStore

    if rt.data_parallel:
        return None
    fingerprint = stable_hash([run_fingerprint(cfg), *(p.data_id for p in preps)])
    store = CheckpointStore(run_dir / "checkpoints", fingerprint, keep=int(cfg["trainer"]["checkpoints_kept"]))
    if cfg.get("resume", "auto") is False:
        store.clear()  # resume=false: this directory starts over
    return store


def finished_run(cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of this very run when it already finished here (a re-run sweep skips it)."""
    path = run_dir / "metrics.json"
    if cfg.get("resume", "auto") is False or not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): running again", path, exc)
        return None
    return metrics if metrics.get("fingerprint") == run_fingerprint(cfg) else None


# ----------------------------------------------------------------------------- the run


def measure(
    view: Any, prep: Prepared, eval_bs: int, device: torch.device, predictions: Path | None = None
) -> dict[str, Any]:
    """Validation and test scores, parameter counts and inference speed of one adaptor; with
    `predictions`, its per-example predictions of each split in `<predictions>/<split>.jsonl`."""
    from brewlab.models import count_parameters

    entry: dict[str, Any] = {
        split: evaluate(view, prep, split, eval_bs, device, predictions / f"{split}.jsonl" if predictions else None)
        for split in ("validation", "test")
    }
    entry["parameters"] = count_parameters(view.model)
    entry["examples_per_second"] = entry["test"]["examples_per_second"]
    return entry


def teacher_metrics(
    teachers: Sequence[tuple[Any, str, Path | None, dict[str, Any]]],
    used: Any,
    prep: Prepared,
    base: str | None,
    eval_bs: int,
    device: torch.device,
    predictions: Path | None = None,
) -> dict[str, Any]:
    """`teacher` (what the student learnt from: one model or the ensemble) and, for several
    teachers, `teachers` (each member), with how each cached stage was made. The predictions of
    the one the student learnt from go to `<predictions>/teacher/`."""
    from brewlab.adaptors import ADAPTORS, TeacherEnsemble

    adaptor = ADAPTORS.get("hf")
    members = []
    single = predictions / "teacher" if predictions and not isinstance(used, TeacherEnsemble) else None
    for model, source, directory, t_cfg in teachers:
        entry = measure(adaptor(model, prep.kind), prep, eval_bs, device, single) | {"source": source}
        pretrained = base if t_cfg["kind"] == "pretrained_scratch" else None
        for stage, stage_dir in (("training", directory), ("pretraining", pretrained)):
            meta = Path(stage_dir) / TEACHER_META if stage_dir else None
            if meta is not None and meta.is_file():  # how the cached stage was made (time, steps, dev score)
                entry[stage] = json.loads(meta.read_text(encoding="utf-8"))
        members.append(entry)
    if isinstance(used, TeacherEnsemble):
        ensemble = measure(used, prep, eval_bs, device, predictions and predictions / "teacher")
        ensemble |= {"source": "ensemble", "members": len(members)}
        return {"teacher": ensemble, "teachers": members}
    return {"teacher": members[0]}


def _sdpa_again(attn: str, models: Sequence[Any]) -> None:
    """Attention maps were only needed by the losses: measure and save with sdpa."""
    from brewlab.models import set_attention

    if attn != "sdpa":
        for model in models:
            set_attention(model, "sdpa")


def _attention(cfg: Mapping[str, Any]) -> str:
    return "eager" if any(t.get("feature") == "attention" for t in cfg["loss"].values()) else "sdpa"


def run(cfg: Mapping[str, Any], run_dir: Path, rt: Runtime) -> dict[str, Any]:
    """Execute one composed run; returns the metrics written to metrics.json."""
    from transformers.utils import logging as hf_logging

    from brewlab.adaptors import ADAPTORS
    from brewlab.distillers import DISTILLERS
    from brewlab.models import save_model

    hf_logging.disable_progress_bar()  # our own bar shows the training loss; no per-file bars
    if cfg["teacher"].get("notice"):  # e.g. a licence restriction: once in every run's log
        log.warning("teacher %s: %s", cfg["teacher"].get("name_or_path") or cfg["teacher"].get("kind"), cfg["teacher"]["notice"])
    name = cfg["distiller"]["name"]
    if DISTILLERS.get(name).many_tasks:
        return run_multi_task(cfg, run_dir, rt)
    device, seed = rt.device, int(cfg["seed"])
    with main_first():  # under torchrun, rank 0 fills the caches the other ranks then read
        base = teacher_base(cfg, rt)
        prep = prepare_task(cfg, rt.cache, tokenizer_from=base)
        check_student_init(cfg, prep)
        attn = _attention(cfg)
        augmented = augmented_training(cfg, prep, rt)  # its errors come before teacher work
        teachers = get_teachers(cfg, prep, base, attn, rt)
    teacher_models = [t[0] for t in teachers]

    trainer_cfg = cfg["trainer"]
    repeat = augmented is None or augmented[1]["mode"] != "online"  # online: new inputs every epoch
    seed_everything(seed)
    student = build_student(cfg, prep, teacher_models[0], attn, device)
    # a compiled student trains faster; it shares its parameters with `student`, which is saved
    trained = torch.compile(student) if trainer_cfg["compile"] else student
    distiller = build_distiller(name, cfg, trained, teacher_models, prep, cfg["loss"], trainer_cfg, rt.tracker, repeat)
    checkpoints = checkpoint_store(cfg, run_dir, [prep], rt)
    log.info("student: training with distiller=%s loss=%s", name, "+".join(sorted(cfg["loss"])))
    result = train_loop(distiller, prep, trainer_cfg, seed, rt, augmented and augmented[0], checkpoints, parallel=rt.data_parallel)
    wanted = cfg["baselines"]
    plain = None
    if wanted["labels_only"]:  # every rank trains it, as it trains the student
        plain = labels_only_student(cfg, prep, teacher_models[0], attn, trainer_cfg, seed, rt)
    if rt.rank != 0:  # the other data-parallel ranks hold the same student: rank 0 measures and saves
        return {}
    _sdpa_again(attn, [*teacher_models, student])
    log.info("evaluating the teacher and the student on validation and test")

    eval_bs = int(cfg["trainer"]["eval_batch_size"])
    metrics: dict[str, Any] = {
        "task": {"name": cfg["task"]["name"], "main_metric": prep.kind.main_metric, "sizes": prep.sizes},
        "distiller": name,
        "loss": sorted(cfg["loss"]),
        "seed": seed,
        "study": cfg.get("study"),
        "fingerprint": run_fingerprint(cfg),
    }
    if augmented is not None:
        metrics["augmentation"] = augmented[1]
    describe = getattr(prep.kind, "describe", None)  # e.g. entity counts per split for NER
    if describe is not None:
        metrics["task"].update(describe(prep.rows, prep.label_names))
    predictions = run_dir / PREDICTIONS
    metrics.update(teacher_metrics(teachers, distiller.teacher, prep, base, eval_bs, device, predictions))
    student_view = ADAPTORS.get("hf")(student, prep.kind)
    metrics["student"] = measure(student_view, prep, eval_bs, device, predictions / "student")
    metrics["student"].update(
        train_seconds=result.train_seconds, steps=result.steps, best_step=result.best_step, final_losses=result.final_losses
    )
    if not DISTILLERS.get(name).uses_teacher:
        metrics["student"]["note"] = "trained on labels only"
    if plain is not None:
        model, plain_result = plain
        _sdpa_again(attn, [model])
        metrics["labels_only"] = measure(ADAPTORS.get("hf")(model, prep.kind), prep, eval_bs, device, predictions / "labels_only")
        metrics["labels_only"].update(
            train_seconds=plain_result.train_seconds, steps=plain_result.steps, best_step=plain_result.best_step,
            note="the same student, seed and training settings, on labels only",
            student_minus_labels_only=paired_difference(predictions / "student", predictions / "labels_only"),
        )
    if wanted["linear"]:
        from brewlab.baselines import linear_baseline

        metrics["linear_baseline"] = linear_baseline(cfg["task"], prep.rows, prep.label_names)

    build = Path(tempfile.mkdtemp(dir=run_dir, prefix=".student-"))
    save_model(student, prep.tokenizer, build, {"projections": distiller.projections})
    publish_dir(build, run_dir / "student")
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def run_multi_task(cfg: Mapping[str, Any], run_dir: Path, rt: Runtime) -> dict[str, Any]:
    """`distiller=multi_task`: each task of `distiller.tasks` gets its teacher(s) and a student
    head; the students share one encoder (and one vocabulary) and train together, drawing each
    batch's task by size^tau. Writes student/<task>/ per task and metrics for every task."""
    from hydra.utils import instantiate

    from brewlab.adaptors import ADAPTORS
    from brewlab.data import TaskMixture
    from brewlab.distillers import DISTILLERS
    from brewlab.models import count_parameters, save_model

    d_cfg = cfg["distiller"]
    device, seed = rt.device, int(cfg["seed"])
    attn = _attention(cfg)
    # tasks with a pooled (sentence) head first: their encoder carries the pooler the others ignore
    names = sorted(d_cfg["tasks"], key=lambda n: d_cfg["tasks"][n]["kind"] != "classification")
    stages = {n: {**cfg, "task": d_cfg["tasks"][n]} for n in names}
    vocab = [d_cfg["tasks"][n] for n in names]
    with main_first():
        base = teacher_base(cfg, rt)
        preps = {n: prepare_task(stages[n], rt.cache, tokenizer_from=base, vocab_tasks=vocab) for n in names}
        for n in names:
            check_student_init(stages[n], preps[n])
        teachers = {n: get_teachers(stages[n], preps[n], base, attn, rt) for n in names}
    seed_everything(seed)
    single = "multi_teacher" if d_cfg.get("teachers") else "general"
    trainer_cfg = cfg["trainer"]
    students: dict[str, Any] = {}
    parts = {}
    for n in names:
        model = build_student(stages[n], preps[n], teachers[n][0][0], attn, device)
        if students:  # share the first student's encoder
            first = next(iter(students.values()))
            setattr(model, model.base_model_prefix, getattr(first, first.base_model_prefix))
        students[n] = model
        models = [t[0] for t in teachers[n]]
        parts[n] = build_distiller(single, stages[n], model, models, preps[n], cfg["loss"], trainer_cfg, rt.tracker)
    distiller = DISTILLERS.get(d_cfg["name"])(parts, trainer_cfg, instantiate(cfg["optim"], _partial_=True), rt.tracker.log)
    loaders = {
        n: train_loader(preps[n].features["train"], trainer_cfg, preps[n].tokenizer.pad_token_id, seed, rt.shard) for n in names
    }
    sizes = {n: len(preps[n].features["train"]) for n in names}
    eval_bs = int(trainer_cfg["eval_batch_size"])

    def dev_scores() -> dict[str, float]:
        out = {}
        for n in names:
            main = preps[n].kind.main_metric
            out[f"{n}/{main}"] = evaluate(parts[n].student, preps[n], "validation", eval_bs, device)[main]
        out["score"] = float(np.mean(list(out.values())))
        return out

    result = distiller.fit(
        DeviceLoader(TaskMixture(loaders, sizes, float(d_cfg["tau"]), seed), device),
        evaluate=dev_scores,
        main_metric="score",
        progress=rt.progress,
        checkpoints=checkpoint_store(cfg, run_dir, list(preps.values()), rt),
        parallel=rt.data_parallel,
    )
    if rt.rank != 0:
        return {}
    _sdpa_again(attn, [*(t[0] for n in names for t in teachers[n]), *students.values()])

    per_task: dict[str, Any] = {}
    for n in names:
        prep = preps[n]
        entry = {"main_metric": prep.kind.main_metric, "sizes": prep.sizes}
        predictions = run_dir / PREDICTIONS / n
        entry.update(teacher_metrics(teachers[n], parts[n].teacher, prep, base, eval_bs, device, predictions))
        entry["student"] = measure(ADAPTORS.get("hf")(students[n], prep.kind), prep, eval_bs, device, predictions / "student")
        per_task[n] = entry

    def mean_of(role: str) -> dict[str, Any]:
        """The run-level row: mean main metric over tasks (what sweeps and reports compare)."""
        out: dict[str, Any] = {}
        for split in ("validation", "test"):
            scores = [per_task[n][role][split][per_task[n]["main_metric"]] for n in names]
            out[split] = {"score": float(np.mean(scores))}
        out["examples_per_second"] = float(np.mean([per_task[n][role]["examples_per_second"] for n in names]))
        return out

    teacher_row = mean_of("teacher")
    teacher_row["parameters"] = {
        k: sum(per_task[n]["teacher"]["parameters"][k] for n in names) for k in ("total", "non_embedding")
    }
    student_row = mean_of("student")
    student_row["parameters"] = count_parameters(distiller.students)  # the shared encoder counted once
    student_row.update(
        train_seconds=result.train_seconds, steps=result.steps, best_step=result.best_step, final_losses=result.final_losses
    )
    metrics = {
        "task": {"name": "+".join(names), "main_metric": "score", "tasks": names, "tau": d_cfg["tau"]},
        "distiller": d_cfg["name"],
        "loss": sorted(cfg["loss"]),
        "seed": seed,
        "study": cfg.get("study"),
        "fingerprint": run_fingerprint(cfg),
        "tasks": per_task,
        "teacher": teacher_row,
        "student": student_row,
    }
    build = Path(tempfile.mkdtemp(dir=run_dir, prefix=".student-"))
    for n in names:
        save_model(students[n], preps[n].tokenizer, build / n, {"projections": parts[n].projections})
    publish_dir(build, run_dir / "student")
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def summary_table(metrics: Mapping[str, Any]) -> str:
    """Teacher vs student (and the baselines asked for): main metric, parameters and inference
    speed, as plain text."""
    main = metrics["task"]["main_metric"]
    width = 11 if "labels_only" in metrics else 8
    lines = [f"{'':{width}} {'dev ' + main:>14} {'test ' + main:>14} {'params':>12} {'non-emb':>10} {'ex/s':>9}"]
    named = [(f"teacher{i}", m) for i, m in enumerate(metrics.get("teachers", []))]
    ensemble = "ensemble" if "teachers" in metrics else "teacher"
    rows = [*named, (ensemble, metrics["teacher"]), ("student", metrics["student"])]
    if "labels_only" in metrics:
        rows.append(("labels only", metrics["labels_only"]))
    for role, m in rows:
        lines.append(
            f"{role:{width}} {100 * m['validation'][main]:14.2f} {100 * m['test'][main]:14.2f} "
            f"{m['parameters']['total']:12,d} {m['parameters']['non_embedding']:10,d} {m['examples_per_second']:9.0f}"
        )
    gap = (metrics.get("labels_only") or {}).get("student_minus_labels_only")
    if gap:
        lines.append(
            f"{'':{width}} student − labels only on test: {100 * gap['difference']:+.2f} points, 95% interval "
            f"[{100 * gap['low']:+.2f}, {100 * gap['high']:+.2f}], p = {gap['p']:.3f} (paired bootstrap over test examples, one seed)"
        )
    linear = metrics.get("linear_baseline")
    if linear and main in linear["test"]:
        lines.append(
            f"{'linear':{width}} {100 * linear['validation'][main]:14.2f} {100 * linear['test'][main]:14.2f}"
            f"   ({linear['method']}, {linear['seconds']:.0f} s)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- job entry


def import_plugins(modules: Any) -> None:
    """Import the user's `plugins` modules, whose registrations then exist for the whole run."""
    import importlib

    if modules is None:
        return
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise BrewlabError(f"plugins={modules!r} must be a list of module names, e.g. plugins=[my_losses]")
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure inside the user's module is reported as the user's
            raise BrewlabError(f"plugins: cannot import {name!r} ({type(exc).__name__}: {exc})") from None


def _interrupted_here(run_dir: Path) -> bool:
    """An earlier launch in this directory stopped before finishing (inside any stage, the
    teacher's included): its W&B run is continued rather than a second one started."""
    started = (run_dir / "wandb_run.json").is_file() and not (run_dir / "metrics.json").is_file()
    return started or any((run_dir / "checkpoints").glob("step-*.pt"))


def run_job(cfg: Any) -> float:
    """Hydra job: validate, track, run; user errors become one line and exit code 2.

    In a multirun a failed job records `error.txt` in its directory and returns NaN so the
    sweep goes on; the report lists it as failed.
    """
    import sys
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from brewlab.config import to_plain, validate
    from brewlab.tracking import make_tracker

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    tracker = None
    try:
        plain = to_plain(cfg)
        import_plugins(plain.get("plugins"))
        validate(plain)
        from brewlab.parallel import init

        rt = Runtime.of(plain, None)
        init(rt.device)
        done = None if rt.data_parallel else finished_run(plain, run_dir)
        if done is not None:
            print(summary_table(done))
            print(f"outputs: {run_dir} (this run had already finished here; resume=false runs it again)")
            return float(done["student"]["validation"][done["task"]["main_metric"]])
        study = plain.get("study")
        # one W&B group per sweep (its directory, e.g. ablation_losses/2026-11-29_03-00-00), so
        # repetitions of a configuration sit together and two sweeps of one study stay apart
        group = "/".join(Path(hc.sweep.dir).parts[-2:]) if multirun else study
        tracker = make_tracker(
            plain["logger"] if rt.rank == 0 else {"name": "none"},  # one W&B run and one set of outputs, from rank 0
            run_dir,
            plain,
            name=f"{hc.job.override_dirname or 'default'},seed={plain['seed']}",
            tags=list(hc.overrides.task) + ([f"study={study}"] if study else []),
            group=group,
            resume=plain["resume"] is not False and _interrupted_here(run_dir),
        )
        keep_heap_compact(plain["trainer"]["heap_trim_every_s"])
        seed_everything(int(plain["seed"]))
        rt = rt.with_tracker(tracker)
        metrics = run(plain, run_dir, rt)
        if rt.rank != 0:
            tracker.finish(0)
            return float("nan")
        tracker.summary(metrics)
        tracker.finish(0)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: metrics and student are written
        (run_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's failure, now resumed past
        print(summary_table(metrics))
        print(f"outputs: {run_dir}")
        return float(metrics["student"]["validation"][metrics["task"]["main_metric"]])
    except Exception as exc:  # a BrewlabError is the user's: one line; any other keeps its traceback
        if tracker is not None:
            tracker.finish(1)
        user_error = isinstance(exc, BrewlabError)
        line = f"brewlab: error: {exc}" if user_error else f"brewlab: {type(exc).__name__}: {exc}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(line + "\n\n" + traceback.format_exc(), encoding="utf-8")
        if multirun:
            log.error(line)
            return float("nan")
        if not user_error or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
