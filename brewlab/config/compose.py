"""The composed config as plain data, for tests, scripts and benchmarks, composed exactly as
`run.py` composes it; and where the checkout's `conf/` and `run.py` are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[2]  # the checkout: conf/, run.py, benchmarks/, scripts/
CONF_DIR = ROOT / "conf"


def to_plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> plain dicts and lists (resolved), anything else unchanged."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def compose_run(*overrides: str) -> dict[str, Any]:
    """The run config `run.py` would get for these overrides, resolved to plain dicts."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_plain(compose("config", overrides=list(overrides)))
