"""The typed schema of the config groups whose keys do not vary by preset: the training loop
(`trainer`, and `teacher.train` / `teacher.pretrain.train` for the teacher's own stages), the
logger and the top-level keys.

Each field carries its default and its help, like `transformers.TrainingArguments`, and is the
only place that default is written: the group's YAML starts from the schema (`defaults: [schema]`).
A validated section becomes its dataclass (`settings`, `run_settings`), passed down in place of the
dict, so code reads attributes without casts or fallbacks. Hydra checks types when it composes (a
bad type is named with its key before anything runs); `check` adds ranges and choices from each
field's metadata.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from brewlab.core.errors import BrewlabError, bad_choice

PRECISIONS = ("fp32", "bf16", "fp16")
NONFINITE = ("stop", "skip")
LOGGER_MODES = ("offline", "online", "disabled")
FEATURE_PRECISIONS = ("fp32", "fp16", "bf16")
S = TypeVar("S")


def _f(default: Any, help: str, **rules: Any) -> Any:
    """A schema field: default, help and the rules `check` applies (ge, gt, choices, integer)."""
    return field(default=default, metadata={"help": help, **rules})


@dataclass
class LoopSettings:
    """What one training loop reads, in the student's stage (`trainer`) and the teacher's."""

    epochs: int = _f(3, "passes over the training data", ge=1)
    batch_size: int = _f(32, "training examples per batch", ge=1)
    length_pool: int = _f(
        8,
        "training batches are cut from shuffled pools of this many length-sorted batches: bigger pools pad "
        "less but make batches of alike examples (1 = no grouping)",
        ge=1,
    )
    eval_batch_size: int = _f(32, "dev and test batch size", ge=1)
    max_steps: int | None = _f(None, "stop after this many optimizer steps (null: run all epochs)", ge=1)
    eval_every: int | None = _f(None, "evaluate on validation every N steps (null: each epoch); the best is kept", ge=1)
    log_every: int = _f(50, "steps between logged losses (the only host sync in the loop)", ge=1)
    grad_clip: float | None = _f(1.0, "max gradient norm over the trained parameters (null: no clipping)", gt=0)
    grad_accum: int = _f(1, "batches per optimizer step (effective batch = batch_size x grad_accum)", ge=1)
    precision: str = _f(
        "fp32", "autocast for teacher and student forwards (fp16 adds a gradient scaler)", choices=PRECISIONS
    )
    nonfinite: str = _f(
        "stop",
        "stop: a NaN/inf loss ends the run, checkpoints untouched; skip: drop that batch and go on",
        choices=NONFINITE,
    )


@dataclass
class StageTrainSettings(LoopSettings):
    """A teacher stage (`teacher.train`, `teacher.pretrain.train`): its own rate and seed."""

    lr: float | None = _f(None, "this stage's learning rate (null: optim.lr)", gt=0)
    seed: int | None = _f(None, "this stage's seed (null: teacher.seed)")


@dataclass
class TrainerSettings(LoopSettings):
    """The student's loop, plus what only the run as a whole decides."""

    compile: bool = _f(False, "torch.compile the student (needs a C++ compiler on the CPU; pays off on long runs)")
    checkpoint_every: int | None = _f(
        200, "optimizer steps between checkpoints (also after every evaluation); null: evaluations only", ge=1
    )
    checkpoints_kept: int = _f(2, "newest checkpoints kept in <run dir>/checkpoints (removed once the run finishes)", ge=1)
    cache_teacher_outputs: bool = _f(
        True,
        "without the store: keep teacher logits in memory for one run when inputs repeat (computed before training, "
        "in the store's canonical batches)",
    )
    teacher_store: bool = _f(
        True,
        "compute the teacher's outputs on the training data once and keep them on disk under the cache "
        "(<cache>/teacher_outputs), read by every later epoch, job, seed and rank",
    )
    teacher_store_max_gb: float = _f(
        20.0, "the largest teacher-output entry written (GB); a bigger one is skipped with a warning", gt=0
    )
    teacher_store_features: str = _f(
        "fp32", "precision of stored hidden states and attention maps (logits are always fp32)", choices=FEATURE_PRECISIONS
    )
    heap_trim_every_s: float | None = _f(
        5.0,
        "seconds between handing freed heap pages back to the OS (glibc malloc_trim; keeps peak RSS down with "
        "dynamic padding); null: never",
        gt=0,
    )
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:<index>")
    progress: bool = _f(True, "show progress bars")
    callbacks: list[str] = field(
        default_factory=list,
        metadata={"help": "the user's training-loop callbacks (registered in CALLBACKS by a `plugins` module), "
                  "run after the built-in ones in the student's stages"},
    )


