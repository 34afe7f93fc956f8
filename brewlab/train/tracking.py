"""Experiment trackers (W&B or nothing), chosen by `logger.name`.

W&B defaults to offline so a run never needs network or credentials; it writes under the run
directory and is always finished, also when the job fails, so sweep jobs do not bleed together.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brewlab.core import layout
from brewlab.core.registry import Registry

TRACKERS: Registry = Registry("logger.name")
log = logging.getLogger("brewlab")


@TRACKERS.register("none")
class NoTracker:
    def __init__(
        self,
        cfg: Mapping[str, Any],
        run_dir: Path,
        config: dict,
        name: str,
        tags: list[str],
        group: str | None,
        resume: bool = False,
    ) -> None:
        self.run_dir = run_dir

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Nothing to send; metrics.json is written by the pipeline."""

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Nothing to send."""

    def finish(self, exit_code: int = 0) -> None:
        """Nothing to close."""


@TRACKERS.register("wandb")
class WandbTracker(NoTracker):
    """One W&B run per job: config, every logged metric, final summary; offline unless asked."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        run_dir: Path,
        config: dict,
        name: str,
        tags: list[str],
        group: str | None,
        resume: bool = False,
    ) -> None:
        super().__init__(cfg, run_dir, config, name, tags, group)
        import wandb

        mode = os.environ.get("WANDB_MODE") or cfg["mode"]
        os.environ.setdefault("WANDB_SILENT", "true")
        previous = run_dir / layout.WANDB_RUN
        run_id = json.loads(previous.read_text(encoding="utf-8")).get("id") if resume and previous.is_file() else None
        options = dict(
            project=cfg["project"],
            entity=cfg["entity"],
            dir=str(run_dir),
            name=name,
            tags=[t[:64] for t in tags],
            group=group,
            config=config,
            reinit="finish_previous",
            id=run_id,  # a resumed run continues its W&B run instead of starting a second one
            resume="allow" if run_id else None,
        )
        if mode == "online" and not _has_credentials():
            log.warning("W&B: online logging asked for but no API key is set (wandb login): logging offline")
            mode = "offline"
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=float(cfg["init_timeout"])),
                                  **options)
        except Exception as exc:  # noqa: BLE001 - no network, bad credentials, a W&B outage: never kill the run
            if mode == "offline":
                raise
            log.warning("W&B: online run failed to start (%s): logging offline", str(exc).splitlines()[0][:200])
            mode = "offline"
            self.run = wandb.init(mode=mode, **options)
        # where this job's W&B run is, readable without W&B (the report and users' scripts)
        identity = {"id": self.run.id, "name": name, "group": group, "tags": list(self.run.tags), "mode": mode,
                    "project": self.run.project}
        (run_dir / layout.WANDB_RUN).write_text(json.dumps(identity, indent=2, ensure_ascii=False), encoding="utf-8")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        for key, value in _flatten(metrics).items():
            self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def _has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    import netrc

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1]) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def make_tracker(
    cfg: Mapping[str, Any],
    run_dir: Path,
    config: dict,
    name: str,
    tags: list[str],
    group: str | None,
    resume: bool = False,
) -> NoTracker:
    return TRACKERS.get(cfg["name"], "logger")(cfg, run_dir, config, name, tags, group, resume)
