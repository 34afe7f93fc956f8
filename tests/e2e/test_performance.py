"""What the speed features must not change: cached teacher logits give the losses of fresh
teacher forwards, cached tokenisation gives the features of fresh encoding; and the benchmark
script runs (its figures are evidence, never asserted here)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KD_HARD, ROOT, compose_run
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

from brewlab.config.schema import TrainerSettings
from brewlab.core.cache import Cache
from brewlab.data.batching import make_loader
from brewlab.data.prepare import prepare_task
from brewlab.data.tasks import KINDS
from brewlab.distill.distillers import DISTILLERS
from brewlab.distill.objective import parse_objective
from brewlab.distill.schedulers import build_schedules
from brewlab.models.adaptors import HFAdaptor


def model(kind: str, layers: int, hidden: int, seed: int):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cls = BertForTokenClassification if kind == "token_classification" else BertForSequenceClassification
    return cls(config)


def features(kind: str, n: int = 24) -> list[dict]:
    """Examples of lengths 3..14, so length-grouped batches pad differently each epoch."""
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(n):
        length = 3 + i % 12
        ids = torch.randint(1, 30, (length,), generator=g).tolist()
        labels = torch.randint(0, 3, (length,), generator=g).tolist() if kind == "token_classification" else i % 3
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels, "idx": i})
    return rows


@pytest.mark.parametrize("kind_name", ["classification", "token_classification"])
def test_cached_teacher_logits_give_the_losses_of_fresh_teacher_forwards(kind_name):
    kind = KINDS.get(kind_name)
    feats = features(kind_name)
    runs = {}
    for cache in (True, False):
        teacher = model(kind_name, 2, 16, seed=1).eval()
        calls = []
        teacher.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        student, t_view = model(kind_name, 1, 8, seed=2), HFAdaptor(teacher, kind)
        s_view = HFAdaptor(student, kind)
        logged: list[float] = []
        distiller = DISTILLERS.get("basic")(
            student=s_view,
            objective=parse_objective(KD_HARD, t_view, s_view),
            schedules=build_schedules({"temperature": {"kind": "constant", "base": 2.0}}),
            trainer=TrainerSettings(epochs=3, cache_teacher_outputs=cache, log_every=1, grad_clip=1.0),
            make_optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
            kind=kind,
            teacher=t_view,
            log=lambda metrics, step, logged=logged: logged.extend(v for k, v in metrics.items() if k == "train/loss"),
        )
        loader = make_loader(feats, batch_size=5, pad_token_id=0, seed=0, train=True)
        distiller.fit(loader, evaluate=lambda: {"score": 0.0}, main_metric="score", progress=False)
        runs[cache] = (logged, len(calls), len(loader))
    (cached, cached_calls, batches), (fresh, fresh_calls, _) = runs[True], runs[False]
    assert len(cached) == len(fresh) == 3 * batches
    assert cached == pytest.approx(fresh, rel=1e-5, abs=1e-6)
    assert (cached_calls, fresh_calls) == (batches, 3 * batches)  # epochs 2 and 3 never ran the teacher


def smoke_cfg(cache: Path) -> dict:
    return compose_run("debug=smoke", f"cache_dir={cache}")


def test_tokenised_splits_are_cached_and_a_broken_entry_is_rebuilt(tmp_path, caplog):
    cfg = smoke_cfg(tmp_path)
    first = prepare_task(cfg, Cache(tmp_path))
    [entry] = (tmp_path / "features").glob("reviews_zh-*.pkl")
    stamp = entry.stat().st_mtime_ns
    again = prepare_task(cfg, Cache(tmp_path))
    assert again.features == first.features and entry.stat().st_mtime_ns == stamp  # read, not rewritten
    entry.write_bytes(entry.read_bytes()[:100])  # a kill while writing, a full disk
    rebuilt = prepare_task(cfg, Cache(tmp_path))
    assert rebuilt.features == first.features
    assert "is unreadable" in caplog.text and entry.name in caplog.text
    cfg["task"]["max_seq_length"] = 16  # other settings: another entry
    shorter = prepare_task(cfg, Cache(tmp_path))
    assert len(list((tmp_path / "features").glob("reviews_zh-*.pkl"))) == 2
    assert max(len(f["input_ids"]) for f in shorter.features["train"]) == 16


@pytest.mark.slow
def test_benchmark_quick_mode_prints_every_figure(cache_dir):
    env = {**os.environ, "BREWLAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.search(r"first-step loss brewlab (\S+) hand \1 ", proc.stdout)  # the same objective
    assert any(line.startswith("real data: brewlab") for line in lines)
    assert any(line.startswith("memory: peak RSS") for line in lines)
    summary = dict(pair.split("=") for pair in lines[-1].split())
    assert list(summary) == ["overhead_ratio", "realdata_speedup", "rss_ratio", "startup_s"]
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in summary.values())


def test_benchmark_rejects_unknown_parts():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--parts", "overhead,speed"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--parts: unknown speed" in proc.stderr


def test_heap_trimmer_runs_once_per_process_and_releases_freed_memory():
    """The trimmer thread starts once; after many small tensors are freed, a trim (what the
    thread calls) shrinks the resident set instead of leaving the holes mapped."""
    import ctypes
    import platform
    import threading

    from brewlab.train.runtime import keep_heap_compact

    assert keep_heap_compact(None) is False  # null: allocator untouched
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert keep_heap_compact(3600) is True and keep_heap_compact(3600) is True
    assert sum(t.name == "brewlab-heap-trim" for t in threading.enumerate()) == 1

    def rss_mb() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 2**20

    keep = []
    many = [torch.ones(2000) for _ in range(60_000)]  # ~480 MB of small heap blocks
    keep.extend(many[::500])  # a few survivors pin the heap's top
    del many
    before = rss_mb()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    assert rss_mb() < before - 200


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM is Linux's")
def test_a_contender_peak_rss_is_its_own_not_its_parents():
    # ru_maxrss survives exec: a small child of a large parent would report the parent's size
    big = bytearray(400 * 1024 * 1024)
    big[:: 4096] = b"\x01" * len(big[:: 4096])  # touch every page, so the parent holds 400 MB
    probe = (
        f"import sys, resource; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench; "
        "print(bench.peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    own, inherited = map(float, subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split())
    assert inherited > 400 > own
    del big
