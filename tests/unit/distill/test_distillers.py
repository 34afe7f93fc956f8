"""Layer mappings, objective parsing, projections, teacher-output caching and the loop itself,
on tiny in-memory models."""

from __future__ import annotations

import pytest
import torch
from conftest import KD_HARD, batch, tiny

from brewlab.config.schema import TrainerSettings
from brewlab.core.errors import BrewlabError
from brewlab.data.tasks.classification import Classification
from brewlab.distill.distillers import DISTILLERS
from brewlab.distill.objective import build_projections, parse_objective, uniform_pairs
from brewlab.distill.schedulers import build_schedules
from brewlab.distill.teacher_outputs.memory import TeacherCache
from brewlab.models.adaptors import HFAdaptor
from brewlab.models.build import count_parameters, init_from_teacher_layers
from brewlab.models.shape import Shape


def test_uniform_mapping_matches_the_paper_t3_recipe():
    assert uniform_pairs(12, 3, "hidden") == [(0, 0), (4, 1), (8, 2), (12, 3)]
    assert uniform_pairs(4, 2, "hidden") == [(0, 0), (2, 1), (4, 2)]
    assert uniform_pairs(12, 3, "attention") == [(3, 0), (7, 1), (11, 2)]
    assert uniform_pairs(2, 4, "hidden") == [(0, 0), (1, 2), (2, 4)]


def test_objective_parsing_pairs_and_projections():
    t, s = Shape(4, 32, 2), Shape(2, 16, 2)
    loss = {
        "kd": {"kind": "logits", "fn": "ce", "weight": 1.0},
        "nst": {"kind": "match", "fn": "mmd", "feature": "hidden", "layers": "uniform", "proj": None, "weight": 1.0},
        "fsp": {"kind": "match", "fn": "gram", "feature": "hidden", "layers": "uniform", "proj": "tanh", "weight": 0.5},
        "hidden": {
            "kind": "match",
            "fn": "hidden_mse",
            "feature": "hidden",
            "layers": [{"teacher": 4, "student": 2}],
            "proj": "linear",
            "weight": 2.0,
        },
    }
    obj = parse_objective(loss, t, s)
    by_name = {m.name: m for m in obj.matches}
    assert by_name["nst"].pairs == [((0, 0), (0, 0)), ((2, 2), (1, 1)), ((4, 4), (2, 2))]
    assert by_name["fsp"].pairs == [((0, 2), (0, 1)), ((2, 4), (1, 2))]
    assert by_name["nst"].proj is None and by_name["hidden"].proj == "linear"
    proj = build_projections(obj.matches, t, s)
    assert sorted(proj.keys()) == ["fsp_0", "fsp_1", "fsp_2", "hidden_2"]
    assert isinstance(proj["fsp_0"][1], torch.nn.Tanh) and proj["hidden_2"].weight.shape == (32, 16)


@pytest.mark.parametrize(
    ("term", "message"),
    [
        (
            {
                "kind": "match",
                "fn": "hidden_mse",
                "feature": "hidden",
                "layers": [{"teacher": 5, "student": 0}],
                "proj": "linear",
            },
            "teacher layer 5 is beyond",
        ),
        (
            {"kind": "match", "fn": "attention_mse", "feature": "attention", "layers": "uniform"},
            r"needs equal head counts \(teacher 4, student 2\); use a head-averaged attention loss \(attention_ce_mean, attention_mse_sum\)",
        ),
        (
            {"kind": "match", "fn": "mmd", "feature": "attention", "layers": "uniform"},
            "loss.x.fn='mmd' works on hidden features: set loss.x.feature=hidden",
        ),
        (
            {"kind": "match", "fn": "attention_mse_sum", "feature": "hidden"},
            "loss.x.fn='attention_mse_sum' works on attention features: set loss.x.feature=attention",
        ),
        ({"kind": "match", "fn": "cos", "feature": "hidden", "proj": "gelu"}, "loss.x.proj='gelu' is not valid"),
        ({"kind": "match", "fn": "cosine", "feature": "hidden"}, "loss.x.fn='cosine' is not valid"),
        ({"kind": "sideways"}, "loss.x.kind='sideways' is not valid"),
    ],
)
def test_objective_errors(term, message):
    with pytest.raises(BrewlabError, match=message):
        parse_objective({"x": term}, Shape(4, 32, 4), Shape(2, 16, 2))


