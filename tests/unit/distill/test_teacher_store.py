"""The teacher-output store: stored outputs equal the teacher's own, a second job never runs
the teacher, parallel builders make one entry, damage and budgets are handled in one line."""

from __future__ import annotations

import errno
import json
import logging
import math
import multiprocessing
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import compose_run
from safetensors.torch import load_file

from brewlab.config.schema import TrainerSettings, settings
from brewlab.core.cache import Cache
from brewlab.data.batching import make_loader
from brewlab.distill.losses import hidden_mse, kd_ce
from brewlab.distill.teacher_outputs.disk import StoredView
from brewlab.distill.teacher_outputs.layout import Wanted
from brewlab.distill.teacher_outputs.plan import StorePlan
from brewlab.distill.teacher_outputs.store import StoreSkipped, TeacherStore
from brewlab.models.adaptors import HFAdaptor

HIDDEN = Wanted(hidden=(0, 2))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The smoke task, encoded, and a random 4-layer teacher over it."""
    from brewlab.data.prepare import prepare_task
    from brewlab.models.build import build_scratch

    cache = tmp_path_factory.mktemp("store-cache")
    cfg = compose_run("debug=smoke", "logger=none", f"cache_dir={cache}")
    prep = prepare_task(cfg, Cache(cache))
    torch.manual_seed(0)
    teacher = build_scratch(cfg["teacher"]["arch"], prep.tokenizer, prep.kind, 2, "eager").eval()
    return cfg, prep, teacher


class Counted:
    """An adaptor that counts the teacher's forward passes (one per batch it is given)."""

    def __init__(self, model, kind, record: Path | None = None) -> None:
        self.view, self.calls, self.record = HFAdaptor(model, kind), 0, record
        self.kind, self.model = kind, model

    def __call__(self, batch, hidden=False, attention=False):
        self.calls += 1
        if self.record is not None:
            with open(self.record, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        return self.view(batch, hidden=hidden, attention=attention)


def _store(tmp_path, batch_size=32, features="fp32", max_gb=20.0) -> TeacherStore:
    return TeacherStore(Cache(tmp_path), max_gb, features, batch_size)


def _open(store, directory, prep, teacher, wanted=HIDDEN, record=None):
    counted = Counted(teacher, prep.kind, record)
    entry = store.open(directory, wanted, prep.features["train"], lambda: counted, prep.tokenizer.pad_token_id)
    return entry, counted


def _batches(prep, size):
    return list(make_loader(prep.features["train"], size, prep.tokenizer.pad_token_id, seed=3, train=True))


def test_stored_outputs_give_the_same_losses_as_the_teacher_run_on_the_same_inputs(tmp_path, task):
    """Built one example per batch and read in unpadded one-example batches, the teacher sees the
    same input on both sides: the stored logits and hidden states are its own bits, so the KD
    and hidden losses are identical (any mix-up of rows, offsets or layers would show)."""
    _, prep, teacher = task
    entry, _ = _open(_store(tmp_path, batch_size=1), tmp_path / "e", prep, teacher)
    stored, online = StoredView(entry, HFAdaptor(teacher, prep.kind)), HFAdaptor(teacher, prep.kind)
    from brewlab.data.batching import PadCollator

    collate = PadCollator(prep.tokenizer.pad_token_id)
    torch.manual_seed(1)
    for k in torch.randperm(len(prep.features["train"]))[:40].tolist():
        batch = collate([{**prep.features["train"][k], "idx": k}])
        with torch.no_grad():
            want = online(batch, hidden=True)
        got = stored(batch, hidden=True)
        assert torch.equal(got.logits, want.logits)
        student = torch.randn_like(want.logits)
        assert torch.equal(kd_ce(student, got.logits, 4.0), kd_ce(student, want.logits, 4.0))
        for layer in HIDDEN.hidden:
            s = torch.randn_like(want.hidden[layer])
            assert torch.equal(hidden_mse(s, got.hidden[layer]), hidden_mse(s, want.hidden[layer]))
        assert got.hidden[1] is None  # only the matched layers are stored


def test_stored_outputs_of_padded_training_batches_agree_to_rounding(tmp_path, task):
    """Training batches pad differently from the store's length-sorted ones; float sums then run
    in another order, so values agree to rounding, not bits. Padded positions are masked."""
    _, prep, teacher = task
    entry, _ = _open(_store(tmp_path), tmp_path / "e", prep, teacher)
    stored, online = StoredView(entry, HFAdaptor(teacher, prep.kind)), HFAdaptor(teacher, prep.kind)
    padded = 0
    for batch in _batches(prep, 8):
        mask = batch["attention_mask"].bool()
        padded += int((~mask).sum())
        with torch.no_grad():
            want = online(batch, hidden=True)
        got = stored(batch, hidden=True)
        assert got.logits.shape == want.logits.shape
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
        for layer in HIDDEN.hidden:
            assert got.hidden[layer].shape == want.hidden[layer].shape
            torch.testing.assert_close(got.hidden[layer][mask], want.hidden[layer][mask], rtol=1e-4, atol=1e-4)
            assert not got.hidden[layer][~mask].any()  # re-padded with zeros
    assert padded > 0  # the batches were padded, so the comparison covers re-padding


def test_valid_tokens_read_packed_are_the_padded_batch_valid_rows(tmp_path, task):
    """A stored layer read as valid tokens only is, bit for bit, the padded read's valid rows in
    row-major order (example by example), and the online teacher's packed rows come out alike."""
    from brewlab.distill.distillers import ValidTokens

    _, prep, teacher = task
    entry, _ = _open(_store(tmp_path), tmp_path / "e", prep, teacher)
    stored = StoredView(entry, HFAdaptor(teacher, prep.kind))
    for batch in _batches(prep, 8)[:6]:
        mask = batch["attention_mask"].bool()
        view = stored(batch, hidden=True)
        tokens = ValidTokens(batch["attention_mask"])
        for layer in HIDDEN.hidden:
            packed = view.hidden.tokens(layer)
            assert packed.shape == (int(mask.sum()), view.hidden[layer].shape[-1])
            assert torch.equal(packed, view.hidden[layer][mask])
            assert torch.equal(tokens.of_teacher(view.hidden, layer), packed)
            assert torch.equal(tokens.of_teacher(tuple(view.hidden), layer), packed)  # an online teacher's tuple
    with pytest.raises(KeyError, match="has no hidden.1"):
        view.hidden.tokens(1)


@pytest.mark.parametrize(("precision", "mantissa_bits"), [("fp16", 10), ("bf16", 7)])
def test_half_precision_features_stay_within_their_rounding_bound(tmp_path, task, precision, mantissa_bits):
    """Rounding to nearest with p stored mantissa bits errs by at most u = 2^-(p+1) relative
    (normal numbers). For t' = t + e with |e| <= u|t|, the hidden MSE moves by at most
    mean(2|s - t||e| + e^2) <= 2u mean(|s - t||t|) + u^2 mean(t^2), summed over the feature."""
    _, prep, teacher = task
    u = 2.0 ** -(mantissa_bits + 1)
    exact, _ = _open(_store(tmp_path / "a"), tmp_path / "a" / "e", prep, teacher)
    half, _ = _open(_store(tmp_path / "b", features=precision), tmp_path / "b" / "e", prep, teacher)
    assert half.manifest["arrays"]["hidden.2"]["dtype"] == precision
    assert half.manifest["arrays"]["logits"]["dtype"] == "fp32"  # logits are never rounded
    idx = list(range(len(prep.features["train"])))
    assert all(torch.equal(a, b) for a, b in zip(exact.rows("logits", idx), half.rows("logits", idx), strict=True))
    torch.manual_seed(2)
    for t, h in zip(exact.rows("hidden.2", idx[:30]), half.rows("hidden.2", idx[:30]), strict=True):
        h = h.float()
        assert (h - t).abs().le(u * t.abs() + 2.0**-24).all()  # 2^-24: fp16's subnormal step
        s = torch.randn_like(t)
        n = t.numel()
        bound = (2 * u * ((s - t).abs() * t.abs()).sum() + u**2 * t.pow(2).sum()) / n + 1e-6
        moved = (hidden_mse(s[None], h[None]) - hidden_mse(s[None], t[None])).abs()
        assert moved <= bound


def test_a_second_open_reads_without_running_the_teacher_and_a_new_layer_extends_the_entry(tmp_path, task):
    _, prep, teacher = task
    store, directory = _store(tmp_path), tmp_path / "e"
    n = len(prep.features["train"])
    _, first = _open(store, directory, prep, teacher, Wanted())
    assert first.calls == math.ceil(n / 32)  # one forward per length-sorted batch of 32
    logits_file = directory / "logits.bin"
    written = logits_file.stat().st_mtime_ns
    _, second = _open(store, directory, prep, teacher, Wanted())
    assert second.calls == 0
    entry, third = _open(store, directory, prep, teacher, Wanted(hidden=(2,)))
    assert third.calls == math.ceil(n / 32)  # the new layer only
    assert sorted(entry.manifest["arrays"]) == ["hidden.2", "logits"]
    assert logits_file.stat().st_mtime_ns == written  # extended, not rewritten
    assert entry.manifest["arrays"]["logits"]["bytes"] == n * 2 * 4  # (C,) fp32 rows, unpadded
    lengths = [int(sum(f["attention_mask"])) for f in prep.features["train"]]
    assert entry.manifest["arrays"]["hidden.2"]["bytes"] == sum(lengths) * teacher.config.hidden_size * 4


def _build_in_child(directory: str, record: str, cache: str) -> None:
    """One parallel job: the same teacher (same seed) and data, building the same entry."""
    torch.set_num_threads(1)
    from brewlab.data.prepare import prepare_task
    from brewlab.models.build import build_scratch

    cfg = compose_run("debug=smoke", "logger=none", f"cache_dir={cache}")
    prep = prepare_task(cfg, Cache(cache))
    torch.manual_seed(0)
    teacher = build_scratch(cfg["teacher"]["arch"], prep.tokenizer, prep.kind, 2, "eager").eval()
    _open(_store(Path(cache), batch_size=4), Path(directory), prep, teacher, HIDDEN, Path(record))


def test_two_processes_opening_one_entry_compute_it_once(tmp_path, task):
    _, prep, _ = task
    directory, record = tmp_path / "store" / "e", tmp_path / "forwards.txt"
    ctx = multiprocessing.get_context("spawn")
    jobs = [ctx.Process(target=_build_in_child, args=(str(directory), str(record), str(tmp_path / "cache"))) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
    assert [job.exitcode for job in jobs] == [0, 0]
    pids = record.read_text().split()
    assert len(pids) == math.ceil(len(prep.features["train"]) / 4)  # one build's forwards in all
    assert len(set(pids)) == 1  # all by one process; the other waited, then read
    manifest = json.loads((directory / "manifest.json").read_text())
    assert sorted(manifest["arrays"]) == ["hidden.0", "hidden.2", "logits"]


def _wait_for(lock: str) -> None:
    """A parallel job with one thread that finds the entry being built: it waits for the lock."""
    from brewlab.distill.teacher_outputs.locking import locked

    torch.set_num_threads(1)
    with locked(Path(lock)):
        pass


def test_a_builder_takes_the_threads_of_the_processes_waiting_for_it(tmp_path):
    """A job that waits for an entry lends its thread to the job computing it, up to the CPUs;
    a waiter that died (its file left behind) lends nothing, and the threads come back after."""
    import socket

    from brewlab.distill.teacher_outputs.locking import Borrowed, locked, waiting_threads

    lock, own = tmp_path / "e.lock", torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0))
    (tmp_path / "e.lock.waiting").mkdir()
    (tmp_path / "e.lock.waiting" / f"{socket.gethostname()}-{2**22 + 7}").write_text("4")  # no such process
    torch.set_num_threads(1)
    try:
        with locked(lock):
            waiter = multiprocessing.get_context("spawn").Process(target=_wait_for, args=(str(lock),))
            waiter.start()
            for _ in range(600):
                if waiting_threads(lock):
                    break
                waiter.join(timeout=0.1)
            assert waiting_threads(lock) == 1
            seen = []
            with Borrowed(lock) as threads:
                for _ in threads.each(iter(range(3))):
                    seen.append(torch.get_num_threads())
            assert seen == [min(cpus, 2)] * 3 and torch.get_num_threads() == 1
        waiter.join(timeout=60)
        assert waiter.exitcode == 0 and waiting_threads(lock) == 0
    finally:
        torch.set_num_threads(own)


