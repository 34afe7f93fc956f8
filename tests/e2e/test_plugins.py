"""Extending brewlab without editing it: a user's module registers a loss, a YAML file in the
user's own config directory presets it, and `run.py` runs it."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import read_metrics

from brewlab.distill.losses import MATCH_LOSSES
from brewlab.distill.objective import parse_objective
from brewlab.models.shape import Shape

PAIR_LOSS = '''
import json, os

from brewlab.distill.losses import MATCH_LOSSES, MatchProps


@MATCH_LOSSES.register("toy_pair", MatchProps(layers="consecutive"))
def toy_pair(feat_s, feat_t, mask=None):
    """How far each side moves between its two layers, matched as one number per side."""
    (s_a, s_b), (t_a, t_b) = feat_s, feat_t
    with open(os.environ["TOY_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps([list(s_a.shape), list(s_b.shape), list(t_a.shape), list(t_b.shape)]) + "\\n")
    return ((s_b - s_a).pow(2).mean() - (t_b - t_a).pow(2).mean().detach()).pow(2)
'''

PAIR_PRESET = """
defaults:
  - kd
  - _self_
toy_pair: {kind: match, fn: toy_pair, weight: 1.0, layers: uniform}
"""


def run_plugin(cli, tmp_path, module: str, source: str, presets: dict, calls, *overrides: str):
    """Run run.py (smoke sizes) with the user's module `source` as a plugin and its YAML
    `presets` ({"group/name": text}) in the user's config directory; returns the run directory."""
    (tmp_path / f"{module}.py").write_text(source, encoding="utf-8")
    (tmp_path / "conf").mkdir(exist_ok=True)
    for where, text in presets.items():
        path = tmp_path / "conf" / f"{where}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    _, run_dir = cli(
        f"plugins=[{module}]",
        *overrides,
        "debug=smoke",
        "logger=none",
        flags=("--config-dir", str(tmp_path / "conf")),
        env={"PYTHONPATH": str(tmp_path), "TOY_LOG": str(calls)},
    )
    return run_dir


def test_a_pair_loss_is_one_function_and_one_yaml_file(cli, tmp_path):
    calls = tmp_path / "calls.jsonl"
    run_dir = run_plugin(cli, tmp_path, "toy_pair_loss", PAIR_LOSS, {"loss/toy_pair": PAIR_PRESET}, calls, "loss=toy_pair")
    metrics = read_metrics(run_dir)
    assert metrics["loss"] == ["kd", "toy_pair"]
    assert "toy_pair" in metrics["student"]["final_losses"]
    shapes = [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()]
    # the default student has 2 layers, so its hidden states 0..2 give 2 consecutive pairs per step
    assert len(shapes) == 2 * metrics["student"]["steps"]
    for s_a, s_b, t_a, t_b in shapes:
        assert s_a == s_b and t_a == t_b and s_a[:2] == t_a[:2]


def test_registered_properties_choose_the_layer_mapping():
    teacher, student = Shape(4, 32, 4), Shape(2, 16, 2)
    # uniform hidden mapping for depths 4 -> 2: teacher 0, 2, 4 to student 0, 1, 2
    flow = parse_objective({"f": {"kind": "match", "fn": "fsp", "proj": "linear"}}, teacher, student).matches[0]
    assert flow.pairs == [((0, 2), (0, 1)), ((2, 4), (1, 2))]
    within = parse_objective({"n": {"kind": "match", "fn": "nst"}}, teacher, student).matches[0]
    assert within.pairs == [((0, 0), (0, 0)), ((2, 2), (1, 1)), ((4, 4), (2, 2))]
    assert within.proj is None  # nst normalises each side by its own size: no projection
    attention = parse_objective({"a": {"kind": "match", "fn": "attention_mse_sum"}}, teacher, student).matches[0]
    assert attention.feature == "attention" and attention.pairs == [(1, 0), (3, 1)]
    assert MATCH_LOSSES.props("hidden_mse").same_size and not MATCH_LOSSES.props("nst").same_size


TOY_LAB = '''
import os

import torch

from brewlab.distill.distillers import DISTILLERS, GeneralDistiller
from brewlab.data.tasks import SOURCES


@SOURCES.register("toy_parity")
def toy_parity(cfg):
    """Strings of a and b, labelled by whether they hold an odd number of a's: 300 rows."""
    rows = []
    for i in range(300):
        text = format(i, "b").replace("0", "b").replace("1", "a")
        rows.append({"text": text, "label": text.count("a") % 2})
    return {"all": rows}


@DISTILLERS.register("toy_anchor")
class ToyAnchor(GeneralDistiller):
    """General distillation plus a term that keeps the student's logits near zero."""

    def compute_loss(self, batch, step, total):
        loss, parts = super().compute_loss(batch, step, total)
        logits = self.student(batch).logits
        parts["anchor"] = logits.pow(2).mean()
        with open(os.environ["TOY_LOG"], "a", encoding="utf-8") as f:
            f.write(f"{step} {len(batch['input_ids'])}\\n")
        return loss + 0.1 * parts["anchor"], parts
'''

