"""What the teacher-output store saves: a loss sweep with the store against today's path
(`trainer.teacher_store=false`), and a stored job's training step against the labels-only floor.

Usage: python benchmarks/teacher_store.py [--cache DIR] [--out DIR] [--losses kd,kd+hidden,kd+nst]
       [--seeds 1,2,3] [--jobs 2] [--rounds 2] [--parts sweep,floor] [overrides...]

1. Sweep: `run.py -m loss=<losses> seed=<seeds>` through the joblib launcher (`--jobs` processes,
   one torch thread each), first with the store off, then with it on from an empty store (its
   build is part of the timed sweep). Every job's test accuracy is compared between the two.
2. Floor: jobs one at a time, `--rounds` times in turn: labels only (`distiller=trainer
   loss=hard`), stored logit KD, stored KD + hidden matches; a step is `train_seconds / steps`
   from each job's metrics.json (both sides include the same per-epoch dev evaluations).

The teacher (all-MiniLM-L6-v2 fine-tuned on mr_en) is trained once into `--cache` before
anything is timed. The last line reads
`sweep_speedup=<x> kd_floor_ratio=<x> hidden_floor_ratio=<x> store_mb=<n> accuracy_equal=true|false`.
Targets: sweep speedup >= 3, KD floor ratio <= 1.15, hidden floor ratio <= 1.3. Timings are
evidence printed here, never unit tests; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from brewlab.config.compose import ROOT
from brewlab.core import layout

TASK = ["task=mr_en", "teacher=minilm", "distiller=general", "logger=none", "trainer.progress=false"]


def run(args: list[str], cache: Path, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one `run.py` call (a job or a whole sweep); its output goes to a log beside it."""
    full_env = {**os.environ, "BREWLAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", **(env or {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"run.py {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def jobs_of(sweep: Path) -> dict[tuple[str, int], dict]:
    """Each finished job's metrics by (loss, seed)."""
    out = {}
    for path in sweep.rglob(layout.METRICS):
        metrics = json.loads(path.read_text(encoding="utf-8"))
        out["+".join(metrics["loss"]), int(metrics["seed"])] = metrics
    return out


def store_size(cache: Path) -> tuple[float, float]:
    """MB on disk of every teacher-store entry, and the seconds its arrays took to compute."""
    size, seconds = 0, 0.0
    for manifest in (cache / "teacher_outputs").glob("*/manifest.json"):
        size += sum(f.stat().st_size for f in manifest.parent.rglob("*") if f.is_file())
        seconds += sum({spec["seconds"] for spec in json.loads(manifest.read_text())["arrays"].values()})
    return size / 1e6, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "brewlab-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "multirun" / "bench_teacher_store")
    parser.add_argument("--losses", default="kd,kd+hidden,kd+nst")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parts", default="sweep,floor", help="sweep, floor or both (the last line needs both)")
    args, overrides = parser.parse_known_args()
    base = TASK + overrides
    shutil.rmtree(args.out, ignore_errors=True)

    prep = run([*base, "loss=hard", "distiller=trainer", "trainer.max_steps=1", f"hydra.run.dir={args.out / 'prepare'}"], args.cache)
    print(f"teacher ready in the cache ({prep:.0f} s, not timed)")

    parts = set(args.parts.split(","))
    if "sweep" in parts:
        off, on, mb, equal = sweep(args, base)
    if "floor" in parts:
        kd_ratio, hidden_ratio = floor(args, base)
    if parts >= {"sweep", "floor"}:
        print(
            f"sweep_speedup={off / on:.2f} kd_floor_ratio={kd_ratio:.3f} hidden_floor_ratio={hidden_ratio:.3f} "
            f"store_mb={mb:.0f} accuracy_equal={'true' if equal else 'false'}"
        )


def sweep(args: argparse.Namespace, base: list[str]) -> tuple[float, float, float, bool]:
    """Wall seconds of the sweep with the store off and on, the store's MB, and whether every
    job's test accuracy is equal between the two."""
    sweep = [f"loss={args.losses}", f"seed={args.seeds}", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"]
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # `--jobs` processes share the cores
    off = run(["-m", *base, *sweep, "trainer.teacher_store=false", f"hydra.sweep.dir={args.out / 'off'}"], args.cache, one_thread)
    print(f"sweep, store off: {off:.1f} s")
    shutil.rmtree(args.cache / "teacher_outputs", ignore_errors=True)  # the store-on sweep builds its entries
    on = run(["-m", *base, *sweep, f"hydra.sweep.dir={args.out / 'on'}"], args.cache, one_thread)
    mb, build_s = store_size(args.cache)
    print(f"sweep, store on (from an empty store): {on:.1f} s; store {mb:.1f} MB on disk, computed in {build_s:.1f} s")

    jobs_off, jobs_on = jobs_of(args.out / "off"), jobs_of(args.out / "on")
    if set(jobs_off) != set(jobs_on) or not jobs_on:
        sys.exit(f"the sweeps finished different jobs: off {sorted(jobs_off)}, on {sorted(jobs_on)}")
    equal = True
    for key in sorted(jobs_on):
        a, b = jobs_off[key]["student"]["test"]["accuracy"], jobs_on[key]["student"]["test"]["accuracy"]
        loaded = jobs_on[key]["teacher_store"]["teacher_loaded"]
        equal &= a == b
        print(f"  loss={key[0]} seed={key[1]}: test accuracy off {100 * a:.2f} on {100 * b:.2f} (diff {100 * (b - a):+.2f}), teacher loaded: {loaded}")
    return off, on, mb, equal


def floor(args: argparse.Namespace, base: list[str]) -> tuple[float, float]:
    """A stored KD and a stored KD + hidden step against a labels-only step, jobs one at a time."""
    steps: dict[str, list[float]] = {"labels": [], "kd": [], "hidden": []}
    jobs = {"labels": ["distiller=trainer", "loss=hard"], "kd": ["loss=kd"], "hidden": ["loss=kd+hidden"]}
    for r in range(args.rounds):
        for name, extra in jobs.items():
            out = args.out / "floor" / f"{name}-{r}"
            run([*base, *extra, "seed=1", f"hydra.run.dir={out}"], args.cache)
            student = json.loads((out / layout.METRICS).read_text())["student"]
            steps[name].append(student["train_seconds"] / student["steps"])
    floor = {k: statistics.median(v) for k, v in steps.items()}
    for name, values in steps.items():
        print(f"  {name}: {1000 * floor[name]:.2f} ms per step (median of {', '.join(f'{1000 * v:.2f}' for v in values)})")
    print(f"  floor ratios: kd {floor['kd'] / floor['labels']:.3f}, kd + hidden {floor['hidden'] / floor['labels']:.3f}")
    return floor["kd"] / floor["labels"], floor["hidden"] / floor["labels"]


if __name__ == "__main__":
    main()
