"""Kill a real run at random moments inside each of its training stages, restart it each time,
and compare with an uninterrupted run.

Usage: python benchmarks/crash_resume.py [--kills 3] [--seed 0] [--stages student,labels_only,...] [overrides...]

For each stage, runs `python run.py debug=smoke <stage overrides> <overrides>` (the stage made
24 to 36 steps long, a checkpoint every step) once without interruption, then the same command
in a second directory, SIGKILLed --kills times at a random moment inside that stage (just after
a checkpoint past a random step, plus up to 50 ms) and restarted after each kill, then left to
finish. The two metrics.json must be identical apart from wall-clock fields (seconds, examples
per second). Stages:
  pretrain     masked-LM pretraining of teacher=pretrained_scratch (checkpoints in the cache)
  teacher      teacher fine-tuning (checkpoints in the cache)
  general      general distillation (+experiment=general_distillation: the masked LM into a student)
  student      task distillation (checkpoints in the run directory; its teacher is cached first)
  labels_only  the labels-only baseline, trained after the student in the same run
  torchrun     task distillation by 2 gloo ranks (`torch.distributed.run`); the whole process
               group is killed, and the ranks resume from a step they both saved
Last lines: one per stage, then
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewlab.config.compose import ROOT
from brewlab.core import layout

BASE = [
    "debug=smoke",
    "trainer.max_steps=null",
    "trainer.epochs=3",
    "trainer.checkpoint_every=1",
    "trainer.log_every=1",
    "trainer.progress=false",
]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@dataclass(frozen=True)
class Stage:
    overrides: list[str]  # what makes the stage long (and chooses it)
    checkpoints: str  # where its checkpoints go: "run/<subfolder>" or "cache/<subfolder>"
    steps: tuple[str, ...]  # the stage's step count in metrics.json
    launcher: tuple[str, ...] = ()  # e.g. torchrun's module and its flags


TEACHER_LONG = ["teacher.train.max_steps=null", "teacher.train.epochs=3", "teacher.train.log_every=1"]
STAGES = {
    "pretrain": Stage(
        ["teacher=pretrained_scratch", "teacher.pretrain.train.max_steps=24", "teacher.pretrain.train.log_every=1"],
        "cache/checkpoints/pretrained",
        ("teacher", "pretraining", "steps"),
    ),
    "teacher": Stage(TEACHER_LONG, "cache/checkpoints/teachers", ("teacher", "training", "steps")),
    "general": Stage(["+experiment=general_distillation"], "run/checkpoints", ("student", "steps")),
    "student": Stage([], "run/checkpoints", ("student", "steps")),
    "labels_only": Stage(["baselines.labels_only=true"], "run/checkpoints/labels_only", ("labels_only", "steps")),
    # global batch 16 like the others: 8 per rank
    "torchrun": Stage(["trainer.batch_size=8"], "run/checkpoints", ("student", "steps"), tuple(TORCHRUN)),
}
CLOCK = ("seconds", "per_second")  # wall-clock fields differ between any two runs


def without_clock(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: without_clock(v) for k, v in tree.items() if not any(c in k for c in CLOCK)}
    return tree


def launch(stage: Stage, run_dir: Path, cache: Path, overrides: list[str], out: Path) -> subprocess.Popen:
    cmd = [sys.executable, *stage.launcher, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", f"cache_dir={cache}", *BASE, *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if stage.launcher:
        env["OMP_NUM_THREADS"] = "1"  # two ranks on two cores
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its ranks in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process it started, at once (a lost machine)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def finished(proc: subprocess.Popen, log: Path, what: str) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"crash_resume: the {what} run failed:\n" + log.read_text()[-3000:])


def dig(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, a's value, b's value) wherever two JSON trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [(path, a, b)]


def latest_step(checkpoints: Path) -> int:
    """The newest checkpoint's step under `checkpoints` (cache entries' and ranks' folders too)."""
    return max((int(p.stem.split("-")[1]) for p in checkpoints.rglob("step-*.pt")), default=0)


def one_stage(name: str, kills: int, rng: random.Random, overrides: list[str], tmp_path: Path) -> tuple[int, bool]:
    """(restarts that continued from a checkpoint, identical metrics) for kills inside stage `name`."""
    stage = STAGES[name]
    overrides = [*stage.overrides, *overrides]
    root = tmp_path / name
    root.mkdir()
    in_cache = stage.checkpoints.startswith("cache/")
    caches = {"reference": root / "cache", "killed": root / ("killed-cache" if in_cache else "cache")}
    if not in_cache:  # fill the teacher cache first, so both runs train only the stage's own work
        finished(launch(stage, root / "warm", caches["reference"], overrides, root / "warm.log"), root / "warm.log", "warm-up")
    finished(launch(stage, root / "reference", caches["reference"], overrides, root / "reference.log"), root / "reference.log", "uninterrupted")
    reference = json.loads((root / "reference" / layout.METRICS).read_text())
    total = int(dig(reference, stage.steps))
    victim, resumed, done, wandb_ids = root / "killed", 0, 0, set()
    where, sub = stage.checkpoints.split("/", 1)
    checkpoints = (victim if where == "run" else caches["killed"]) / sub
    for k in range(kills + 1):
        log = root / f"killed-{k}.log"
        proc = launch(stage, victim, caches["killed"], overrides, log)
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
                kill_all(proc)
                done = latest_step(checkpoints)
                print(f"{name} launch {k}: SIGKILL after the checkpoint of step {done} (target {target})", flush=True)
            else:
                print(f"{name} launch {k}: finished before its kill", flush=True)
        else:
            finished(proc, log, "final")
        if (victim / layout.WANDB_RUN).is_file():
            wandb_ids.add(json.loads((victim / layout.WANDB_RUN).read_text())["id"])
        # this stage's own resume (a labels-only restart also continues the finished student)
        lines = [line for line in log.read_text().splitlines() if f"resuming from checkpoint {checkpoints}/" in line]
        if k and lines:
            resumed += 1
            print(f"{name} launch {k}: continued from {lines[0].split('checkpoints/')[-1]}", flush=True)
    killed = json.loads((victim / layout.METRICS).read_text())
    identical = without_clock(reference) == without_clock(killed)
    print(f"{name}: W&B runs across the launches: {len(wandb_ids)} ({', '.join(sorted(wandb_ids))})")
    for path, x, y in differences(without_clock(reference), without_clock(killed)):
        print(f"{name}: {path} differs: uninterrupted {x!r}, killed {y!r}")
    print(f"{name}: kills={kills} resumed={resumed} identical={str(identical).lower()}", flush=True)
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
