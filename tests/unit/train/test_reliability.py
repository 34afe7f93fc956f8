"""A killed run continues exactly; checkpoints are atomic and checked; NaN stops cleanly or
is skipped; the same seed gives the same metrics.json; W&B never kills a run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KD_HARD, ROOT, read_metrics
from transformers import BertConfig, BertForSequenceClassification

from brewlab.config.schema import TrainerSettings, run_settings
from brewlab.core.errors import BrewlabError
from brewlab.data.batching import make_loader
from brewlab.data.tasks import KINDS
from brewlab.distill.distillers import DISTILLERS
from brewlab.distill.objective import parse_objective
from brewlab.distill.schedulers import build_schedules
from brewlab.models.adaptors import HFAdaptor
from brewlab.train.callbacks import CALLBACKS, Callback
from brewlab.train.checkpoint import CheckpointStore
from brewlab.train.runtime import seed_everything

CLASSIFICATION = KINDS.get("classification")


def bert(layers: int, hidden: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, num_labels=3)
    return BertForSequenceClassification(config)  # dropout on: the RNG state must be restored too


def features(n: int = 30) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [
        {"input_ids": torch.randint(1, 30, (3 + i % 9,), generator=g).tolist(), "attention_mask": [1] * (3 + i % 9),
         "labels": i % 3, "idx": i}
        for i in range(n)
    ]


class Crash(Exception):
    pass


def fit(store: CheckpointStore | None, crash_at: int | None = None, loss: dict | None = None, **trainer):
    """A fresh process's worth of state: models, distiller, loader; returns (result, logged losses)."""
    seed_everything(0)
    teacher, student = bert(2, 16, seed=1).eval(), bert(1, 8, seed=2)
    t_view, s_view = HFAdaptor(teacher, CLASSIFICATION), HFAdaptor(student, CLASSIFICATION)
    logged: list[tuple[int, float]] = []

    def log(metrics: dict, step: int) -> None:
        if "train/loss" in metrics:
            logged.append((step, metrics["train/loss"]))
        if crash_at is not None and step == crash_at:
            raise Crash

    distiller = DISTILLERS.get("basic")(
        student=s_view,
        objective=parse_objective(loss or KD_HARD, t_view, s_view),
        schedules=build_schedules({"temperature": {"kind": "constant", "base": 2.0}}),
        trainer=TrainerSettings(**{"epochs": 3, "log_every": 1, "checkpoint_every": 2, "eval_every": 5, "grad_clip": 1.0, **trainer}),
        make_optimizer=lambda params: torch.optim.AdamW(params, lr=0.01),
        kind=CLASSIFICATION,
        teacher=t_view,
        log=log,
    )
    loader = make_loader(features(), batch_size=4, pad_token_id=0, seed=0, train=True)
    def evaluate() -> dict[str, float]:  # a function of the weights alone, like a dev score
        return {"score": -abs(float(sum(p.sum() for p in student.parameters())) - 1.0)}

    result = distiller.fit(loader, evaluate, "score", False, checkpoints=store)
    return result, logged, [p.detach().clone() for p in student.parameters()]


@pytest.mark.parametrize("crash_at", [3, 8, 16])  # mid-epoch, right after an epoch end, last epoch
def test_a_crashed_fit_resumed_from_its_checkpoint_ends_exactly_as_an_uninterrupted_one(tmp_path, crash_at):
    reference, ref_logged, ref_params = fit(None)
    store = CheckpointStore(tmp_path / "ck", "same-config")
    with pytest.raises(Crash):
        fit(store, crash_at=crash_at)
    assert store.files(), "a checkpoint was written before the crash"
    resumed, logged, params = fit(store)
    assert resumed.steps == reference.steps == 24
    assert resumed.history == reference.history and resumed.best_step == reference.best_step
    assert resumed.final_losses == reference.final_losses
    ref = dict(ref_logged)
    assert logged and all(ref[s] == v for s, v in logged)  # the steps after the checkpoint, loss for loss
    assert all(torch.equal(a, b) for a, b in zip(params, ref_params, strict=True))


