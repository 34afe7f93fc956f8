"""A task's raw splits: read from local files or its source, missing splits carved from train
with a fixed seed, a fixed-seed training fraction and any debug limits applied."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from brewlab.config.schema import SplitOptions, TaskOptions, settings, with_defaults
from brewlab.data.tasks.base import SOURCES, SPLITS, Example, TaskData, kind_of
from brewlab.data.tasks.readers import read_local


def load_task_data(cfg: Mapping) -> TaskData:
    """Raw splits for a task: local files when given, else its source; then carve missing
    validation/test splits from train with a fixed seed and apply any debug limits."""
    kind = kind_of(cfg["kind"])
    kind.check_config(cfg)  # task settings, checked before any reading
    data_cfg = cfg.get("data") or {}
    if data_cfg.get("train_file"):
        raw = {"train": read_local(data_cfg["train_file"], "task.data.train_file")}
        for split in ("validation", "test"):
            if data_cfg.get(f"{split}_file"):
                raw[split] = read_local(data_cfg[f"{split}_file"], f"task.data.{split}_file")
    else:
        raw = SOURCES.get(cfg["source"], "task.source")(cfg)
    label_names = list(cfg["label_names"])
    splits = _carve_splits(raw, cfg.get("split") or {})
    splits = {name: [kind.normalise(row, label_names, cfg, name) for row in rows] for name, rows in splits.items()}
    fraction = settings(cfg, TaskOptions).train_fraction
    if fraction < 1:  # a fixed-seed subset, in the split's order, so runs with one fraction agree
        keep = max(1, math.ceil(round(fraction * len(splits["train"]), 6)))  # 0.07 * 100 is 7, not 8
        chosen = sorted(random.Random(settings(cfg.get("split") or {}, SplitOptions).seed).sample(range(len(splits["train"])), keep))
        splits["train"] = [splits["train"][i] for i in chosen]
    limits = cfg.get("limit") or {}
    for name in SPLITS:
        if limits.get(name):
            splits[name] = splits[name][: int(limits[name])]
    return TaskData(splits=splits, label_names=label_names)


def _carve_splits(raw: dict[str, list[Example]], split_cfg: Mapping) -> dict[str, list[Example]]:
    """Splits the source lacks are cut from its pool ("all", else "train") by a fixed seed."""
    out = {s: raw[s] for s in SPLITS if s in raw}
    missing = [s for s in ("validation", "test") if s not in out]
    if "all" not in raw and not missing:
        return out
    settings = with_defaults(split_cfg, SplitOptions)
    pool = list(raw["all"] if "all" in raw else raw["train"])
    random.Random(int(settings["seed"])).shuffle(pool)
    total = len(pool)
    for split in missing:
        n = int(round(float(settings[split]) * total))
        out[split], pool = pool[:n], pool[n:]
    out["train"] = pool
    return {s: out[s] for s in SPLITS}
