"""Kill a real run at random moments inside each of its training stages, restart it each time,
and compare with an uninterrupted run.

Usage: python benchmarks/crash_resume.py [--kills 3] [--seed 0] [--stages student,teacher,pretrain] [overrides...]

For each stage, runs `python run.py debug=smoke <stage overrides> <overrides>` (the stage made
36 or 24 steps long, a checkpoint every step) once without interruption, then the same command
in a second directory, SIGKILLed --kills times at a random moment inside that stage (just after
a checkpoint past a random step, plus up to 50 ms) and restarted after each kill, then left to
finish. The two metrics.json must be identical apart from wall-clock fields (seconds, examples
per second). Stages: `student` (task distillation, checkpoints in the run directory; its teacher
is cached first), `teacher` (teacher fine-tuning) and `pretrain` (masked-LM pretraining of
teacher=pretrained_scratch), whose checkpoints are in the cache. Last lines: one per stage, then
  stages=<n> kills=<n> resumed=<restarts that continued from a checkpoint> identical=<true|false>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "debug=smoke",
    "trainer.max_steps=null",
    "trainer.epochs=3",
    "trainer.checkpoint_every=1",
    "trainer.log_every=1",
    "trainer.progress=false",
]
# stage -> (overrides that make it long, where its checkpoints go: "run" or cache subfolder, steps)
STAGES = {
    "student": ([], "run", 36),  # 3 epochs x 12 steps (192 smoke examples, batch 16)
    "teacher": (["teacher.train.max_steps=null", "teacher.train.epochs=3", "teacher.train.log_every=1"], "teachers", 36),
    "pretrain": (
        ["teacher=pretrained_scratch", "teacher.pretrain.train.max_steps=24", "teacher.pretrain.train.log_every=1"],
        "pretrained",
        24,
    ),
}
CLOCK = ("seconds", "per_second")  # wall-clock fields differ between any two runs


def without_clock(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: without_clock(v) for k, v in tree.items() if not any(c in k for c in CLOCK)}
    return tree


def launch(run_dir: Path, cache: Path, overrides: list[str], out: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", f"cache_dir={cache}", *BASE, *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT)


def differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, a's value, b's value) wherever two JSON trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [(path, a, b)]


def latest_step(checkpoints: Path) -> int:
    steps = [int(p.stem.split("-")[1]) for p in checkpoints.rglob("step-*.pt")]
    return max(steps, default=0)


def one_stage(stage: str, kills: int, rng: random.Random, overrides: list[str], tmp_path: Path) -> tuple[int, bool]:
    """(restarts that continued from a checkpoint, identical metrics) for kills inside `stage`."""
    extra, where, total = STAGES[stage]
    overrides = [*extra, *overrides]
    root = tmp_path / stage
    root.mkdir()
    caches = {"reference": root / "cache", "killed": root / "cache"}
    if where != "run":  # the killed stage makes a cache entry: each side trains its own
        caches["killed"] = root / "killed-cache"
    else:  # fill the teacher cache first, so both runs time only the student's work
        warm = launch(root / "warm", caches["reference"], overrides, root / "warm.log")
        if warm.wait() != 0:
            raise SystemExit("crash_resume: the run fails:\n" + (root / "warm.log").read_text()[-3000:])
    reference = launch(root / "reference", caches["reference"], overrides, root / "reference.log")
    if reference.wait() != 0:
        raise SystemExit("crash_resume: the run fails:\n" + (root / "reference.log").read_text()[-3000:])
    victim, resumed, done, wandb_ids = root / "killed", 0, 0, set()
    checkpoints = victim / "checkpoints" if where == "run" else caches["killed"] / "checkpoints" / where
    for k in range(kills + 1):
        log = root / f"killed-{k}.log"
        proc = launch(victim, caches["killed"], overrides, log)
        if k < kills:
            # a random moment inside the stage: once a checkpoint past a random step exists,
            # plus a random fraction of a step's time; the kills spread over what is left
            # (never in the stage's last quarter: a short stage may finish and drop its
            # checkpoints between two looks at them)
            last = total * 3 // 4
            target = min(last, rng.randint(done + 1, max(done + 1, done + (last - done) // (kills - k))))
            while proc.poll() is None and latest_step(checkpoints) < target:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                done = latest_step(checkpoints)
                print(f"{stage} launch {k}: SIGKILL after the checkpoint of step {done} (target {target})", flush=True)
            else:
                print(f"{stage} launch {k}: finished before its kill", flush=True)
        elif proc.wait() != 0:
            raise SystemExit("crash_resume: the final run failed:\n" + log.read_text()[-3000:])
        if (victim / "wandb_run.json").is_file():
            wandb_ids.add(json.loads((victim / "wandb_run.json").read_text())["id"])
        lines = [line for line in log.read_text().splitlines() if "resuming from checkpoint" in line]
        if k and lines:
            resumed += 1
            print(f"{stage} launch {k}: continued from {lines[0].split('checkpoints/')[-1]}", flush=True)
    a = json.loads((root / "reference" / "metrics.json").read_text())
    b = json.loads((victim / "metrics.json").read_text())
    identical = without_clock(a) == without_clock(b)
    print(f"{stage}: W&B runs across the launches: {len(wandb_ids)} ({', '.join(sorted(wandb_ids))})")
    for path, x, y in differences(without_clock(a), without_clock(b)):
        print(f"{stage}: {path} differs: uninterrupted {x!r}, killed {y!r}")
    print(f"{stage}: kills={kills} resumed={resumed} identical={str(identical).lower()}", flush=True)
    return resumed, identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of: {', '.join(STAGES)}")
    args, overrides = parser.parse_known_args()
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"crash_resume: --stages {','.join(unknown)} is not valid; choose from: {', '.join(STAGES)}")
    rng = random.Random(args.seed)
    resumed, identical = 0, True
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            r, same = one_stage(stage, args.kills, rng, overrides, Path(tmp))
            resumed, identical = resumed + r, identical and same
    print(f"stages={len(stages)} kills={args.kills * len(stages)} resumed={resumed} identical={str(identical).lower()}")


if __name__ == "__main__":
    main()
