"""Where the time of one run goes: python benchmarks/profile_run.py [overrides...]

Runs `python run.py <overrides>` (the default run unless told otherwise) under cProfile and splits
its wall time into stages: startup and config, data preparation, teacher (load or training),
the distillation loop (teacher forwards, student forward + losses, backward, optimizer,
batching, logging, dev evaluation) and the final measurement and saving. Prints a table of
seconds and shares. A teacher missing from the cache is trained first and the run profiled
again, so the loop rows are the student's alone. cProfile adds a little to Python-heavy
parts; tensor work is unaffected.
"""

from __future__ import annotations

import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

from brewlab.config.compose import ROOT

Where = tuple[str, str]  # (file path suffix, function name)
LOOP_FN: Where = ("brewlab/train/loop.py", "run_loop")  # the training loop every stage runs
CALLBACK_FN: Where = ("brewlab/train/callbacks.py", "fire")  # calls the loop's callbacks
# stage -> where its time is the cumulative time (only through calls from `via`, when given)
STAGES: dict[str, tuple[Where, Where | None]] = {
    "prepare data (read, tokenise or load cached features)": (("brewlab/data/prepare.py", "prepare_task"), None),
    "teachers (from the cache)": (("brewlab/stages/teachers.py", "get_teachers"), None),
    "teacher store (compute or open its entries)": (("brewlab/distill/teacher_outputs/plan.py", "attach"), None),
    "training (every fit: the student, a labels-only baseline)": (("brewlab/distill/distillers.py", "fit"), None),
    "final scores (teacher and student, dev and test)": (("brewlab/eval/evaluation.py", "measure"), None),
    "saving the student": (("brewlab/models/build.py", "save_model"), None),
}
FIT_PARTS: dict[str, list[tuple[Where, Where | None]]] = {
    "teacher forward (or kept logits)": [
        (("brewlab/distill/teacher_outputs/memory.py", "prepare"), None),  # the logits computed up front (store off)
        # the teacher run online or its outputs read from the store (StoredView, inside the call)
        (("brewlab/distill/teacher_outputs/provider.py", "__call__"), ("brewlab/distill/distillers.py", "compute_loss")),
        (("brewlab/distill/teacher_outputs/memory.py", "__call__"), None),  # kept logits (or the teacher run to keep them)
        (("brewlab/distill/teacher_outputs/memory.py", "get"), None),  # TeacherCache.get: kept logits padded to the batch
    ],
    "backward": [(("torch/_tensor.py", "backward"), LOOP_FN)],
    "optimizer, clipping, LR schedule": [
        (("torch/amp/grad_scaler.py", "step"), LOOP_FN),
        (("torch/nn/utils/clip_grad.py", "_no_grad_wrapper"), LOOP_FN),
        (("torch/optim/lr_scheduler.py", "step"), LOOP_FN),
        (("torch/optim/optimizer.py", "zero_grad"), LOOP_FN),
    ],
    "batching (collating, moving to device)": [(("brewlab/data/prepare.py", "<genexpr>"), LOOP_FN)],  # DeviceLoader
    "logging (W&B)": [(("brewlab/train/callbacks.py", "on_step_end"), CALLBACK_FN)],
    "dev evaluation (and keeping the best)": [(("brewlab/train/callbacks.py", "on_evaluate"), CALLBACK_FN)],
}


def cumulative(stats: pstats.Stats, where: Where, via: Where | None = None) -> float:
    """Cumulative seconds of function `where` (all calls, or only those made from `via`)."""
    total = 0.0
    for (filename, _line, func), (_cc, _nc, _tt, ct, callers) in stats.stats.items():
        if func != where[1] or not filename.endswith(where[0]):
            continue
        if via is None:
            total += ct
        else:
            total += sum(v[3] for (f, _l, fn), v in callers.items() if f.endswith(via[0]) and fn == via[1])
    return total


def profile(overrides: list[str]) -> pstats.Stats:
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "run.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "run.py"]
        cmd += [f"hydra.run.dir={tmp}/run", "trainer.progress=false", *overrides]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        return pstats.Stats(str(prof))


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    stats = profile(sys.argv[1:])
    if cumulative(stats, ("brewlab/stages/stage.py", "train_and_publish")) > 0:
        print("(a teacher was trained, not read from the cache: profiling again with it cached)", flush=True)
        stats = profile(sys.argv[1:])
    wall = stats.total_tt
    rows = {name: cumulative(stats, *spec) for name, spec in STAGES.items()}
    loop = {name: sum(cumulative(stats, *spec) for spec in specs) for name, specs in FIT_PARTS.items()}
    steps = cumulative(stats, ("brewlab/distill/distillers.py", "compute_loss"), LOOP_FN)
    online = loop["teacher forward (or kept logits)"] - cumulative(stats, ("brewlab/distill/teacher_outputs/memory.py", "prepare"))
    loop["student forward + losses"] = steps - online
    loop["loop bookkeeping (the rest)"] = rows["training (every fit: the student, a labels-only baseline)"] - sum(loop.values())
    print("| stage | seconds | share |\n|---|---|---|")
    for name, secs in rows.items():
        print(f"| {name} | {secs:.1f} | {100 * secs / wall:.0f}% |")
        if name == "training (every fit: the student, a labels-only baseline)":
            for part, part_secs in loop.items():
                print(f"| - {part} | {part_secs:.1f} | {100 * part_secs / wall:.0f}% |")
    rest = wall - sum(rows.values())
    print(f"| imports, config, W&B setup and the rest | {rest:.1f} | {100 * rest / wall:.0f}% |")
    print(f"| total (profiled wall time) | {wall:.1f} | 100% |")


if __name__ == "__main__":
    main()
