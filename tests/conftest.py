"""Shared helpers: run the real CLI in a subprocess with a private cache and output dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from brewlab.config.compose import ROOT, compose_run  # noqa: F401  (the suite's one compose helper)


def pytest_collection_modifyitems(config, items) -> None:
    """Two tiers: every test that starts `run.py` through the `cli` fixture is `slow` (like those
    marked by hand: other subprocesses, sweeps, harnesses); `pytest -m "not slow"` keeps the
    in-process tests, a few minutes on two cores."""
    for item in items:
        if "cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One teacher/tokenizer cache per test session (per xdist worker)."""
    return tmp_path_factory.mktemp("cache")


def run_cli(
    *overrides: str,
    run_dir: Path,
    cache: Path,
    env: dict | None = None,
    multirun: bool = False,
    flags: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """`flags` (e.g. --config-dir) go before the overrides, where Hydra's parser wants them."""
    args = [sys.executable, str(ROOT / "run.py"), *flags]
    if multirun:
        args += ["-m", f"hydra.sweep.dir={run_dir}"]
    else:
        args.append(f"hydra.run.dir={run_dir}")
    args += [f"cache_dir={cache}", "trainer.progress=false", *overrides]
    full_env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_MODE")}
    full_env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})
    return subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def cli(tmp_path, cache_dir):
    """cli(*overrides) -> (CompletedProcess, run_dir); fails loudly with the output on error."""

    def call(*overrides: str, expect_ok: bool = True, name: str = "run", **kwargs):
        run_dir = tmp_path / name
        proc = run_cli(*overrides, run_dir=run_dir, cache=kwargs.pop("cache", cache_dir), **kwargs)
        if expect_ok:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc, run_dir

    return call


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------- the shared tiny models

KD_HARD = {"kd": {"kind": "logits", "fn": "ce", "weight": 1.0}, "hard": {"kind": "hard", "weight": 0.5}}


def tiny(layers: int, hidden: int, heads: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    model.set_attn_implementation("eager")
    return model.eval()


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    return {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "labels": torch.tensor([0, 1, 2, 1]),
        "idx": torch.arange(4),
    }
