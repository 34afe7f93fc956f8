"""Kill a real run at random moments, restart it each time, and compare with an uninterrupted run.

Usage: python scripts/crash_resume.py [--kills 3] [--seed 0] [overrides...]

Runs `python run.py debug=smoke <overrides>` (3 epochs of 12 steps, a checkpoint every step)
once without interruption, then the same command in a second directory, SIGKILLed at a random
moment inside training (just after a checkpoint past a random step, plus up to 50 ms)
--kills times and restarted in the same directory after
each kill, then left to finish. The two metrics.json must be identical apart from wall-clock
fields (seconds, examples per second). Last line:
  kills=<n> resumed=<restarts that continued from a checkpoint> identical=<true|false>
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
CLOCK = ("seconds", "per_second")  # wall-clock fields differ between any two runs


def without_clock(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: without_clock(v) for k, v in tree.items() if not any(c in k for c in CLOCK)}
    return tree


def launch(run_dir: Path, cache: Path, overrides: list[str], out: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", f"cache_dir={cache}", *BASE, *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT)


def latest_step(run_dir: Path) -> int:
    steps = [int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt")]
    return max(steps, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "cache"
        # fill the teacher cache first, so both runs time only the student's work
        warm = launch(tmp_path / "warm", cache, overrides, tmp_path / "warm.log")
        if warm.wait() != 0:
            raise SystemExit("crash_resume: the run fails:\n" + (tmp_path / "warm.log").read_text()[-3000:])
        reference = launch(tmp_path / "reference", cache, overrides, tmp_path / "reference.log")
        if reference.wait() != 0:
            raise SystemExit("crash_resume: the run fails:\n" + (tmp_path / "reference.log").read_text()[-3000:])
        victim, resumed, done, wandb_ids = tmp_path / "killed", 0, 0, set()
        total = 36  # 3 epochs x 12 steps (192 smoke examples, batch 16)
        for k in range(args.kills + 1):
            log = tmp_path / f"killed-{k}.log"
            proc = launch(victim, cache, overrides, log)
            if k < args.kills:
                # a random moment inside training: once a checkpoint past a random step exists,
                # plus a random fraction of a step's time
                # spread the kills over what is left of training
                target = rng.randint(done + 1, max(done + 1, done + (total - 1 - done) // (args.kills - k)))
                while proc.poll() is None and latest_step(victim) < target:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.05))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    done = latest_step(victim)
                    print(f"launch {k}: SIGKILL after the checkpoint of step {done} (target {target})", flush=True)
                else:
                    print(f"launch {k}: finished before its kill", flush=True)
            elif proc.wait() != 0:
                raise SystemExit("crash_resume: the final run failed:\n" + log.read_text()[-3000:])
            if (victim / "wandb_run.json").is_file():
                wandb_ids.add(json.loads((victim / "wandb_run.json").read_text())["id"])
            lines = [line for line in log.read_text().splitlines() if "resuming from checkpoint" in line]
            if k and lines:
                resumed += 1
                print(f"launch {k}: continued from {lines[0].split('checkpoints/')[-1]}", flush=True)
        a = json.loads((tmp_path / "reference" / "metrics.json").read_text())
        b = json.loads((victim / "metrics.json").read_text())
        identical = without_clock(a) == without_clock(b)
        print(f"W&B runs across the launches: {len(wandb_ids)} ({', '.join(sorted(wandb_ids))})")
        if not identical:
            print(json.dumps(without_clock(a), indent=1)[:2000], json.dumps(without_clock(b), indent=1)[:2000])
    print(f"kills={args.kills} resumed={resumed} identical={str(identical).lower()}")


if __name__ == "__main__":
    main()