@CALLBACKS.register("test_stop_at_step_3")
class StopAtStep3(Callback):
    def on_step_end(self, state, control):
        control.stop = state.step == 3


def test_a_callback_stops_the_loop_after_a_step_with_its_evaluation_and_save(tmp_path):
    reference, ref_logged, _ = fit(None)
    store = CheckpointStore(tmp_path / "ck", "same-config")
    stopped, logged, _ = fit(store, callbacks=["test_stop_at_step_3"])
    assert stopped.steps == 3 and [h["step"] for h in stopped.history] == [3]  # eval_every=5: the end-of-loop one
    assert stopped.best_step == 3 and store.latest()["step"] == 3
    assert logged == ref_logged[:3]  # the steps before the stop are the uninterrupted run's


class _Crash(Exception):
    pass


class _Tracker:
    """Records a teacher stage's logged losses; raises at `crash_at` like a kill would stop it."""

    def __init__(self, crash_at: int | None = None, stage: str = "teacher") -> None:
        self.crash_at, self.steps, self.loss = crash_at, [], f"{stage}/train/loss"

    def log(self, metrics, step):
        if self.loss in metrics:
            self.steps.append(step)
            if step == self.crash_at:
                raise _Crash


def _teacher(cache, tracker):
    from conftest import compose_run

    from brewlab.core.cache import Cache
    from brewlab.data.prepare import prepare_task
    from brewlab.stages.teachers import get_teacher
    from brewlab.train.runtime import Runtime

    cfg = compose_run("debug=smoke", "logger=none", f"cache_dir={cache}", "trainer.checkpoint_every=2")
    rt = Runtime(torch.device("cpu"), Cache(cache), tracker, progress=False)
    prep = prepare_task(cfg, rt.cache)
    seed_everything(1)
    teacher = get_teacher(cfg, run_settings(cfg), prep, None, "eager", rt)
    return teacher.model, teacher.source, teacher.entry


def test_a_killed_teacher_stage_continues_from_its_checkpoint_to_the_same_teacher(tmp_path, caplog):
    caplog.set_level("INFO", logger="brewlab")
    whole, source, entry = _teacher(tmp_path / "a", _Tracker())
    assert source == "trained"
    with pytest.raises(_Crash):  # stopped at step 4 of 6, after the checkpoint of step 2
        _teacher(tmp_path / "b", _Tracker(crash_at=4))
    (kept,) = (tmp_path / "b" / "checkpoints" / "teachers").glob("*/step-*.pt")
    assert kept.name == "step-00000002.pt" and kept.parent.name == entry.name
    assert not (tmp_path / "b" / "teachers").exists()  # nothing published by the killed stage
    tracker = _Tracker()
    resumed, source, entry_b = _teacher(tmp_path / "b", tracker)
    assert source == "trained" and entry_b.name == entry.name
    assert tracker.steps == [4, 6]  # it went on from step 2, it did not start over
    assert "resuming from checkpoint" in caplog.text
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b" / "checkpoints" / "teachers" / entry.name).exists()  # removed once published


def _pretrained(cache, tracker):
    """The masked LM of teacher=pretrained_scratch, pretrained (or continued) into `cache`."""
    from conftest import compose_run

    from brewlab.core.cache import Cache
    from brewlab.stages.teachers import teacher_base
    from brewlab.train.runtime import Runtime

    cfg = compose_run("debug=smoke", "logger=none", "teacher=pretrained_scratch", f"cache_dir={cache}",
                      "trainer.checkpoint_every=2", "teacher.pretrain.train.max_steps=4", "teacher.pretrain.train.log_every=1")
    return Path(teacher_base(cfg, run_settings(cfg), Runtime(torch.device("cpu"), Cache(cache), tracker, progress=False))), cfg


