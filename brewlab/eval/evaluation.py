"""Scores of a trained model: per split, per example (for the paired tests), parameters and
speed, and the one-table summary a run prints."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewlab.core.cache import TEACHER_META
from brewlab.core.files import publish_dir, write_json_atomic, write_jsonl
from brewlab.data.batching import make_loader
from brewlab.data.prepare import Prepared
from brewlab.distill.ensemble import TeacherEnsemble
from brewlab.distill.teacher_outputs.locking import locked
from brewlab.eval.significance import compare, read_records
from brewlab.models.build import count_parameters
from brewlab.models.kinds import TEACHER_KINDS

log = logging.getLogger("brewlab")


def predict(
    adaptor: Any, features: Sequence[dict[str, Any]], batch_size: int, pad_id: int, device: torch.device
) -> tuple[np.ndarray, float]:
    """Logits for every example in input order, and the wall time spent in the model."""
    loader = make_loader(features, batch_size, pad_id, seed=0, train=False)
    adaptor.model.eval()
    rows: dict[int, np.ndarray] = {}
    seconds = 0.0
    with torch.inference_mode():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            start = time.perf_counter()
            logits = adaptor(batch).logits
            seconds += time.perf_counter() - start
            logits = adaptor.kind.compact(logits, batch)
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


def measure(
    view: Any, prep: Prepared, eval_bs: int, device: torch.device, predictions: Path | None = None
) -> dict[str, Any]:
    """Validation and test scores, parameter counts and inference speed of one adaptor; with
    `predictions`, its per-example predictions of each split in `<predictions>/<split>.jsonl`."""
    entry: dict[str, Any] = {
        split: evaluate(view, prep, split, eval_bs, device, predictions / f"{split}.jsonl" if predictions else None)
        for split in ("validation", "test")
    }
    entry["parameters"] = count_parameters(view.model)
    entry["examples_per_second"] = entry["test"]["examples_per_second"]
    return entry


def teacher_metrics(
    teachers: Sequence[Any],
    used: Any,
    prep: Prepared,
    base: str | None,
    eval_bs: int,
    device: torch.device,
    predictions: Path | None = None,
) -> dict[str, Any]:
    """`teacher` (what the student learnt from: one model or the ensemble) and, for several
    teachers, `teachers` (each member), with how each cached stage was made. `teachers` are
    `brewlab.models.teacher.Teacher`s and `used` the adaptor the student read them through (None: it
    read none); a teacher read from the teacher store is measured once and its scores kept
    there. The predictions of the one the student learnt from go to `<predictions>/teacher/`."""
    ensemble = isinstance(used, TeacherEnsemble)
    views = used.members if ensemble else [used] if used is not None else [t.adaptor(prep.kind) for t in teachers]
    single = predictions / "teacher" if predictions and not ensemble else None
    members = []
    for teacher, view in zip(teachers, views, strict=True):
        entry = measure_teacher(view, prep, eval_bs, device, single) | {"source": teacher.source}
        pretrained = base if TEACHER_KINDS.props(teacher.config["kind"], "teacher.kind").masked_lm_base else None
        for stage, stage_dir in (("training", teacher.entry), ("pretraining", pretrained)):
            meta = Path(stage_dir) / TEACHER_META if stage_dir else None
            if meta is not None and meta.is_file():  # how the cached stage was made (time, steps, dev score)
                entry[stage] = json.loads(meta.read_text(encoding="utf-8"))
        members.append(entry)
    if ensemble:
        combined = measure(used.online, prep, eval_bs, device, predictions and predictions / "teacher")
        combined |= {"source": "ensemble", "members": len(members)}
        return {"teacher": combined, "teachers": members}
    return {"teacher": members[0]}


def paired_difference(ours: Path, reference: Path, split: str = "test") -> dict[str, float]:
    """Test-metric difference of two models of one run with its paired-bootstrap interval and p
    (`brewlab.eval.significance`, over the test examples; one seed, so no seed spread is in it)."""
    (c,) = compare([[read_records(ours / f"{split}.jsonl")]], [read_records(reference / f"{split}.jsonl")])
    return {"difference": c.difference, "low": c.low, "high": c.high, "p": c.p}


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


def measure_teacher(view: Any, prep: Any, eval_bs: int, device: torch.device, predictions: Path | None) -> dict[str, Any]:
    """A teacher's validation and test scores (`measure`), kept in its store
    entry so that later runs of the same teacher and data read them without loading it."""
    if not view.stored:
        return measure(view.online, prep, eval_bs, device, predictions)
    kept = view.entry.directory / f"evaluation-bs{eval_bs}"
    with locked(view.entry.directory.with_name(view.entry.name + ".lock")):  # one job measures, the others read
        if (kept / "measure.json").is_file() and (predictions is None or (kept / "predictions").is_dir()):
            log.info("teacher evaluation: read from the teacher store %s", kept)
            if predictions is not None:
                shutil.copytree(kept / "predictions", predictions, dirs_exist_ok=True)
            return json.loads((kept / "measure.json").read_text(encoding="utf-8"))
        entry = measure(view.online, prep, eval_bs, device, predictions)
        build = view.entry.directory / f".evaluation-{os.getpid()}"
        try:  # kept for later runs; a full disk costs them a measurement, never this run its result
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir()
            if predictions is not None:
                shutil.copytree(predictions, build / "predictions")
            write_json_atomic(build / "measure.json", entry)
            publish_dir(build, kept)
        except OSError as exc:
            shutil.rmtree(build, ignore_errors=True)
            log.warning("teacher store %s: cannot keep the teacher's scores (%s)", view.entry.name, exc)
        return entry
