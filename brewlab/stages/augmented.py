"""The student's augmented training batches: the task's examples plus teacher-labelled copies,
cached on disk (offline) or remade every epoch (online)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

from brewlab.config.schema import AugmentationOptions, RunSettings, settings
from brewlab.core.cache import stable_hash
from brewlab.core.files import write_jsonl
from brewlab.data.augment.language import detect_language, vocabulary
from brewlab.data.augment.ops import AUGMENTERS, VERSION, augment_rows, build, check_language, ops_of
from brewlab.data.batching import FreshEachEpoch
from brewlab.data.prepare import Prepared, train_loader
from brewlab.models.build import WEIGHT_FILES, is_local_model_dir
from brewlab.stages.teachers import teacher_base
from brewlab.train.runtime import Runtime

log = logging.getLogger("brewlab")


class Augmented(NamedTuple):
    """The student's augmented training data."""

    batches: Any  # the training batches, remade each epoch when online
    info: dict[str, Any]  # its description in metrics.json
    features: list[dict[str, Any]] | None  # the encoded examples; None: they change every epoch


def augmented_training(cfg: Mapping[str, Any], run: RunSettings, prep: Prepared, rt: Runtime) -> Augmented | None:
    """The student's training batches: the task's examples plus `augmentation.copies` augmented
    copies of each (labelled by the teacher through the KD losses), a description for
    metrics.json and the encoded examples (None when they change every epoch); None without
    augmentation. Offline copies are made once and cached on disk, keyed by the training rows
    and the augmentation config; online ones are remade each epoch."""
    aug_cfg = cfg["augmentation"]
    ops = ops_of(aug_cfg)
    if not ops:
        return None
    kind, rows, task_cfg = prep.kind, prep.rows["train"], cfg["task"]
    texts = [t for row in rows for t in kind.augment_texts(row) if t]
    language = settings(aug_cfg, AugmentationOptions).language
    language = detect_language(texts) if language == "auto" else language
    check_language(aug_cfg, language)  # before any masked LM is loaded or pretrained
    models = {
        name: op.get("model_name_or_path") or teacher_base({**cfg, "teacher": op["masked_lm"]}, run, rt)
        for name, op in ops.items()
        if AUGMENTERS.props(op["kind"]).masked_lm
    }
    fn = build(aug_cfg, vocabulary(texts, language), models)
    copies, seed = int(aug_cfg["copies"]), int(aug_cfg["seed"])
    started = time.perf_counter()

    def mixed(augmented_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        extra = [_unlabelled(f) for f in kind.encode(augmented_rows, prep.tokenizer, task_cfg)]
        return [{**f, "idx": i} for i, f in enumerate([*prep.features["train"], *extra])]

    bs, pad = run.trainer.batch_size, prep.tokenizer.pad_token_id
    info = {"ops": sorted(ops), "mode": aug_cfg["mode"], "copies": copies, "rate": aug_cfg["rate"], "language": language}
    features = None
    if aug_cfg["mode"] == "online":
        batches = FreshEachEpoch(
            lambda epoch: mixed(augment_rows(rows, kind, fn, copies, seed * 1_000_003 + epoch)),
            bs,
            pad,
            run.seed,  # batch order follows the run's seed, as without augmentation
            pool=run.trainer.length_pool,
        )
        info["features"] = len(batches.first)
    else:
        stamp = {
            "rows": stable_hash(rows, 24),
            "augmentation": aug_cfg,
            "models": {name: [path, _weights_stamp(path)] for name, path in models.items()},
            "language": language,
            "code": [VERSION, version("nlpaug"), version("jieba")],
        }
        key = rt.cache.key(stamp)
        path = rt.cache.entry("augmented", task_cfg["name"], key, ".jsonl")
        if path.is_file():
            with open(path, encoding="utf-8") as fh:  # iterate on "\n" only: texts may hold U+2028 and kin
                augmented = [json.loads(line) for line in fh]
            log.info("augmentation: reused cache %s (%d examples)", path, len(augmented))
        else:
            augmented = augment_rows(rows, kind, fn, copies, seed)
            write_jsonl(augmented, path)
            log.info("augmentation: %d examples written to %s", len(augmented), path)
        features = mixed(augmented)
        batches = train_loader(features, run.trainer, pad, run.seed, rt.shard)
        info.update(features=len(features), cache=str(path))
    info.update(original_examples=len(rows), augmented_examples=copies * len(rows))
    info["seconds"] = time.perf_counter() - started
    log.info("augmentation %s: %d original + %d augmented examples", "+".join(sorted(ops)), len(rows), copies * len(rows))
    return Augmented(batches, info, features)


def _unlabelled(feature: dict[str, Any]) -> dict[str, Any]:
    """An augmented feature keeps no gold label (-100 everywhere), so the hard-label loss skips it."""
    labels = feature["labels"]
    return {**feature, "labels": [-100] * len(labels) if isinstance(labels, (list, tuple)) else -100}


def _weights_stamp(path: str) -> list[Any]:
    """Size and time of a local model's weight files, so retrained weights at the same path
    make new augmented data; empty for hub ids."""
    if not is_local_model_dir(path):
        return []
    files = [Path(path).expanduser() / name for name in WEIGHT_FILES]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]
