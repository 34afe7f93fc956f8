"""Tests for brewlab.distill.losses: every loss against a written-out scalar-loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from brewlab.core.errors import BrewlabError
from brewlab.distill.losses import LOGIT_LOSSES, MATCH_LOSSES, probability_shift

DT = torch.float64


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT) * scale


def attn(b: int, h: int, length: int, seed: int) -> torch.Tensor:
    """Random attention probability maps (rows sum to 1)."""
    return torch.softmax(rand(b, h, length, length, seed=seed, scale=2.0), dim=-1)


# --------------------------------------------------------------------------- scalar references


def log_softmax_list(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(x - m) for x in z))
    return [x - lse for x in z]


def ref_logit(name: str, s, t, temp, mask, t2: bool) -> float:
    """Loop reference for the KD logit losses; s, t nested lists (B, C) or (B, L, C)."""
    items = []  # (example index, student row, teacher row, valid)
    for b in range(len(s)):
        if isinstance(s[b][0], list):
            for pos in range(len(s[b])):
                ok = True if mask is None else bool(mask[b][pos])
                items.append((b, s[b][pos], t[b][pos], ok))
        else:
            items.append((b, s[b], t[b], True if mask is None else bool(mask[b])))
    total, count = 0.0, 0
    for b, srow, trow, ok in items:
        if not ok:
            continue
        big_t = temp[b] if isinstance(temp, list) else float(temp)
        zs = [x / big_t for x in srow]
        zt = [x / big_t for x in trow]
        lps, lpt = log_softmax_list(zs), log_softmax_list(zt)
        pt = [math.exp(x) for x in lpt]
        n = len(zs)
        if name == "ce":
            val = -sum(pt[c] * lps[c] for c in range(n))
        elif name == "mse":
            val = sum((zs[c] - zt[c]) ** 2 for c in range(n)) / n
        else:
            val = sum(pt[c] * (lpt[c] - lps[c]) for c in range(n))
        if t2:
            val *= big_t * big_t
        total += val
        count += 1
    return total / count


def ok_tok(mask, b: int, i: int) -> bool:
    return True if mask is None else bool(mask[b][i])


def ref_hidden_mse(s, t, mask) -> float:
    total, n = 0.0, 0
    for b in range(len(s)):
        for i in range(len(s[b])):
            if ok_tok(mask, b, i):
                n += 1
                for d in range(len(s[b][i])):
                    total += (s[b][i][d] - t[b][i][d]) ** 2
    return total / (n * len(s[0][0]))


def ref_cos(s, t, mask) -> float:
    total, n = 0.0, 0
    for b in range(len(s)):
        for i in range(len(s[b])):
            if ok_tok(mask, b, i):
                u, v = s[b][i], t[b][i]
                dot = sum(x * y for x, y in zip(u, v, strict=False))
                nu = math.sqrt(sum(x * x for x in u))
                nv = math.sqrt(sum(y * y for y in v))
                total += 1.0 - dot / (nu * nv)
                n += 1
    return total / n


def ref_pkd(s, t, mask) -> float:
    total = 0.0
    for b in range(len(s)):
        u, v = s[b][0], t[b][0]
        nu = math.sqrt(sum(x * x for x in u))
        nv = math.sqrt(sum(y * y for y in v))
        total += sum((x / nu - y / nv) ** 2 for x, y in zip(u, v, strict=False))
    return total / len(s)


def heads_combined(a, how: str):
    """Sum or mean over heads of nested (B, H, L, L) lists -> (B, 1, L, L)."""
    out = []
    for b in range(len(a)):
        h = len(a[b])
        size = len(a[b][0])
        m = [[sum(a[b][k][i][j] for k in range(h)) for j in range(size)] for i in range(size)]
        if how == "mean":
            m = [[x / h for x in row] for row in m]
        out.append([m])
    return out


def ref_attention_mse(s, t, mask) -> float:
    total, n = 0.0, 0
    for b in range(len(s)):
        for k in range(len(s[b])):
            for i in range(len(s[b][k])):
                for j in range(len(s[b][k][i])):
                    if ok_tok(mask, b, i) and ok_tok(mask, b, j):
                        total += (s[b][k][i][j] - t[b][k][i][j]) ** 2
                        n += 1
    return total / n


def ref_attention_ce(s, t, mask) -> float:
    total, n = 0.0, 0
    for b in range(len(s)):
        for k in range(len(s[b])):
            for i in range(len(s[b][k])):
                if not ok_tok(mask, b, i):
                    continue
                row = 0.0
                for j in range(len(s[b][k][i])):
                    if ok_tok(mask, b, j):
                        row -= t[b][k][i][j] * math.log(max(s[b][k][i][j], 1e-12))
                total += row
                n += 1
    return total / n


def ref_gram_matrix(a, c, mask, b: int):
    rows = [i for i in range(len(a[b])) if ok_tok(mask, b, i)]
    da, dc = len(a[b][0]), len(c[b][0])
    return [[sum(a[b][i][p] * c[b][i][q] for i in rows) / len(rows) for q in range(dc)] for p in range(da)]


def ref_gram(s, t, mask) -> float:
    (sa, sb), (ta, tb) = s, t
    total, n = 0.0, 0
    for b in range(len(sa)):
        gs, gt = ref_gram_matrix(sa, sb, mask, b), ref_gram_matrix(ta, tb, mask, b)
        for p in range(len(gs)):
            for q in range(len(gs[p])):
                total += (gs[p][q] - gt[p][q]) ** 2
                n += 1
    return total / n


def ref_mmd(s, t, mask) -> float:
    (sa, sb), (ta, tb) = s, t
    total, n = 0.0, 0
    for b in range(len(sa)):
        size = len(sa[b])
        for i in range(size):
            for j in range(size):
                if not (ok_tok(mask, b, i) and ok_tok(mask, b, j)):
                    continue
                ds, dt = len(sa[b][i]), len(ta[b][i])
                ms = sum(sa[b][i][d] * sb[b][j][d] for d in range(ds)) / ds
                mt = sum(ta[b][i][d] * tb[b][j][d] for d in range(dt)) / dt
                total += (ms - mt) ** 2
                n += 1
    return total / n


# --------------------------------------------------------------------------- input builders

MASK3 = [[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]  # (B=3, L=4), some zeros
B, L = 3, 4


def mask_tensor(dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.tensor(MASK3).to(dtype)


def to_list(x):
    if isinstance(x, (tuple, list)):
        return [v.tolist() for v in x]
    return x.tolist()


def match_case(name: str, hs: int = 2, ht: int = 2):
    """(student, teacher, reference fn) for a MATCH loss on fixed seeded inputs."""
    if name in ("hidden_mse", "cos", "pkd"):
        ref = {"hidden_mse": ref_hidden_mse, "cos": ref_cos, "pkd": ref_pkd}[name]
        return rand(B, L, 5, seed=1), rand(B, L, 5, seed=2), ref
    if name.startswith("attention"):
        s, t = attn(B, hs, L, 3), attn(B, ht, L, 4)
        if name == "attention_mse":
            return s, t, ref_attention_mse
        if name == "attention_ce":
            return s, t, ref_attention_ce
        if name == "attention_mse_sum":
            return (
                s,
                t,
                lambda a, c, m: ref_attention_mse(heads_combined(a, "sum"), heads_combined(c, "sum"), m),
            )
        return (
            s,
            t,
            lambda a, c, m: ref_attention_ce(heads_combined(a, "mean"), heads_combined(c, "mean"), m),
        )
    if name in ("gram", "fsp"):
        s = (rand(B, L, 3, seed=5), rand(B, L, 3, seed=6))
        return s, (rand(B, L, 3, seed=7), rand(B, L, 3, seed=8)), ref_gram
    # mmd / nst: teacher hidden size differs from the student's
    s = (rand(B, L, 3, seed=9), rand(B, L, 3, seed=10))
    return s, (rand(B, L, 5, seed=11), rand(B, L, 5, seed=12)), ref_mmd


MATCH_NAMES = [
    "hidden_mse", "cos", "pkd", "attention_mse", "attention_mse_sum", "attention_ce",
    "attention_ce_mean", "gram", "fsp", "mmd", "nst",
]  # fmt: skip

MASKED_MATCH = [n for n in MATCH_NAMES if n != "pkd"]


def student_leaves(feat):
    if isinstance(feat, tuple):
        return tuple(x.clone().requires_grad_(True) for x in feat)
    return feat.clone().requires_grad_(True)


def leaves(feat) -> list[torch.Tensor]:
    return list(feat) if isinstance(feat, tuple) else [feat]


def perturb_masked(feat, mask: torch.Tensor, seed: int, value: float | None = None):
    """Overwrite every entry touching a masked token (row or, for L x L maps, column)."""

    def one(x: torch.Tensor, k: int) -> torch.Tensor:
        valid = mask.bool()
        if x.dim() == 4:  # (B, H, L, L): invalid where query or key is masked
            keep = (valid[:, None, :, None] & valid[:, None, None, :]).expand_as(x)
        else:
            keep = valid.view(*valid.shape, *([1] * (x.dim() - valid.dim()))).expand_as(x)
        noise = rand(*x.shape, seed=seed + k, scale=50.0) if value is None else value
        return torch.where(keep, x, noise + torch.zeros_like(x))

    if isinstance(feat, tuple):
        return tuple(one(x, k) for k, x in enumerate(feat))
    return one(feat, 0)


# --------------------------------------------------------------------------- registries


def test_registry_names() -> None:
    assert LOGIT_LOSSES.names() == ["ce", "kl", "mse"]
    assert sorted(MATCH_LOSSES.names()) == sorted(MATCH_NAMES)
    assert MATCH_LOSSES.get("fsp") is MATCH_LOSSES.get("gram")
    assert MATCH_LOSSES.get("nst") is MATCH_LOSSES.get("mmd")


def test_unknown_name_raises() -> None:
    with pytest.raises(BrewlabError, match="nope"):
        LOGIT_LOSSES.get("nope")
    with pytest.raises(BrewlabError, match="hidden_mse"):
        MATCH_LOSSES.get("nope", key="loss.hidden.fn")


# --------------------------------------------------------------------------- logit losses

LOGIT_NAMES = ["ce", "mse", "kl"]
TEMPS = {
    "float": 2.0,
    "int": 1,
    "per_example": torch.tensor([0.5, 2.0, 4.0], dtype=DT),
}


def logit_inputs(ndim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shape = (B, 5) if ndim == 2 else (B, L, 5)
    mask = torch.tensor([1, 0, 1]) if ndim == 2 else mask_tensor()
    return rand(*shape, seed=20, scale=2.0), rand(*shape, seed=21, scale=2.0), mask


def temp_for_ref(temp):
    return temp.tolist() if isinstance(temp, torch.Tensor) else temp


# (temperature kind, use mask, t2_scaling): the interesting combinations, not the full product.
LOGIT_SETUPS = [
    ("float", True, False),
    ("int", False, False),
    ("per_example", True, False),
    ("per_example", True, True),
    ("per_example", False, True),
    ("float", True, True),
]


@pytest.mark.parametrize("name", LOGIT_NAMES)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(("temp_kind", "use_mask", "t2"), LOGIT_SETUPS)
def test_logit_loss_matches_reference(name, ndim, temp_kind, use_mask, t2) -> None:
    s, t, mask = logit_inputs(ndim)
    mask = mask if use_mask else None
    temp = TEMPS[temp_kind]
    got = LOGIT_LOSSES.get(name)(s, t, temp, mask=mask, t2_scaling=t2)
    want = ref_logit(
        name,
        s.tolist(),
        t.tolist(),
        temp_for_ref(temp),
        None if mask is None else mask.tolist(),
        t2,
    )
    assert got.dim() == 0
    assert torch.allclose(got, torch.tensor(want, dtype=DT), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", LOGIT_NAMES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_logit_loss_float32_and_bool_mask(name, ndim) -> None:
    s, t, mask = logit_inputs(ndim)
    got = LOGIT_LOSSES.get(name)(s.float(), t.float(), 3.0, mask=mask.bool())
    want = ref_logit(name, s.tolist(), t.tolist(), 3.0, mask.tolist(), False)
    assert got.dtype == torch.float32
    assert math.isclose(got.item(), want, rel_tol=1e-5)


@pytest.mark.parametrize("name", LOGIT_NAMES)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("fill", [None, float("nan")])
def test_logit_loss_ignores_masked_positions(name, ndim, fill) -> None:
    s, t, mask = logit_inputs(ndim)
    temp = TEMPS["per_example"]
    fn = LOGIT_LOSSES.get(name)
    base = fn(s, t, temp, mask=mask)
    s2 = perturb_masked(s, mask, seed=30, value=fill).requires_grad_(True)
    t2 = perturb_masked(t, mask, seed=40, value=fill)
    changed = fn(s2, t2, temp, mask=mask)
    assert torch.allclose(base, changed, rtol=1e-12, atol=0)
    changed.backward()
    assert torch.isfinite(s2.grad).all()
    assert (s2.grad[~mask.bool()] == 0).all()


@pytest.mark.parametrize("name", LOGIT_NAMES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_logit_loss_gradients(name, ndim) -> None:
    s, t, mask = logit_inputs(ndim)
    s.requires_grad_(True)
    t.requires_grad_(True)
    LOGIT_LOSSES.get(name)(s, t, TEMPS["per_example"], mask=mask).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_temperature_tensor_does_not_get_grad() -> None:
    s, t, mask = logit_inputs(3)
    temp = TEMPS["per_example"].clone().requires_grad_(True)
    s.requires_grad_(True)
    LOGIT_LOSSES.get("kl")(s, t, temp, mask=mask).backward()
    assert temp.grad is None


@pytest.mark.parametrize("name", LOGIT_NAMES)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("temp", [0.5, 2.0, 3.0])
def test_t2_scaling_multiplies_by_t_squared(name, ndim, temp) -> None:
    s, t, mask = logit_inputs(ndim)
    fn = LOGIT_LOSSES.get(name)
    plain = fn(s, t, temp, mask=mask)
    scaled = fn(s, t, temp, mask=mask, t2_scaling=True)
    assert torch.allclose(scaled, plain * temp * temp, rtol=1e-12, atol=0)
    # A per-example tensor holding the same value everywhere behaves like the float.
    same = fn(s, t, torch.full((B,), temp, dtype=DT), mask=mask, t2_scaling=True)
    assert torch.allclose(same, scaled, rtol=1e-12, atol=0)


def test_per_example_temperature_in_3d_is_per_example() -> None:
    """Example b only sees T_b: each example alone equals a float-T call."""
    s, t, mask = logit_inputs(3)
    temp = TEMPS["per_example"]
    fn = LOGIT_LOSSES.get("kl")
    for b in range(B):
        alone = fn(s[b : b + 1], t[b : b + 1], temp[b : b + 1], mask=mask[b : b + 1])
        as_float = fn(s[b : b + 1], t[b : b + 1], float(temp[b]), mask=mask[b : b + 1])
        assert torch.allclose(alone, as_float, rtol=1e-12, atol=0)


def test_all_masked_gives_zero() -> None:
    s, t, _ = logit_inputs(3)
    s.requires_grad_(True)
    loss = LOGIT_LOSSES.get("ce")(s, t, 2.0, mask=torch.zeros(B, L))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_logit_loss_errors() -> None:
    s, t, _ = logit_inputs(3)
    fn = LOGIT_LOSSES.get("ce")
    with pytest.raises(BrewlabError, match=r"\(3, 4, 5\).*\(3, 4, 6\)"):
        fn(s, rand(B, L, 6), 1.0)
    with pytest.raises(BrewlabError, match="mask"):
        fn(s, t, 1.0, mask=torch.ones(B, L + 1))
    with pytest.raises(BrewlabError, match="temperature"):
        fn(s, t, torch.ones(B, L, dtype=DT))
    with pytest.raises(BrewlabError, match="temperature"):
        fn(s, t, 0.0)
    with pytest.raises(BrewlabError, match="logits"):
        fn(rand(5), rand(5), 1.0)


# --------------------------------------------------------------------------- match losses

HEAD_SETUPS = [
    ("attention_mse_sum", 2, 3),
    ("attention_ce_mean", 3, 2),
    ("attention_mse_sum", 2, 2),
    ("attention_ce_mean", 2, 2),
]


@pytest.mark.parametrize("name", MATCH_NAMES)
@pytest.mark.parametrize("use_mask", [False, True])
def test_match_loss_matches_reference(name, use_mask) -> None:
    s, t, ref = match_case(name)
    mask = mask_tensor() if use_mask else None
    got = MATCH_LOSSES.get(name)(s, t, mask=mask)
    want = ref(to_list(s), to_list(t), MASK3 if use_mask else None)
    assert got.dim() == 0
    assert torch.allclose(got, torch.tensor(want, dtype=DT), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "hs", "ht"), HEAD_SETUPS)
def test_head_combining_losses_with_different_heads(name, hs, ht) -> None:
    s, t, ref = match_case(name, hs, ht)
    got = MATCH_LOSSES.get(name)(s, t, mask=mask_tensor(torch.bool))
    want = ref(to_list(s), to_list(t), MASK3)
    assert torch.allclose(got, torch.tensor(want, dtype=DT), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", MASKED_MATCH)
@pytest.mark.parametrize("fill", [None, float("nan")])
def test_match_loss_ignores_masked_positions(name, fill) -> None:
    s, t, _ = match_case(name)
    mask = mask_tensor(torch.float32)
    fn = MATCH_LOSSES.get(name)
    base = fn(s, t, mask=mask)
    s2 = student_leaves(perturb_masked(s, mask, seed=50, value=fill))
    t2 = perturb_masked(t, mask, seed=60, value=fill)
    changed = fn(s2, t2, mask=mask)
    assert torch.allclose(base, changed, rtol=1e-12, atol=1e-15)
    changed.backward()
    for x in leaves(s2):
        assert torch.isfinite(x.grad).all()


def test_pkd_uses_only_position_zero_and_ignores_mask() -> None:
    s, t, _ = match_case("pkd")
    base = MATCH_LOSSES.get("pkd")(s, t)
    s2, t2 = s.clone(), t.clone()
    s2[:, 1:] = rand(B, L - 1, 5, seed=70)
    t2[:, 1:] = rand(B, L - 1, 5, seed=71)
    assert torch.allclose(base, MATCH_LOSSES.get("pkd")(s2, t2, mask=mask_tensor()))
    # Scale of the [CLS] vectors does not matter after L2 normalisation.
    assert torch.allclose(base, MATCH_LOSSES.get("pkd")(s * 3.0, t * 0.5), rtol=1e-12)


@pytest.mark.parametrize("name", MATCH_NAMES)
def test_no_mask_equals_an_all_valid_mask(name) -> None:
    """The distiller drops the mask of an unpadded batch (skipping every select): value and
    gradient must equal the masked computation's."""
    s, t, _ = match_case(name)
    grads = []
    for mask in (torch.ones(B, L, dtype=torch.long), None):
        leaves_s = student_leaves(s)
        value = MATCH_LOSSES.get(name)(leaves_s, t, mask=mask)
        value.backward()
        grads.append((value.detach(), [x.grad for x in leaves(leaves_s)]))
    (v_masked, g_masked), (v_none, g_none) = grads
    assert torch.allclose(v_masked, v_none, rtol=1e-12, atol=1e-14)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(g_masked, g_none, strict=True))