@dataclass
class Logger:
    """Experiment tracking; `name` picks the tracker (see brewlab/train/tracking.py)."""

    name: str = _f("none", "tracker: wandb or none")
    mode: str = _f("offline", "W&B mode (the WANDB_MODE variable wins); online needs credentials", choices=LOGGER_MODES)
    project: str = _f("brewlab", "W&B project")
    entity: str | None = _f(None, "W&B entity (team or user); null: the account's default")
    init_timeout: float = _f(60.0, "seconds to reach W&B online before falling back to offline", gt=0)


@dataclass
class TopLevel:
    """Keys at the top of the composed config (not structured, so `check` tests their types;
    their defaults are in conf/config.yaml)."""

    seed: int = _f(dataclasses.MISSING, "the student's seed: initialisation, data order, dropout", integer=True)


@dataclass(frozen=True)
class RunSettings:
    """What the run reads of its validated config, built once (`run_settings`) and passed down;
    the config itself is kept only where it is hashed (fingerprints, cache keys)."""

    seed: int
    resume: bool | str  # auto, true or false
    trainer: TrainerSettings


def run_settings(cfg: Mapping[str, Any]) -> RunSettings:
    """The typed settings of a validated config."""
    return RunSettings(cfg["seed"], cfg["resume"], settings(cfg["trainer"], TrainerSettings))


# Keys that presets of the other groups may leave out: their defaults live here, and code reads
# such a section through `settings` (or `with_defaults` where the section is passed on whole); the
# composed config, and so every fingerprint, is unchanged.


@dataclass
class StudentOptions:
    kind: str = _f("bert", "bert: a BERT encoder built from `arch`; bigru: a BiGRU of `arch` (brewlab/models/kinds.py)")


@dataclass
class TeacherOptions:
    finetune: bool = _f(False, "train the teacher on the task first (always true for teacher=scratch)")


@dataclass
class SplitOptions:
    """`task.split`: how the splits a source lacks are cut from its pool."""

    validation: float = _f(0.1, "share of the pool carved out as validation when the source has none", ge=0)
    test: float = _f(0.1, "share of the pool carved out as test when the source has none", ge=0)
    seed: int = _f(1234, "seed that carves missing validation/test splits and draws train_fraction's subset", integer=True)


@dataclass
class TaskBase:
    """What every task preset starts from (`defaults: [schema]`, the `task/schema` node)."""

    train_fraction: float = _f(1.0, "keep this share of the training split (fixed seed), to study the low-resource case", gt=0)
    split: SplitOptions = field(default_factory=SplitOptions, metadata={"help": "fractions and seed of carved splits"})


@dataclass
class TaskOptions(TaskBase):
    label_field: str = _f("label", "the label's column in the source rows (classification)")


@dataclass
class TokenizerOptions:
    min_freq: int = _f(1, "a character enters the built vocabulary once it occurs this often", ge=1)


@dataclass
class AugmentationOptions:
    language: str = _f("auto", "the text's language for the augmenters (auto: detected from the data)", choices=("auto", "zh", "en"))


@dataclass
class MaskedLMOptions:
    """An `augmentation.ops.<name>` of kind mlm."""

    top_k: int = _f(8, "a replacement is drawn from the masked LM's k most likely tokens", ge=1)
    batch_size: int = _f(32, "texts per masked-LM forward", ge=1)
    max_length: int = _f(256, "tokens per text the masked LM reads (capped by its position embeddings)", ge=1)


@dataclass
class MaskingOptions:
    """`task.masking` of the masked-LM task (its `prob` and `seed` are always written)."""

    whole_word: bool = _f(False, "mask whole jieba words, not single characters")


@dataclass
class LossTermOptions:
    """A `loss.<term>` entry (its `kind`: hard, logits or match, is always written)."""

    weight: float = _f(1.0, "the term's weight in the total loss", ge=0)
    fn: str | None = _f(None, "logits: ce, kl or mse (null: ce); match: the registered match loss")
    t2_scaling: bool = _f(False, "logits: multiply by T^2 (Hinton's gradient correction)")
    layers: Any = _f("uniform", "match: uniform, or a list of {teacher: i, student: j} pairs")
    proj: str | None = _f(None, "match: projection of student features to the teacher's size (linear, relu, tanh)")