def test_a_truncated_array_is_named_in_one_line_and_computed_again(tmp_path, task, caplog):
    _, prep, teacher = task
    store, directory = _store(tmp_path), tmp_path / "e"
    entry, _ = _open(store, directory, prep, teacher)
    idx = list(range(len(prep.features["train"])))
    before = [r.clone() for r in entry.rows("hidden.2", idx)]
    full = (directory / "hidden.2.bin").stat().st_size
    with open(directory / "hidden.2.bin", "r+b") as fh:
        fh.truncate(full // 3)  # a kill or a full disk after publication
    caplog.set_level(logging.INFO, logger="brewlab")
    entry, counted = _open(store, directory, prep, teacher)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == [f"teacher store e: hidden.2.bin holds {full // 3} of its {full} bytes (truncated or damaged): computing it again"]
    assert counted.calls > 0 and (directory / "hidden.2.bin").stat().st_size == full
    assert all(torch.equal(a, b) for a, b in zip(before, entry.rows("hidden.2", idx), strict=True))


def _saved_teacher(tmp_path, prep, teacher):
    from brewlab.models.build import save_model
    from brewlab.models.teacher import Teacher

    save_model(teacher, prep.tokenizer, tmp_path / "teacher")
    return Teacher("cache", str(tmp_path / "teacher"), {}, model=teacher)


def _plan(cfg, prep, cache, **trainer):
    return StorePlan.of(settings({**cfg["trainer"], **trainer}, TrainerSettings), Cache(cache), "reviews_zh", prep, prep.features["train"])


def test_an_entry_above_the_budget_is_skipped_with_one_warning(tmp_path, task, caplog):
    cfg, prep, teacher = task
    t = _saved_teacher(tmp_path, prep, teacher)
    view = HFAdaptor(teacher, prep.kind)
    with pytest.raises(StoreSkipped):
        _open(_store(tmp_path, max_gb=1e-6), tmp_path / "e", prep, teacher)
    caplog.set_level(logging.INFO, logger="brewlab")
    got = _plan(cfg, prep, tmp_path / "c", teacher_store_max_gb=1e-6).attach(view, t, [])
    assert got is view  # the teacher is read online
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    n = len(prep.features["train"])
    assert f"would take {n * 2 * 4 / 1e9:.2f} GB, above trainer.teacher_store_max_gb=1e-06" in line
    assert not (tmp_path / "c" / "teacher_outputs").exists() or not any(
        p.is_dir() for p in (tmp_path / "c" / "teacher_outputs").iterdir()
    )


def test_a_full_disk_leaves_no_partial_entry_and_the_run_reads_the_teacher_online(tmp_path, task, monkeypatch, caplog):
    cfg, prep, teacher = task
    t = _saved_teacher(tmp_path, prep, teacher)
    view = HFAdaptor(teacher, prep.kind)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    caplog.set_level(logging.INFO, logger="brewlab")
    assert _plan(cfg, prep, tmp_path / "c").attach(view, t, []) is view
    assert any("no space left" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    left = [p for p in (tmp_path / "c" / "teacher_outputs").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # no entry directory, no temporary array


def test_online_augmentation_bypasses_the_store_in_one_line(task, tmp_path, caplog):
    cfg, prep, _ = task
    caplog.set_level(logging.INFO, logger="brewlab")
    assert StorePlan.of(settings(cfg["trainer"], TrainerSettings), Cache(tmp_path), "reviews_zh", prep, None) is None
    assert [r.getMessage() for r in caplog.records] == [
        "teacher store: bypassed, online augmentation gives the teacher new inputs every epoch"
    ]


# ----------------------------------------------------------------------------- whole runs


class _Tracker:
    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at

    def log(self, metrics, step):
        if self.crash_at is not None and "train/loss" in metrics and step == self.crash_at:
            raise _Crash


class _Crash(Exception):
    pass


def _run(run_dir, cache, *overrides, tracker=None):
    from brewlab.config.schema import run_settings
    from brewlab.run.pipeline import run
    from brewlab.run.validate import validate
    from brewlab.train.runtime import Runtime, seed_everything

    cfg = compose_run("debug=smoke", "logger=none", f"cache_dir={cache}", "loss=kd+hidden", *overrides)
    validate(cfg)
    settings = run_settings(cfg)
    seed_everything(settings.seed)
    rt = Runtime(torch.device("cpu"), Cache(cache), tracker or _Tracker(), progress=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run(cfg, settings, run_dir, rt)


@pytest.fixture
def counted_loads(monkeypatch):
    """Teacher loads from disk, and the forward passes of every model so loaded."""
    import brewlab.stages.teachers

    counts = {"loads": 0, "forwards": 0}
    real = brewlab.stages.teachers.load_pretrained

    def load(*args, **kwargs):
        model = real(*args, **kwargs)
        if kwargs.get("key") == "teacher cache":
            counts["loads"] += 1
            model.register_forward_hook(lambda *a: counts.__setitem__("forwards", counts["forwards"] + 1))
        return model

    monkeypatch.setattr(brewlab.stages.teachers, "load_pretrained", load)  # where the teacher stage looks it up
    return counts


def test_later_jobs_of_a_sweep_never_load_the_teacher(tmp_path, counted_loads, caplog):
    caplog.set_level(logging.INFO, logger="brewlab")
    cache = tmp_path / "cache"
    first = _run(tmp_path / "a", cache)  # trains the teacher, fills the store
    assert first["teacher_store"]["entries"] and first["teacher_store"]["teacher_loaded"]
    counted_loads.update(loads=0, forwards=0)
    again = _run(tmp_path / "b", cache)  # the same job again
    other_seed = _run(tmp_path / "c", cache, "seed=7")
    assert counted_loads == {"loads": 0, "forwards": 0}
    for m in (again, other_seed):
        assert m["teacher_store"] == {"entries": first["teacher_store"]["entries"], "teacher_loaded": False}
        assert m["teacher"]["test"] == first["teacher"]["test"]
    assert again["student"]["final_losses"] == first["student"]["final_losses"]
    assert "teacher: never loaded in this run; its outputs and scores came from the teacher store" in caplog.text
    assert (tmp_path / "c" / "predictions" / "teacher" / "test.jsonl").read_text() == (
        tmp_path / "a" / "predictions" / "teacher" / "test.jsonl"
    ).read_text()


def test_store_on_and_off_give_the_same_run_to_rounding(tmp_path):
    cache = tmp_path / "cache"
    on = _run(tmp_path / "on", cache)
    off = _run(tmp_path / "off", cache, "trainer.teacher_store=false")
    assert off["teacher_store"]["entries"] == [] and on["teacher_store"]["entries"]
    assert on["student"]["final_losses"].keys() == off["student"]["final_losses"].keys()
    for name, value in on["student"]["final_losses"].items():
        assert value == pytest.approx(off["student"]["final_losses"][name], rel=1e-5)


def test_the_in_memory_logit_cache_holds_the_stores_bits(tmp_path, task):
    """Without the store, a run's kept logits come from the same canonical batches: every
    example's cached row is the stored row, bit for bit."""
    from brewlab.distill.teacher_outputs.canonical import canonical_logits
    from brewlab.distill.teacher_outputs.memory import TeacherCache

    _, prep, teacher = task
    features = prep.features["train"]
    entry, _ = _open(_store(tmp_path, batch_size=32), tmp_path / "e", prep, teacher, wanted=Wanted())
    cache = TeacherCache(prep.kind.seq_axis, prep.kind.logit_pad)
    for idx, logits, mask in canonical_logits(HFAdaptor(teacher, prep.kind), features, 32, prep.tokenizer.pad_token_id):
        cache.put(idx, logits, mask)
    everything = torch.arange(len(features))
    stored = entry.batch("logits", everything, 0, prep.kind.logit_pad)
    assert len(cache) == len(features) and torch.equal(cache.get(everything, stored), stored)


def test_a_logit_objective_trains_the_same_bits_with_the_store_on_and_off(tmp_path, caplog):
    """Kept teacher logits are computed in the store's batches whether they go to disk or stay in
    memory, so a KD run without the store trains the very same student as one with it."""
    caplog.set_level(logging.INFO, logger="brewlab")
    cache = tmp_path / "cache"
    on = _run(tmp_path / "on", cache, "loss=kd", "trainer.batch_size=5")
    off = _run(tmp_path / "off", cache, "loss=kd", "trainer.batch_size=5", "trainer.teacher_store=false")
    assert off["teacher_store"]["entries"] == [] and on["teacher_store"]["entries"]
    assert off["student"]["final_losses"] == on["student"]["final_losses"]
    assert off["student"]["test"]["accuracy"] == on["student"]["test"]["accuracy"]
    trained = [load_file(tmp_path / side / "student" / "model.safetensors") for side in ("on", "off")]
    assert trained[0].keys() == trained[1].keys()
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    train = re.search(r"task \S+: \{'train': (\d+)", caplog.text).group(1)
    assert f"teacher logits: {train} examples computed up front, in length-sorted batches" in caplog.text


def test_a_resumed_run_reads_the_store_and_its_checkpoints_carry_no_logits(tmp_path, caplog):
    cache = tmp_path / "cache"
    whole = _run(tmp_path / "whole", cache, "trainer.checkpoint_every=2", "trainer.log_every=1")
    with pytest.raises(_Crash):
        _run(tmp_path / "cut", cache, "trainer.checkpoint_every=2", "trainer.log_every=1", tracker=_Tracker(crash_at=5))
    (kept,) = [p for p in (tmp_path / "cut" / "checkpoints").glob("step-*.pt") if p.name == "step-00000004.pt"]
    state = torch.load(kept, weights_only=False)
    assert state["teacher_caches"] == [None] and state["teacher_store"] == whole["teacher_store"]["entries"]
    caplog.set_level(logging.INFO, logger="brewlab")
    resumed = _run(tmp_path / "cut", cache, "trainer.checkpoint_every=2", "trainer.log_every=1")
    (entry,) = whole["teacher_store"]["entries"]
    assert f"resuming at step 4 with teacher outputs from the store ({entry})" in caplog.text
    assert resumed["student"]["final_losses"] == whole["student"]["final_losses"]
    speed = "examples_per_second"  # a timing: the only figure that may differ
    assert {k: v for k, v in resumed["student"]["test"].items() if k != speed} == {
        k: v for k, v in whole["student"]["test"].items() if k != speed
    }


def test_without_the_store_a_resumed_run_takes_its_logits_from_the_checkpoint(tmp_path, caplog):
    """The in-memory logit cache, filled before training, travels in the checkpoint: a resumed
    run reads it from there, never computes it again, and ends where an uncut run ends."""
    cache, flags = tmp_path / "cache", ("loss=kd", "trainer.teacher_store=false", "trainer.checkpoint_every=2", "trainer.log_every=1")
    caplog.set_level(logging.INFO, logger="brewlab")
    whole = _run(tmp_path / "whole", cache, *flags)
    with pytest.raises(_Crash):
        _run(tmp_path / "cut", cache, *flags, tracker=_Tracker(crash_at=5))
    assert caplog.text.count("examples computed up front") == 2
    state = torch.load(tmp_path / "cut" / "checkpoints" / "step-00000004.pt", weights_only=False)
    (kept,) = state["teacher_caches"]
    assert len(kept["where"]) == int(re.search(r"task \S+: \{'train': (\d+)", caplog.text).group(1))
    caplog.clear()
    resumed = _run(tmp_path / "cut", cache, *flags)
    assert "step-00000004.pt (step 4)" in caplog.text and "examples computed up front" not in caplog.text
    assert resumed["student"]["final_losses"] == whole["student"]["final_losses"]
    assert resumed["student"]["test"]["accuracy"] == whole["student"]["test"]["accuracy"]


def test_several_teachers_keep_one_entry_each_and_a_second_run_loads_none(tmp_path, counted_loads):
    cache = tmp_path / "cache"
    two = ("distiller=multi_teacher", "distiller.teachers=[{seed:1},{seed:2}]", "loss=kd")
    first = _run(tmp_path / "a", cache, *two)
    entries = first["teacher_store"]["entries"]
    assert len(entries) == len(set(entries)) == 2  # keyed by each teacher's weights
    assert sorted(p.name for p in (cache / "teacher_outputs").iterdir() if p.is_dir()) == sorted(entries)
    counted_loads.update(loads=0, forwards=0)
    again = _run(tmp_path / "b", cache, *two)
    assert again["teacher_store"]["entries"] == entries
    assert again["student"]["final_losses"] == first["student"]["final_losses"]
    # the ensemble's own scores need its members run on validation and test (its members' are stored)
    assert counted_loads["loads"] == 2 and counted_loads["forwards"] > 0


def test_a_multi_task_run_keeps_one_entry_per_task(tmp_path):
    cache = tmp_path / "cache"
    metrics = _run(tmp_path / "a", cache, "distiller=multi_task", "loss=kd")
    entries = metrics["teacher_store"]["entries"]
    assert len(entries) == len(metrics["task"]["tasks"]) == 2
    assert {e.rsplit("-", 1)[0] for e in entries} == set(metrics["task"]["tasks"])


class _TokenTeacher:
    """A stand-in teacher whose logit at (example k, token p, class c) is k + p / 100 + c / 1000,
    laid out as `(L, C)` rows (`seq_axis=0`, NER) or `(C, L)` rows (`seq_axis=1`, MRC)."""

    def __init__(self, seq_axis: int) -> None:
        from types import SimpleNamespace

        self.kind = SimpleNamespace(seq_axis=seq_axis)
        self.model = torch.nn.Linear(1, 1)

    def __call__(self, batch, hidden=False, attention=False):
        from brewlab.models.adaptors import ModelView

        b, w = batch["input_ids"].shape
        value = batch["idx"][:, None, None] + torch.arange(w)[None, :, None] / 100 + torch.arange(3)[None, None, :] / 1000
        logits = value.float() if self.kind.seq_axis == 0 else value.float().transpose(1, 2)
        return ModelView(logits=logits, mask=batch["attention_mask"])


@pytest.mark.parametrize("seq_axis", [0, 1])
def test_token_logits_come_back_at_their_example_and_position_padded_with_the_fill(tmp_path, seq_axis):
    features = [{"input_ids": [5] * n, "attention_mask": [1] * n} for n in (3, 7, 1, 5, 7, 2)]
    store = TeacherStore(Cache(tmp_path), 1.0, "fp32", 4)
    entry = store.open(tmp_path / "e", Wanted(), features, lambda: _TokenTeacher(seq_axis), 0)
    idx, width = torch.tensor([4, 0, 2]), 8
    got = entry.batch("logits", idx, width, -9.0)
    assert got.shape == ((3, 8, 3) if seq_axis == 0 else (3, 3, 8))
    for i, k in enumerate(idx.tolist()):
        length = len(features[k]["input_ids"])
        for p in range(width):
            row = got[i, p] if seq_axis == 0 else got[i, :, p]
            want = [k + p / 100 + c / 1000 for c in range(3)] if p < length else [-9.0] * 3
            assert row.tolist() == pytest.approx(want, abs=1e-6)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_when_listing_new_arrays_skips_the_store(tmp_path, task, monkeypatch, caplog):
    import brewlab.distill.teacher_outputs.store as ts

    cfg, prep, teacher = task
    t = _saved_teacher(tmp_path, prep, teacher)
    view = HFAdaptor(teacher, prep.kind)
    monkeypatch.setattr(ts, "write_json_atomic", _no_space)
    caplog.set_level(logging.INFO, logger="brewlab")
    assert _plan(cfg, prep, tmp_path / "c").attach(view, t, []) is view  # the teacher is read online
    assert any("cannot write" in r.getMessage() and "manifest.json" in r.getMessage() for r in caplog.records)
    (directory,) = [p for p in (tmp_path / "c" / "teacher_outputs").iterdir() if p.is_dir()]
    assert not (directory / "manifest.json").exists()  # arrays written but never listed, so never read


def test_a_full_disk_when_keeping_the_teachers_scores_costs_the_run_nothing(tmp_path, task, monkeypatch, caplog):
    import brewlab.eval.evaluation as ev

    _, prep, teacher = task
    entry, _ = _open(_store(tmp_path), tmp_path / "e", prep, teacher)
    view = StoredView(entry, HFAdaptor(teacher, prep.kind))
    monkeypatch.setattr(ev, "write_json_atomic", _no_space)
    got = ev.measure_teacher(view, prep, 32, torch.device("cpu"), tmp_path / "predictions")
    assert 0.0 <= got["test"]["accuracy"] <= 1.0 and (tmp_path / "predictions" / "test.jsonl").is_file()
    assert "cannot keep the teacher's scores" in caplog.text
    assert sorted(p.name for p in (tmp_path / "e").iterdir() if p.is_dir()) == []  # no half-kept evaluation
    monkeypatch.undo()
    kept = ev.measure_teacher(view, prep, 32, torch.device("cpu"), tmp_path / "again")
    assert (tmp_path / "e" / "evaluation-bs32" / "measure.json").is_file()
    assert kept["test"]["accuracy"] == got["test"]["accuracy"]
