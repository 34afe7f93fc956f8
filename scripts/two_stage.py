"""Does a pretrained teacher, and a general student, make distillation pay? (the pretraining study)

Usage: python scripts/two_stage.py [--task reviews_zh] [--seeds 1 2 3] [--out DIR] [extra overrides...]
Runs (or reuses, when a run directory already holds metrics.json) for each seed s:
  scratch teacher s; pretrained teacher s (masked LM pretrained once, fine-tuned with seed s);
  the same student trained on labels only from random init and from the general student;
  KD from pretrained teacher s into a random-init student and into the general student.
The general student is distilled once (stage 1, `+experiment=general_distillation`). Prints a
mean ± std table of the test metric and the wall time of each stage. Reads metrics.json only.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from quality import ROOT, fmt, run

from brewlab.core import layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="reviews_zh")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "two_stage")
    args, extra = parser.parse_known_args()
    out = args.out / args.task
    general = run(args.out / "general", ["+experiment=general_distillation", *extra])
    general_dir = args.out / "general" / layout.SAVED_STUDENT
    pretrained = ["teacher=pretrained_scratch", f"task={args.task}", *extra]
    rows: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}

    def record(name: str, value: float, secs: float | None = None) -> None:
        rows.setdefault(name, []).append(value)
        if secs is not None:
            seconds.setdefault(name, []).append(secs)

    main_metric = "?"
    for seed in args.seeds:
        common = [f"seed={seed}", f"teacher.seed={seed}"]
        scratch = run(out / f"scratch-kd-seed{seed}", [f"task={args.task}", *common, *extra])
        kd_random = run(out / f"kd-random-seed{seed}", [*pretrained, *common])
        kd_general = run(out / f"kd-general-seed{seed}", [*pretrained, *common, f"student.init_from={general_dir}"])
        labels_random = run(out / f"labels-random-seed{seed}", [*pretrained, *common, "distiller=trainer"])
        labels_general = run(
            out / f"labels-general-seed{seed}",
            [*pretrained, *common, "distiller=trainer", f"student.init_from={general_dir}"],
        )
        main_metric = scratch["task"]["main_metric"]
        record("teacher from scratch", scratch["teacher"]["test"][main_metric])
        record("teacher pretrained + fine-tuned", kd_random["teacher"]["test"][main_metric])
        for name, metrics in (
            ("student KD (scratch teacher), random init", scratch),
            ("student labels only, random init", labels_random),
            ("student labels only, general init", labels_general),
            ("student KD (pretrained teacher), random init", kd_random),
            ("student KD (pretrained teacher), general init", kd_general),
        ):
            record(name, metrics["student"]["test"][main_metric], metrics["student"]["train_seconds"])
        print(f"seed {seed}: " + ", ".join(f"{k} {100 * v[-1]:.2f}" for k, v in rows.items()), flush=True)

    print(f"\n| model | test {main_metric} (mean ± std, n={len(args.seeds)}) | train s (mean) |\n|---|---|---|")
    for name, values in rows.items():
        secs = f"{statistics.mean(seconds[name]):.0f}" if name in seconds else ""
        print(f"| {name} | {fmt(values)} | {secs} |")
    pretraining = kd_random["teacher"].get("pretraining", {})
    print(f"\npretraining: {pretraining.get('train_seconds', float('nan')):.0f} s, {pretraining.get('steps')} steps, "
          f"MLM dev accuracy {100 * pretraining.get('best_dev', float('nan')):.2f}")
    print(
        f"\ngeneral student: MLM test accuracy {100 * general['student']['test']['accuracy']:.2f} "
        f"(teacher {100 * general['teacher']['test']['accuracy']:.2f}), "
        f"train {general['student']['train_seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