def test_init_from_teacher_layers_copies_weights():
    teacher, student = tiny(4, 16), tiny(2, 16, seed=1)
    init_from_teacher_layers(student, teacher, [0, 2])
    for s_i, t_i in ((0, 0), (1, 2)):
        s_state = student.bert.encoder.layer[s_i].state_dict()
        t_state = teacher.bert.encoder.layer[t_i].state_dict()
        assert all(torch.equal(s_state[k], t_state[k]) for k in s_state)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    with pytest.raises(BrewlabError, match="equal hidden sizes"):
        init_from_teacher_layers(tiny(2, 8), teacher, [0, 1])


def test_count_parameters_separates_embeddings():
    model = tiny(2, 16)
    counts = count_parameters(model)
    emb = 40 * 16 + 512 * 16 + 2 * 16  # word, position, token type
    assert counts["total"] - counts["non_embedding"] == emb


def make(name: str, loss: dict, cache: bool = True, seed: int = 0):
    teacher, student = tiny(4, 32, seed=7), tiny(2, 16, seed=seed)
    t_ad, s_ad = HFAdaptor(teacher, Classification), HFAdaptor(student, Classification)
    obj = parse_objective(loss, t_ad, s_ad)
    return DISTILLERS.get(name)(
        student=s_ad,
        objective=obj,
        schedules=build_schedules({"temperature": {"kind": "constant", "base": 2.0}}),
        trainer=TrainerSettings(epochs=2, cache_teacher_outputs=cache, log_every=1, grad_clip=None),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        kind=Classification,
        teacher=t_ad,
        projections=build_projections(obj.matches, t_ad, s_ad),
    )




def test_cached_teacher_outputs_give_the_same_losses():
    cached, plain = make("basic", KD_HARD, cache=True), make("basic", KD_HARD, cache=False)
    for _ in range(2):  # second pass is served from the cache
        b = batch()
        l1, _ = cached.compute_loss(b, 0, 10)
        l2, _ = plain.compute_loss(b, 0, 10)
        assert torch.allclose(l1, l2)
    assert len(cached.outputs.kept()) == 4 and plain.outputs.kept() is None


def hidden_term(weight: float) -> dict:
    return {
        "kind": "match",
        "fn": "hidden_mse",
        "feature": "hidden",
        "layers": "uniform",
        "proj": "linear",
        "weight": weight,
    }


def test_total_loss_is_the_weighted_sum_of_terms():
    loss = {**KD_HARD, "hid": hidden_term(3.0)}
    d = make("general", loss)
    total, parts = d.compute_loss(batch(), 0, 10)
    assert set(parts) == {"kd", "hard", "hid"}
    assert torch.allclose(total, parts["kd"] + 0.5 * parts["hard"] + 3.0 * parts["hid"])


def test_fit_trains_student_and_projections_never_the_teacher():
    loss = {**KD_HARD, "hid": hidden_term(1.0)}
    d = make("general", loss)
    teacher_before = {k: v.clone() for k, v in d.teacher.model.state_dict().items()}
    proj_before = {k: v.clone() for k, v in d.projections.state_dict().items()}
    first, _ = d.compute_loss(batch(), 0, 10)
    data = [batch(i) for i in range(3)]
    evals = iter(range(100))
    result = d.fit(data, evaluate=lambda: {"accuracy": float(next(evals))}, main_metric="accuracy", progress=False)
    assert result.steps == 6 and len(result.history) == 2 and result.best_step == 6
    assert all(torch.equal(v, d.teacher.model.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, d.projections.state_dict()[k]) for k, v in proj_before.items())
    last, _ = d.compute_loss(batch(), 0, 10)
    assert last < first


@pytest.mark.parametrize("fn", ["hidden_mse", "cos"])
def test_per_token_matches_project_only_the_valid_tokens(fn):
    """hidden_mse and cos read each token alone: the distiller hands them the 28 valid tokens of
    the 4 x 9 batch (8 are padding), projected, and the term is the per-token formula's mean
    over those tokens, written out here token by token."""
    d = make("general", {"hid": {**hidden_term(1.0), "fn": fn}})
    rows = []
    for proj in d.projections.values():
        proj.register_forward_hook(lambda module, args, out: rows.append(tuple(args[0].shape)))
    b = batch()
    _, parts = d.compute_loss(b, 0, 10)
    assert rows == [(28, 16)] * 3  # embeddings and both layers, valid tokens only
    with torch.no_grad():
        s = d.student(b, hidden=True).hidden
        t = d.teacher(b, hidden=True).hidden
    per_pair = []
    for t_layer, s_layer in d.objective.matches[0].pairs:
        proj = d.projections[f"hid_{s_layer}"]
        values = []
        for i, j in b["attention_mask"].nonzero().tolist():
            p, q = proj(s[s_layer][i, j]), t[t_layer][i, j]
            values.append(((p - q) ** 2).mean() if fn == "hidden_mse" else 1 - p.dot(q) / (p.norm() * q.norm()))
        per_pair.append(torch.stack(values).mean())
    assert parts["hid"].item() == pytest.approx(torch.stack(per_pair).mean().item(), rel=1e-5)