@dataclass
class TemperatureSchedule:
    """`scheduler.temperature`; a per-example kind's parameters (beta, gamma, eps) join these."""

    kind: str = _f("constant", "constant, or per example: flsw, cwsm (brewlab/distill/schedulers/temperatures.py)")
    base: float = _f(4.0, "the temperature (a per-example kind's batch mean)", gt=0)


@dataclass
class LRSchedule:
    """`scheduler.lr`; a kind's parameters (slanted_triangular's cut_frac, ratio) join these."""

    kind: str = _f("linear", "linear | constant | slanted_triangular")
    warmup_ratio: float = _f(0.1, "share of the steps warming up from 0 (linear and constant)", ge=0)


@dataclass
class Scheduler:
    """The `scheduler` section every run starts from (conf/scheduler_base.yaml); each
    scheduler/<option> changes only what it names, so options combine (scheduler=flsw+pshift)."""

    temperature: TemperatureSchedule = field(default_factory=TemperatureSchedule, metadata={"help": "softmax temperature"})
    kd_weight: str = _f("constant", "constant | linear_decay | linear_growth (multiplies loss.kd.weight)")
    hard_weight: str = _f("constant", "same choices, multiplies loss.hard.weight")
    lr: LRSchedule = field(default_factory=LRSchedule, metadata={"help": "learning-rate schedule"})
    probability_shift: bool = _f(False, "swap the teacher's top logit with the gold one when it is wrong")


def with_defaults(values: Mapping[str, Any] | None, schema: type) -> dict[str, Any]:
    """A config section with the keys of `schema` it leaves out filled from their defaults."""
    return {**dataclasses.asdict(schema()), **(values or {})}


def settings(values: Mapping[str, Any], schema: type[S]) -> S:
    """The typed settings of one validated section: `schema` built from `values`, its nested
    sections too, so code reads attributes and never a raw key. Keys the schema does not declare
    (a preset's own) are not carried; keys `values` leaves out take their defaults."""
    types = typing.get_type_hints(schema)
    given = {}
    for spec in dataclasses.fields(schema):
        if spec.name in values:
            value = values[spec.name]
            nested = dataclasses.is_dataclass(types[spec.name]) and isinstance(value, Mapping)
            given[spec.name] = settings(value, types[spec.name]) if nested else value
    return schema(**given)


def trainer_default(key: str) -> Any:
    """The schema's default of one `trainer` key."""
    spec = next(f for f in dataclasses.fields(TrainerSettings) if f.name == key)
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def register() -> None:
    """Make the schemas available to Hydra as `trainer/schema`, `logger/schema`, `task/schema`,
    `schema/stage_train` and `schema/scheduler`."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="trainer", name="schema", node=TrainerSettings)
    store.store(group="logger", name="schema", node=Logger)
    store.store(group="schema", name="stage_train", node=StageTrainSettings)
    # untyped nodes: presets add keys of their own beside these (a task's source, a kind's parameters)
    store.store(group="task", name="schema", node=dataclasses.asdict(TaskBase()))
    store.store(group="schema", name="scheduler", node=dataclasses.asdict(Scheduler()))


def check(key: str, values: Mapping[str, Any], schema: type) -> None:
    """Ranges and choices of `values` (one composed section) by `schema`'s field rules."""
    for spec in dataclasses.fields(schema):
        if spec.name not in values:
            continue
        value, rules, name = values[spec.name], spec.metadata, f"{key}.{spec.name}" if key else spec.name
        if value is None:
            continue
        if "choices" in rules and value not in rules["choices"]:
            raise bad_choice(name, value, rules["choices"])
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if rules.get("integer") and not (isinstance(value, int) and not isinstance(value, bool)):
            raise BrewlabError(f"{name}={value!r} must be an integer")
        for rule, ok, text in (("ge", lambda v, m: v >= m, ">="), ("gt", lambda v, m: v > m, ">")):
            if rule in rules and (not number or math.isnan(value) or not ok(value, rules[rule])):
                raise BrewlabError(f"{name}={_shown(value)} must be a number {text} {rules[rule]}")


def _shown(value: Any) -> str:
    """The value as the user wrote it (Hydra turns a float field's 0 into 0.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


register()