@pytest.mark.slow  # two pretrainings and a resumed one
def test_a_killed_pretraining_stage_publishes_what_an_uninterrupted_one_does(tmp_path, caplog):
    """The resumed launch reads the vocabulary and the encoded corpus from the cache instead of
    making them: neither the masked LM it publishes (tokenizer included) nor the key of the data
    the teacher's stage encodes with its tokenizer (and so the teacher's store entries) may show it."""
    from brewlab.core.cache import Cache
    from brewlab.data.prepare import prepare_task

    caplog.set_level("INFO", logger="brewlab")
    whole, cfg = _pretrained(tmp_path / "a", _Tracker())
    with pytest.raises(_Crash):  # stopped at step 3 of 4, after the checkpoint of step 2
        _pretrained(tmp_path / "b", _Tracker(crash_at=3, stage="pretrain"))
    resumed, _ = _pretrained(tmp_path / "b", _Tracker())
    assert "resuming from checkpoint" in caplog.text and resumed.name == whole.name
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    task = Cache(tmp_path / "task")  # one cache: the keys may differ only by the tokenizer
    ids = {prepare_task(cfg, task, tokenizer_from=str(base)).data_id for base in (whole, resumed)}
    assert len(ids) == 1


def test_checkpoints_keep_the_newest_two_and_skip_an_unreadable_one(tmp_path, caplog):
    store = CheckpointStore(tmp_path, "cfg")
    for step in (2, 4, 6):
        store.save({"value": step}, step)
    assert [p.name for p in store.files()] == ["step-00000006.pt", "step-00000004.pt"]
    store.files()[0].write_bytes(b"truncated by a kill")
    state = store.latest()
    assert state["value"] == 4
    assert "step-00000006.pt is unreadable" in caplog.text and "skipped in favour of an older one" in caplog.text


def test_data_parallel_ranks_resume_from_the_newest_step_they_all_hold(tmp_path):
    # rank 0 was killed after saving step 6, rank 1 before: both must continue from step 4
    from brewlab.core.parallel import common_step

    held = {0: [2, 4, 6], 1: [2, 4]}
    offered = []

    def agree(steps):  # what common_step does across ranks, with rank 1's steps given
        offered.append(steps)
        return max(set(steps) & set(held[1]))

    store = CheckpointStore(tmp_path / "rank-0", "cfg", keep=3, agree=agree)
    for step in held[0]:
        store.save({"value": step}, step)
    assert store.latest()["value"] == 4 and offered == [[2, 4, 6]]
    assert common_step([4, 2]) == 4  # one process: its newest step
    # no step in common: the rank starts over, and drops its steps so none goes stale
    lonely = CheckpointStore(tmp_path / "rank-1", "cfg", agree=lambda steps: None)
    lonely.save({"value": 8}, 8)
    assert lonely.latest() is None and lonely.files() == []


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    CheckpointStore(tmp_path, "old-config").save({"value": 1}, 1)
    with pytest.raises(BrewlabError, match="written by a run with another config.*resume=false"):
        CheckpointStore(tmp_path, "new-config").latest()


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint_valid(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, "cfg")
    store.save({"value": 1}, 10)

    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(BrewlabError, match=r"step-00000020.pt: No space left on device; the previous checkpoint "
                                           r"step-00000010.pt is intact"):
        store.save({"value": 2}, 20)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000010.pt"]  # no temporary file left behind
    assert store.latest()["value"] == 1