@pytest.mark.parametrize("name", MATCH_NAMES)
def test_match_loss_gradients(name) -> None:
    s, t, _ = match_case(name)
    s = student_leaves(s)
    t = student_leaves(t)
    MATCH_LOSSES.get(name)(s, t, mask=mask_tensor()).backward()
    for x in leaves(s):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for x in leaves(t):
        assert x.grad is None


def test_attention_ce_clamps_zero_probabilities() -> None:
    s, t, _ = match_case("attention_ce")
    s = s.clone()
    s[0, 0, 0, 1] = 0.0
    got = MATCH_LOSSES.get("attention_ce")(s, t)
    want = ref_attention_ce(s.tolist(), t.tolist(), None)
    assert torch.isfinite(got)
    assert math.isclose(got.item(), want, rel_tol=1e-10)


def test_identical_inputs_give_zero() -> None:
    # attention_ce(_mean) of a map with itself is its entropy, not 0.
    for name in [n for n in MATCH_NAMES if not n.startswith("attention_ce")]:
        s, _, _ = match_case(name)
        assert abs(MATCH_LOSSES.get(name)(s, s, mask=mask_tensor()).item()) < 1e-12, name


@pytest.mark.parametrize("name", ["attention_mse", "attention_ce"])
def test_equal_head_losses_reject_different_heads(name) -> None:
    with pytest.raises(BrewlabError) as err:
        MATCH_LOSSES.get(name)(attn(B, 2, L, 1), attn(B, 3, L, 2))
    msg = str(err.value)
    assert "2 heads" in msg and "3" in msg
    assert ("attention_mse_sum" in msg) and ("attention_ce_mean" in msg)


