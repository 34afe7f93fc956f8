"""Hydra config source that turns `group=a+b` into the merge of `group/a` and `group/b`.

`python run.py loss=nst+hidden` selects a config named `nst+hidden` that no file holds; this source
answers for any such `+` name with a defaults list of its parts, so every combination of atomic
presets composes (in single runs, sweeps and experiment defaults) without a file per combination.
It is enabled only by brewlab's primary config (`hydra.searchpath`), never for other apps.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

# brewlab's config directory (the repository's conf/, next to run.py), used to name valid parts.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class PlusComboConfigSource(ConfigSource):
    @staticmethod
    def scheme() -> str:
        return "brewlab-combos"

    @staticmethod
    def _parts(config_path: str) -> list[str] | None:
        """The presets a `+` name combines, or None when any part is not a preset of its group
        (Hydra then reports the name as unknown and lists the group's options)."""
        path = config_path[: -len(".yaml")] if config_path.endswith(".yaml") else config_path
        group, _, name = path.rpartition("/")
        if not group or "+" not in name:
            return None
        parts = name.split("+")
        known = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
        return parts if all(p in known for p in parts) else None

    def load_config(self, config_path: str) -> ConfigResult:
        parts = self._parts(config_path)
        if parts is None:
            raise ConfigLoadError(f"Config not found: {config_path}")
        cfg = OmegaConf.create({"defaults": [*parts, "_self_"]})
        return ConfigResult(
            config=cfg, path=f"{self.scheme()}://{self.path}", provider=self.provider, header={"package": None}
        )

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return False

    def is_config(self, config_path: str) -> bool:
        return self._parts(config_path) is not None

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        return []  # combinations are unbounded; the file source lists the atomic presets
