"""Quality of the default study over seeds: teacher, KD student, labels-only student.

Usage: python scripts/quality.py [--seeds 1 2 3] [--out DIR] [extra overrides...]
For each seed s it trains (or reuses from cache) teacher s (`teacher.seed=s`), distils the default
student from it, and trains the same student on labels only (`distiller=trainer`). Prints a
mean ± std table of test accuracy and the non-embedding parameter ratio. Reads metrics.json only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from brewlab.config.compose import ROOT
from brewlab.core import layout


def run(out: Path, overrides: list[str]) -> dict:
    if not (out / layout.METRICS).is_file():
        subprocess.run(
            [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={out}", "trainer.progress=false", *overrides],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
    return json.loads((out / layout.METRICS).read_text())


def fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "quality")
    args, extra = parser.parse_known_args()
    rows: dict[str, list[float]] = {"teacher": [], "student (KD)": [], "student (labels only)": []}
    ratio = 0.0
    for seed in args.seeds:
        common = [f"seed={seed}", f"teacher.seed={seed}", *extra]
        kd = run(args.out / f"kd-seed{seed}", common)
        labels = run(args.out / f"labels-seed{seed}", [*common, "distiller=trainer"])
        main_metric = kd["task"]["main_metric"]
        rows["teacher"].append(kd["teacher"]["test"][main_metric])
        rows["student (KD)"].append(kd["student"]["test"][main_metric])
        rows["student (labels only)"].append(labels["student"]["test"][main_metric])
        ratio = kd["student"]["parameters"]["non_embedding"] / kd["teacher"]["parameters"]["non_embedding"]
        print(f"seed {seed}: " + ", ".join(f"{k} {100 * v[-1]:.2f}" for k, v in rows.items()), flush=True)
    print(f"\n| model | test {main_metric} (mean ± std, n={len(args.seeds)}) |\n|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {fmt(values)} |")
    gap = statistics.mean(rows["teacher"]) - statistics.mean(rows["student (KD)"])
    print(f"\nnon_embedding_ratio={ratio:.3f} teacher_minus_kd_student={100 * gap:.2f}")


if __name__ == "__main__":
    main()