@pytest.mark.parametrize("name", ["fsp", "gram"])
def test_gram_rejects_different_hidden_sizes(name) -> None:
    s = (rand(B, L, 3), rand(B, L, 3))
    t = (rand(B, L, 5), rand(B, L, 5))
    with pytest.raises(BrewlabError, match=r"D=\(3, 3\).*D=\(5, 5\)"):
        MATCH_LOSSES.get(name)(s, t)


def test_hidden_losses_reject_different_hidden_sizes() -> None:
    for name in ("hidden_mse", "cos", "pkd"):
        with pytest.raises(BrewlabError, match=r"5\).*7\)"):
            MATCH_LOSSES.get(name)(rand(B, L, 5), rand(B, L, 7))


def test_match_loss_shape_errors() -> None:
    with pytest.raises(BrewlabError, match="pair"):
        MATCH_LOSSES.get("mmd")(rand(B, L, 3), (rand(B, L, 3), rand(B, L, 3)))
    with pytest.raises(BrewlabError, match="3 and 4"):
        MATCH_LOSSES.get("nst")((rand(B, L, 3), rand(B, L, 4)), (rand(B, L, 3), rand(B, L, 3)))
    with pytest.raises(BrewlabError, match=r"\(B, H, L, L\)"):
        MATCH_LOSSES.get("attention_mse_sum")(rand(B, L, L), rand(B, 2, L, L))
    with pytest.raises(BrewlabError, match="mask"):
        MATCH_LOSSES.get("hidden_mse")(rand(B, L, 3), rand(B, L, 3), mask=torch.ones(B))


