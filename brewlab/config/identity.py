"""Which settings make a run or a cache entry what it is: the rules behind every fingerprint and
every teacher's cache key, in one place.

A setting that does not change what is computed (where the logs go, how often a checkpoint is
written) is left out, so changing it finds the same run again; a setting added after entries were
made is hashed only when set away from its default, so those entries keep their keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from brewlab.config.schema import StageTrainSettings, trainer_default
from brewlab.core.cache import Cache

# loop keys that teacher stages did not write before the schema: a stage's cache key and a run's
# fingerprint count them only when set away from the default, so entries made before stay valid
UNKEYED_AT_DEFAULT = ("grad_accum", "precision", "nonfinite", "seed")
# config keys that do not change what a run computes (a resume may change them)
NOT_TRAINING = ("logger", "resume", "study", "cache_dir")
NOT_TRAINING_TRAINER = ("progress", "checkpoint_every", "checkpoints_kept", "log_every", "nonfinite", "heap_trim_every_s")
# teacher-store settings and the user's callbacks, hashed only when set away from their defaults
# (runs made before them keep their fingerprints)
STORE_KEYS = {k: trainer_default(k) for k in ("teacher_store", "teacher_store_max_gb", "teacher_store_features", "callbacks")}


def hashed_view(tree: Any) -> Any:
    """`tree` (a config or part of one) as it is hashed: every stage section (`train: {...}`)
    without the keys of UNKEYED_AT_DEFAULT left at their defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(StageTrainSettings)}

    def walk(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return node
        out = {}
        for key, value in node.items():
            if key == "train" and isinstance(value, Mapping) and "lr" in value:
                value = {k: v for k, v in value.items() if not (k in UNKEYED_AT_DEFAULT and v == defaults[k])}
            out[key] = walk(value)
        return out

    return walk(tree)


def run_fingerprint(cfg: Mapping[str, Any]) -> str:
    """Hash of everything that shapes a run's results: a checkpoint or a finished run counts as
    this run's only when it matches."""
    kept = {k: v for k, v in cfg.items() if k not in NOT_TRAINING}
    kept["trainer"] = {
        k: v for k, v in cfg["trainer"].items() if k not in NOT_TRAINING_TRAINER and not (k in STORE_KEYS and v == STORE_KEYS[k])
    }
    if not any((cfg.get("baselines") or {}).values()):  # runs without baselines keep their earlier fingerprint
        kept.pop("baselines", None)
    return Cache(cfg["cache_dir"]).key(hashed_view(kept))  # paths inside the cache count relative to it


def teacher_identity(t_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher settings its cache entry is keyed by: not its name or licence notice, and not
    the package keys that a preset leaves unset (so hub and local teachers keep their keys)."""
    unset_ok = ("package", "checksums")
    return hashed_view(
        {k: v for k, v in t_cfg.items() if k not in ("name", "notice") and not (k in unset_ok and v is None)}
    )
