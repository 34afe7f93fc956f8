"""Every option of every config group composes, every `+` pair of atomic losses composes, and
the composed smoke configs pass validation."""

from __future__ import annotations

import itertools

import pytest
from conftest import ROOT, compose_run

from brewlab.run.validate import validate

CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]  # incl. experiment/
ATOMIC_LOSSES = sorted(f.stem for f in (CONF / "loss").glob("*.yaml"))
NEEDS_VALUE = {("teacher", "hf")}  # name_or_path is mandatory


def test_groups_present():
    required = {
        "teacher",
        "student",
        "loss",
        "scheduler",
        "task",
        "augmentation",
        "distiller",
        "optim",
        "logger",
        "debug",
    }
    assert required <= set(GROUPS)
    assert {"kd", "hard", "hidden", "cos", "pkd", "att", "fsp", "nst"} <= set(ATOMIC_LOSSES)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{'+' if group == 'experiment' else ''}{group}={option}", "debug=smoke"]
    if (group, option) in NEEDS_VALUE:
        return  # composed with a directory in test_pipeline.py (teacher=hf)
    if (group, option) == ("hparams_search", "optuna"):
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="optional extra hydra-optuna-sweeper")
    if group == "loss" and option not in ("kd", "hard"):
        overrides.append("distiller=general")
    cfg = compose_run(*overrides)
    validate(cfg)


@pytest.mark.parametrize("pair", list(itertools.combinations(ATOMIC_LOSSES, 2)), ids="+".join)
def test_every_loss_pair_composes(pair):
    cfg = compose_run(f"loss={'+'.join(pair)}", "distiller=general", "debug=smoke")
    assert set(pair) <= set(cfg["loss"])
    validate(cfg)


def test_intermediate_presets_bring_kd_and_per_term_overrides_apply():
    cfg = compose_run("loss=nst+hidden", "loss.hidden.weight=2", "loss.kd.fn=kl")
    assert set(cfg["loss"]) == {"kd", "nst", "hidden"}
    assert cfg["loss"]["hidden"]["weight"] == 2
    assert cfg["loss"]["kd"]["fn"] == "kl"
    assert cfg["loss"]["nst"]["weight"] == 1.0


def test_scheduler_partials_combine():
    cfg = compose_run("scheduler=flsw+pshift")["scheduler"]
    assert cfg["temperature"]["kind"] == "flsw"
    assert cfg["probability_shift"] is True
    assert cfg["lr"]["kind"] == "linear"


STUDIES = sorted(f.stem for f in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("study", STUDIES)
def test_every_job_of_every_study_composes_and_validates(study):
    """Expand each study's sweeper grid (seeds aside) and validate every job's config."""
    import yaml

    spec = yaml.safe_load((CONF / "experiment" / f"{study}.yaml").read_text())
    params = ((spec.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    grid = {key: str(values).split(",") for key, values in params.items() if key != "seed"}
    combos = list(itertools.product(*grid.values())) if grid else [()]
    for combo in combos:
        overrides = [f"{key}={value}" for key, value in zip(grid, combo, strict=True)]
        cfg = compose_run(f"+experiment={study}", "debug=smoke", *overrides)
        validate(cfg)
        for key, value in zip(grid, combo, strict=True):
            if key == "loss":
                assert set(value.split("+")) <= set(cfg["loss"])


def test_cache_keys_do_not_depend_on_where_the_cache_lives():
    """cmrc_pd98 (held out of the pretraining corpus) names a path inside the cache; the
    pretrained masked LM must keep its key when the cache moves (BREWLAB_CACHE, another cwd)."""
    from brewlab.core.cache import Cache

    keys = set()
    for where in (".cache/brewlab", "/elsewhere/cache"):
        cfg = compose_run("teacher=pretrained_scratch", f"cache_dir={where}")
        pretrain = cfg["teacher"]["pretrain"]
        assert pretrain["task"]["corpus"]["held_out"]["cmrc_pd98"]["data_dir"] == f"{where}/data"
        keys.add(Cache(cfg["cache_dir"]).key({"arch": cfg["teacher"]["arch"], "pretrain": pretrain}))
    assert len(keys) == 1
    assert Cache("/a/cache").key({"d": "/a/cache/x"}) != Cache("/a/cache").key({"d": "/a/cache/y"})


def test_the_schema_keeps_the_cache_keys_and_fingerprints_made_before_it():
    """Pinned from the code before brewlab/config/schema.py (commit e712acd): teachers, masked LMs and
    finished runs made then are still found, because the loop keys the schema added to teacher
    stages are hashed only when set away from their defaults."""
    from brewlab.config.identity import hashed_view, run_fingerprint, teacher_identity
    from brewlab.core.cache import Cache, stable_hash

    default = compose_run("cache_dir=/c")
    assert stable_hash(teacher_identity(default["teacher"])) == "094b977bc0a0"
    # runs of the optimizer before `optim.fused` (the foreach AdamW) keep their fingerprints;
    # the fused update rounds in another order, so its runs are other runs
    foreach = "~optim.fused"
    assert run_fingerprint(compose_run("cache_dir=/c", foreach)) == "0e66f229a5e8"
    assert run_fingerprint(default) != "0e66f229a5e8"
    assert run_fingerprint(compose_run("cache_dir=/c", "debug=smoke", foreach)) == "ee23fcc46bf0"
    assert run_fingerprint(compose_run("cache_dir=/c", "teacher=minilm", "task=mr_en", foreach)) == "874211867bda"
    t = compose_run("cache_dir=/c", "teacher=pretrained_scratch")["teacher"]
    assert Cache("/c").key(hashed_view({"arch": t["arch"], "pretrain": t["pretrain"]})) == "3dc30aeeb063"
    # set away from its default, a new key does count
    changed = compose_run("cache_dir=/c", "teacher.train.precision=bf16")
    assert stable_hash(teacher_identity(changed["teacher"])) != "094b977bc0a0"


@pytest.mark.parametrize("teacher", ["scratch", "pretrained_scratch"])
def test_a_teacher_built_from_arch_checks_its_heads(teacher):
    """Each teacher kind checks its own section: the ones built from `arch` check its head split."""
    from brewlab.core.errors import BrewlabError

    cfg = compose_run(f"teacher={teacher}", "debug=smoke", "teacher.arch.hidden_size=30", "teacher.arch.num_attention_heads=4")
    with pytest.raises(BrewlabError) as err:
        validate(cfg)
    assert str(err.value) == (
        "teacher.arch.hidden_size=30 is not a multiple of teacher.arch.num_attention_heads=4; e.g. teacher.arch.hidden_size=28"
    )


def test_an_unknown_teacher_kind_names_the_registered_ones():
    from brewlab.core.errors import BrewlabError

    cfg = compose_run("debug=smoke")
    cfg["teacher"]["kind"] = "distilled"
    with pytest.raises(BrewlabError) as err:
        validate(cfg)
    assert str(err.value) == "teacher.kind='distilled' is not valid; choose one of: hf, pretrained_scratch, scratch"