def test_a_nan_loss_stops_naming_its_step_and_terms_and_keeps_the_checkpoints(tmp_path, monkeypatch, caplog):
    store = CheckpointStore(tmp_path, "cfg")
    real, calls = DISTILLERS.get("basic").compute_loss, []

    def poisoned(self, batch, step, total):
        loss, parts = real(self, batch, step, total)
        calls.append(step)
        if len(calls) == 6:  # the 6th batch's loss
            loss, parts = loss * float("nan"), {**parts, "kd": parts["kd"] * float("inf")}
        return loss, parts

    monkeypatch.setattr(DISTILLERS.get("basic"), "compute_loss", poisoned)
    with pytest.raises(BrewlabError, match=r"non-finite at step 6 \(hard=[0-9.]+, kd=inf, loss=nan\).*nonfinite=skip"):
        fit(store, log_every=4)
    assert [p.name for p in store.files()] == ["step-00000005.pt", "step-00000004.pt"]  # nothing after the NaN
    calls.clear()
    result, _, params = fit(None, nonfinite="skip")
    assert result.steps == 24 and all(torch.isfinite(p).all() for p in params)
    assert "1 batch(es) with a non-finite loss were skipped" in caplog.text


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env.update({"HF_HUB_OFFLINE": "1", **kwargs.pop("env", {})})
    kwargs.setdefault("timeout", 900)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_sigkilled_runs_resume_to_the_same_metrics_json_in_the_run_directory_stages():
    # the stages whose checkpoints live in the run directory, torchrun's included; the cache's
    # stages (pretrain, teacher) are killed in-process above, and the harness runs all six
    stages = ("student", "labels_only", "torchrun")
    proc = run([str(ROOT / "benchmarks" / "crash_resume.py"), "--kills", "1", "--seed", "3", "--stages", ",".join(stages)], timeout=2400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "stages=3 kills=3 resumed=3 identical=true", proc.stdout[-3000:]
    for stage in stages:
        assert f"{stage}: kills=1 resumed=1 identical=true" in lines
        assert f"{stage}: W&B runs across the launches: 1 (" in proc.stdout  # resumed, not duplicated


def test_same_seed_same_metrics_and_a_finished_run_is_not_redone(cli):
    # wall clock; the first run may train (so load) the teacher, the next reads it or its stored outputs
    clock = ("seconds", "per_second", "source", "teacher_loaded")

    def steady(tree):
        if isinstance(tree, dict):
            return {k: steady(v) for k, v in tree.items() if not any(c in k for c in clock)}
        return tree

    _, first = cli("debug=smoke", "logger=none", name="first")
    _, second = cli("debug=smoke", "logger=none", name="second")
    assert steady(read_metrics(first)) == steady(read_metrics(second))
    before = (first / "metrics.json").read_bytes()
    proc, _ = cli("debug=smoke", "logger=none", name="first")
    assert "had already finished here" in proc.stdout and (first / "metrics.json").read_bytes() == before
    proc, _ = cli("debug=smoke", "logger=none", "resume=false", name="first")
    assert "had already finished" not in proc.stdout and (first / "metrics.json").read_bytes() != before


def test_online_wandb_without_credentials_falls_back_to_offline(cli, tmp_path):
    proc, run_dir = cli("debug=smoke", "logger.mode=online", env={"HOME": str(tmp_path), "NETRC": str(tmp_path / "none")})
    assert "no API key is set (wandb login): logging offline" in proc.stdout + proc.stderr
    assert json.loads((run_dir / "wandb_run.json").read_text())["mode"] == "offline"
    assert read_metrics(run_dir)["student"]["test"]["accuracy"] >= 0


def test_a_damaged_teacher_cache_is_reported_and_trained_again(cli, tmp_path):
    cache = tmp_path / "cache"
    cli("debug=smoke", "logger=none", name="first", cache=cache)
    (entry,) = (cache / "teachers").iterdir()
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a disk error, an interrupted copy
    proc, run_dir = cli("debug=smoke", "logger=none", name="second", cache=cache)
    assert f"teacher cache {entry} is unreadable" in proc.stdout + proc.stderr
    assert read_metrics(run_dir)["teacher"]["source"] == "trained"
    assert weights.stat().st_size > 1000  # published again, whole