TOY_TASK = """
name: toy_parity
kind: classification
source: toy_parity
label_names: [even, odd]
text_fields: [text]
max_seq_length: 16
split: {validation: 0.2, test: 0.2, seed: 7}
limit: {train: null, validation: null, test: null}
train_fraction: 1.0
tokenizer: {min_freq: 1, max_size: null}
data: {train_file: null, validation_file: null, test_file: null}
"""


def test_a_toy_distiller_and_a_toy_task_run_through_run_py(cli, tmp_path):
    """Both are registered by a user's module and preset by its YAML files: no brewlab edit."""
    from transformers import AutoModelForSequenceClassification

    calls = tmp_path / "calls.txt"
    presets = {"task/toy": TOY_TASK, "distiller/toy": "name: toy_anchor\n"}
    run_dir = run_plugin(cli, tmp_path, "toy_lab", TOY_LAB, presets, calls, "task=toy", "distiller=toy")
    metrics = read_metrics(run_dir)
    assert metrics["distiller"] == "toy_anchor" and metrics["task"]["name"] == "toy_parity"
    # 300 rows, 20% validation and 20% test carved by the split seed, then the smoke slices (64)
    assert metrics["task"]["sizes"] == {"train": 180, "validation": 60, "test": 60}
    assert {"anchor", "kd", "hard"} <= set(metrics["student"]["final_losses"])
    lines = calls.read_text(encoding="utf-8").split()
    assert len(lines) == 2 * metrics["student"]["steps"] == 2 * 6  # (step, batch size) per call, 6 smoke steps
    student = AutoModelForSequenceClassification.from_pretrained(run_dir / "student")
    assert student.config.num_labels == 2
    assert 0.0 <= metrics["student"]["test"]["accuracy"] <= 1.0 and "accuracy" in metrics["teacher"]["test"]


TOY_CALLBACK = '''
import json, os

from brewlab.train.callbacks import CALLBACKS, Callback


@CALLBACKS.register("toy_steps")
class ToySteps(Callback):
    """Writes down what the loop shows it: its steps, evaluations and last logged losses."""

    def write(self, **event):
        with open(os.environ["TOY_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\\n")

    def on_train_begin(self, state, control):
        self.write(begin=state.step, total=control.total)

    def on_step_end(self, state, control):
        self.write(step=state.step, lr=control.lr)

    def on_evaluate(self, state, control):
        self.write(dev=state.history[-1]["step"])

    def on_train_end(self, state, control):
        self.write(end=state.step, values=state.values)
'''


def test_a_user_callback_named_in_config_sees_every_step_of_the_run(cli, tmp_path):
    """Registered by a user's module and named in `trainer.callbacks`: called after the built-in
    callbacks with the loop's own state (the teacher's cached stage runs no user callback)."""
    calls = tmp_path / "calls.jsonl"
    run_dir = run_plugin(cli, tmp_path, "toy_callback", TOY_CALLBACK, {}, calls, "trainer.callbacks=[toy_steps]")
    metrics = read_metrics(run_dir)
    events = [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()]
    steps = metrics["student"]["steps"]
    assert steps == 6  # debug=smoke
    assert events[0] == {"begin": 0, "total": steps}
    assert [e["step"] for e in events if "step" in e] == list(range(1, steps + 1))
    run_log = (run_dir / "run.log").read_text(encoding="utf-8")
    for e in events:  # the learning rate the loop logged at its log points (log_every=2)
        if "step" in e and e["step"] % 2 == 0:
            assert f"step {e['step']}/{steps} lr {e['lr']:.3g} " in run_log
    assert [e["dev"] for e in events if "dev" in e] == [steps]  # one epoch: evaluated at its end
    assert events[-1] == {"end": steps, "values": metrics["student"]["final_losses"]}


def test_an_unknown_callback_is_named_with_the_registered_ones():
    from brewlab.core.errors import BrewlabError
    from brewlab.train.callbacks import CALLBACKS, user_callbacks

    with pytest.raises(BrewlabError) as caught:
        user_callbacks(["nope"])
    assert str(caught.value) == f"trainer.callbacks='nope' is not valid; choose one of: {', '.join(CALLBACKS.names())}"
