"""The BiGRU student: padding never leaks into its outputs, it saves and reloads with identical
predictions, exposes per-layer hidden states, and distils end to end on every task kind."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_run, read_metrics

from brewlab.core.errors import BrewlabError
from brewlab.data.tasks import KINDS
from brewlab.models.bigru import BiGRUConfig
from brewlab.models.build import bigru_head, load_pretrained, save_model
from brewlab.run.validate import validate

HEADS = ["classification", "token_classification", "span_extraction"]


def model_for(kind_name: str, seed: int = 0):
    torch.manual_seed(seed)
    config = BiGRUConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, dropout=0.0, num_labels=3, pad_token_id=0)
    return bigru_head(KINDS.get(kind_name))(config).eval()


def inputs(padding: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 6, 7, 8, 9], [4, 3, 2, 0, 0]])
    mask = (ids != 0).long()
    if padding:
        ids = torch.cat([ids, torch.zeros(2, padding, dtype=torch.long)], 1)
        mask = torch.cat([mask, torch.zeros(2, padding, dtype=torch.long)], 1)
    return {"input_ids": ids, "attention_mask": mask}


def logits_of(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else torch.stack([out.start_logits, out.end_logits], 1)


@pytest.mark.parametrize("kind_name", HEADS)
def test_padding_does_not_change_outputs(kind_name):
    model = model_for(kind_name)
    with torch.no_grad():
        short, long = logits_of(model(**inputs())), logits_of(model(**inputs(padding=4)))
        alone = logits_of(model(input_ids=torch.tensor([[4, 3, 2]]), attention_mask=torch.ones(1, 3, dtype=torch.long)))
    if kind_name == "classification":
        assert torch.allclose(short, long, atol=1e-6)
        assert torch.allclose(short[1], alone[0], atol=1e-6)  # the padded row equals the row alone
    elif kind_name == "token_classification":  # (B, L, C)
        assert torch.allclose(short, long[:, :5], atol=1e-6)
        assert torch.allclose(short[1, :3], alone[0], atol=1e-6)
    else:  # (B, 2, L)
        assert torch.allclose(short, long[..., :5], atol=1e-6)
        assert torch.allclose(short[1, :, :3], alone[0], atol=1e-6)


@pytest.mark.parametrize("kind_name", HEADS)
def test_save_and_reload_gives_identical_predictions(kind_name, tmp_path):
    from brewlab.models.build import load_tokenizer
    from brewlab.models.vocab import build_char_tokenizer

    model = model_for(kind_name, seed=3)
    tokenizer = build_char_tokenizer(["abcdefghijklmnopqrstuvwxy"], 1, None)
    save_model(model, tokenizer, tmp_path / "student")
    kind = KINDS.get(kind_name)
    loaded = load_pretrained(str(tmp_path / "student"), kind, 3, key="student").eval()
    assert type(loaded) is type(model) and loaded.config.hidden_size == 16
    assert len(load_tokenizer(str(tmp_path / "student"))) == len(tokenizer)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        before, after = logits_of(model(**inputs(2))), logits_of(loaded(**inputs(2)))
    # same weights; the CPU GRU kernel may differ in the last float bits between two module instances
    assert torch.allclose(before, after, atol=1e-6) and torch.equal(before.argmax(-1), after.argmax(-1))


def test_hidden_states_are_embeddings_plus_one_per_layer():
    out = model_for("token_classification")(**inputs(), output_hidden_states=True)
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 5, 16)] * 3
    assert torch.equal(out.hidden_states[2][1, 3:], torch.zeros(2, 16))  # padding states are zero
    with pytest.raises(ValueError, match="no attention maps"):
        model_for("classification")(**inputs(), output_attentions=True)


def test_no_head_for_masked_lm():
    with pytest.raises(BrewlabError, match="student.kind=bigru has no head for AutoModelForMaskedLM"):
        bigru_head(KINDS.get("masked_lm"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=att"], "loss.att.feature=attention: the student has no attention maps (a BiGRU); match hidden states"),
        (["student.init_from_teacher_layers=[0,1]"], "student.init_from_teacher_layers needs a BERT student"),
        (["student.arch.hidden_size=15"], "student.arch.hidden_size=15 must be even for a BiGRU"),
        (["student.kind=lstm"], "student.kind='lstm' is not valid; choose one of: bert, bigru"),
    ],
)
def test_bigru_config_errors(overrides, message):
    with pytest.raises(BrewlabError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate(compose_run("student=bigru", "logger=none", *overrides))


@pytest.mark.parametrize(
    ("task", "loss"), [("reviews_zh", "kd+hidden"), ("pd98_ner", "kd+hard"), ("cmrc_pd98", "kd+hidden")]
)
def test_bigru_student_distils_each_task_kind(cli, task, loss):
    # a narrower student than the smoke teacher (32), so hidden matches go through a projection
    _, run_dir = cli("debug=smoke", "student=bigru", "student.arch.hidden_size=16", f"task={task}", f"loss={loss}", name=task)
    m = read_metrics(run_dir)
    assert m["student"]["parameters"]["total"] < m["teacher"]["parameters"]["total"]
    assert all(k in m["student"]["final_losses"] for k in loss.split("+"))
    main = m["task"]["main_metric"]
    assert 0 <= m["student"]["test"][main] <= 1
    if "hidden" in loss:  # GRU states projected to the teacher's width
        assert (run_dir / "student" / "projections.safetensors").is_file()


def test_the_student_kind_builds_its_student():
    """`student.kind` picks the builder: a BiGRU without attention, or a BERT of the same `arch`."""
    from brewlab.models.kinds import STUDENT_KINDS
    from brewlab.models.vocab import build_char_tokenizer

    tokenizer = build_char_tokenizer(["好差不错"])
    arch = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    kind = KINDS.get("classification")
    bigru = STUDENT_KINDS.props("bigru").build({**arch, "dropout": 0.0}, tokenizer, kind, 3, "sdpa")
    bert = STUDENT_KINDS.props("bert").build(arch, tokenizer, kind, 3, "sdpa")
    assert isinstance(bigru.config, BiGRUConfig) and type(bert).__name__ == "BertForSequenceClassification"
    for model in (bigru, bert):
        assert model.config.vocab_size == len(tokenizer) and model.config.num_labels == 3
    assert not any("attention" in name for name, _ in bigru.named_parameters())
    assert bert.config.num_attention_heads == 2