def test_trainer_uses_labels_only():
    d = make("trainer", KD_HARD)
    total, parts = d.compute_loss(batch(), 0, 10)
    assert set(parts) == {"hard"} and d.teacher is None
    assert torch.allclose(total, parts["hard"])


def test_teacher_cache_packs_rows_and_survives_a_checkpoint(monkeypatch):
    """Token-level rows of different lengths spread over several buffers come back padded
    exactly as they went in, also after a state_dict round trip (a resumed run)."""
    monkeypatch.setattr(TeacherCache, "FIRST", 10)  # a few rows per buffer; each next one doubles, up to 40
    monkeypatch.setattr(TeacherCache, "SLAB", 40)
    cache = TeacherCache(seq_axis=0, pad_value=-7.0)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for b in range(3):
        lengths = torch.tensor([5, 3, 6, 1])
        mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
        logits = torch.randn(4, 6, 3, generator=gen)
        idx = torch.arange(4) + 4 * b
        cache.put(idx, logits, mask)
        batches.append((idx, torch.where(mask[..., None].bool(), logits, torch.tensor(-7.0))))
    assert len(cache) == 12 and [s.numel() for s in cache.slabs] == [15, 30, 40, 40, 40]  # a 15-element row outgrows the first 10
    restored = TeacherCache(seq_axis=0, pad_value=-7.0)
    restored.load_state_dict(cache.state_dict())
    for idx, expected in batches:
        assert torch.equal(cache.get(idx, expected), expected)
        assert torch.equal(restored.get(idx, expected), expected)
    assert cache.get(torch.tensor([0, 99]), batches[0][1]) is None  # one row never seen
    restored.put(torch.tensor([50]), torch.ones(1, 6, 3), torch.ones(1, 6))  # appends after a resume
    assert torch.equal(restored.get(torch.tensor([50]), torch.zeros(1, 6, 3)), torch.ones(1, 6, 3))


def test_teacher_cache_reads_checkpoints_of_the_older_row_layout():
    """Checkpoints written before rows were packed hold `{idx: row}`; a resume must read them."""
    rows = {0: torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 7: torch.tensor([[5.0, 6.0]])}
    cache = TeacherCache(seq_axis=0, pad_value=-1.0)
    cache.load_state_dict(rows)
    got = cache.get(torch.tensor([7, 0]), torch.zeros(2, 3, 2))
    assert got.tolist() == [[[5, 6], [-1, -1], [-1, -1]], [[1, 2], [3, 4], [-1, -1]]]
    cache.put(torch.tensor([9]), torch.full((1, 3, 2), 8.0), torch.tensor([[1, 1, 0]]))
    assert len(cache) == 3 and cache.get(torch.tensor([9]), torch.zeros(1, 2, 2)).tolist() == [[[8, 8], [8, 8]]]


def test_only_an_unpadded_batch_drops_its_mask():
    from brewlab.distill.distillers import padding_mask

    padded = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert padding_mask(torch.ones(2, 3, dtype=torch.long)) is None
    assert padding_mask(padded) is padded


def test_the_objective_prints_the_formula_it_computes():
    from brewlab.distill.objective import LogitTerm, MatchTerm, Objective

    kd = LogitTerm("kd", None, 1.0, True, "kl")
    nst = MatchTerm("nst", "nst", "hidden", [(2, 1), (4, 2)], 0.5, None)
    hidden = MatchTerm("hidden", "hidden_mse", "hidden", [(0, 0), (4, 2)], 2.0, "linear")
    assert str(Objective([kd], 0.3, [nst, hidden])) == (
        "0.3*hard + 1*kd(kl, T^2-scaled) + 0.5*nst(nst on hidden, teacher>student layers 2>1 4>2)"
        " + 2*hidden(hidden_mse on hidden, teacher>student layers 0>0 4>2, linear projection)"
    )
    assert str(Objective([], 0.0, [])) == "0"