# --------------------------------------------------------------------------- probability_shift


def ref_shift(logits: list, labels: list, ignore_index: int) -> list:
    """Loop reference on one flat list of rows."""
    out = []
    for row, y in zip(logits, labels, strict=False):
        row = list(row)
        top = max(range(len(row)), key=lambda c: (row[c], -c))  # first max, like argmax
        if y != ignore_index and top != y:
            row[top], row[y] = row[y], row[top]
        out.append(row)
    return out


def test_probability_shift_2d_explicit() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.5, 2.0, -1.0], [0.0, 0.1, 5.0], [4.0, 0.0, 1.0]], dtype=DT)
    labels = torch.tensor([0, 2, -100, 1])
    before = logits.clone()
    out = probability_shift(logits, labels)
    expected = torch.tensor([[3.0, 1.0, 0.0], [0.5, -1.0, 2.0], [0.0, 0.1, 5.0], [0.0, 4.0, 1.0]], dtype=DT)
    assert torch.equal(out, expected)
    assert torch.equal(logits, before)  # input untouched
    assert out.argmax(-1)[[0, 1, 3]].tolist() == [0, 2, 1]


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5)])
@pytest.mark.parametrize("ignore_index", [-100, -1])
def test_probability_shift_matches_reference(shape, ignore_index) -> None:
    logits = rand(*shape, seed=80)
    g = torch.Generator().manual_seed(81)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    labels.view(-1)[::3] = ignore_index
    labels.view(-1)[1] = logits.view(-1, shape[-1])[1].argmax()  # one surely-correct row
    teacher = logits.clone().requires_grad_(True)
    out = probability_shift(teacher, labels, ignore_index=ignore_index)
    want = ref_shift(logits.view(-1, shape[-1]).tolist(), labels.view(-1).tolist(), ignore_index)
    assert out.shape == logits.shape
    assert not out.requires_grad
    assert torch.equal(out.view(-1, shape[-1]), torch.tensor(want, dtype=DT))
    flat_out, flat_in = out.view(-1, shape[-1]), logits.view(-1, shape[-1])
    for r, y in enumerate(labels.view(-1).tolist()):
        wrong = y != ignore_index and int(flat_in[r].argmax()) != y
        assert torch.equal(flat_out[r], flat_in[r]) != wrong
        if wrong:
            assert int(flat_out[r].argmax()) == y
            assert torch.equal(flat_out[r].sort().values, flat_in[r].sort().values)


def test_probability_shift_errors() -> None:
    with pytest.raises(BrewlabError, match="labels"):
        probability_shift(rand(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(BrewlabError, match="labels"):
        probability_shift(rand(2, 3), torch.tensor([0, 3]))
