"""Does brewlab cost anything over hand-written PyTorch, and how much faster is it on real data?

Usage: python benchmarks/bench.py [--quick] [--rounds R] [--steps N] [--epochs E] [--repeats K] [overrides...]

1. Overhead (fixed shapes, random tokens): brewlab's `general` distiller (its `fit` loop) against
   a minimal hand-written loop computing the same loss (KD ce T=4 + hidden_mse on the embeddings
   and last layers through a linear projection + nst on the last layers), same models, optimizer,
   LR schedule and gradient clipping. R rounds of N optimizer steps each, alternating, after a
   warm-up; the figure is the median steps/s of each and their ratio. The first step's losses of
   the two are compared first (they must agree).
2. Real data: the default run's distillation, for its `trainer.epochs` (3) or E epochs (the run's teacher, from the cache, and
   its student; `overrides` change the composition) in fresh processes, alternating K times:
   brewlab's data path (dynamic padding, length-grouped batches, cached teacher logits after
   the first epoch, sdpa attention, no per-step host sync) against a baseline that pads every
   batch to max_seq_length, shuffles plainly, runs the teacher every step, uses eager attention
   in both models and calls .item() on the loss every step. Examples/s counts training time only (evaluation is
   timed apart); both report the best dev score, which must agree within noise.
3. Memory: each real-data contender's peak RSS (its own process).
4. Startup: wall time of `python run.py --cfg job` (median of 3).

The last line reads
  overhead_ratio=<brewlab/hand steps per s> realdata_speedup=<brewlab/baseline examples per s>
  rss_ratio=<brewlab/baseline peak RSS> startup_s=<seconds>
--quick shrinks every part to seconds (tiny shapes, `debug=smoke`); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from brewlab.config.compose import ROOT, compose_run
from brewlab.run.validate import validate

FULL = {
    "teacher": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "student": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512},
    "vocab": 8000,
    "batch": (32, 64),
}
QUICK = {
    "teacher": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    "student": {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32},
    "vocab": 100,
    "batch": (4, 8),
}
TEMPERATURE = 4.0
LR = {"_target_": "torch.optim.AdamW", "lr": 1.0e-4, "weight_decay": 0.01}


# ----------------------------------------------------------------------------- 1. overhead


def overhead_loss(t_depth: int, s_depth: int) -> dict[str, Any]:
    return {
        "kd": {"kind": "logits", "fn": "ce", "weight": 1.0, "t2_scaling": False},
        "hidden": {
            "kind": "match",
            "fn": "hidden_mse",
            "feature": "hidden",
            "weight": 1.0,
            "proj": "linear",
            "layers": [{"teacher": 0, "student": 0}, {"teacher": t_depth, "student": s_depth}],
        },
        "nst": {
            "kind": "match",
            "fn": "nst",
            "feature": "hidden",
            "weight": 1.0,
            "proj": None,
            "layers": [{"teacher": [t_depth, t_depth], "student": [s_depth, s_depth]}],
        },
    }


def bert(arch: dict[str, int], vocab: int, seed: int) -> Any:
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, num_labels=2, **arch)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def brewlab_contender(teacher: Any, student: Any) -> Any:
    """brewlab's `general` distiller, built as the pipeline builds it."""
    from brewlab.config.schema import TrainerSettings
    from brewlab.data.tasks import KINDS
    from brewlab.stages.stage import build_distiller

    cfg = {
        "distiller": {"name": "general"},
        "scheduler": {"temperature": {"kind": "constant", "base": TEMPERATURE}},
        "optim": LR,
    }
    loss = overhead_loss(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    trainer = TrainerSettings(epochs=1, log_every=50, grad_clip=1.0)
    # what build_distiller reads of a prepared task: its kind, its labels, its vocabulary size and pad id
    tokenizer = type("Vocabulary", (), {"pad_token_id": 0, "__len__": lambda self: student.config.vocab_size})()
    prep = SimpleNamespace(kind=KINDS.get("classification"), label_names=["negative", "positive"], tokenizer=tokenizer)
    tracker = SimpleNamespace(log=lambda metrics, step: None)
    return build_distiller("general", cfg, student, [teacher], prep, loss, trainer, tracker)


class HandLoop:
    """The same objective and update, written out by hand with no framework around it."""

    def __init__(self, teacher: Any, student: Any, projections: torch.nn.ModuleList) -> None:
        self.teacher, self.student, self.proj = teacher.eval(), student, projections
        self.params = list(student.parameters()) + list(projections.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=LR["lr"], weight_decay=LR["weight_decay"])
        self.t_depth, self.s_depth = teacher.config.num_hidden_layers, student.config.num_hidden_layers

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            t = self.teacher(**inputs, output_hidden_states=True)
        s = self.student(**inputs, output_hidden_states=True)
        kd = -(F.softmax(t.logits / TEMPERATURE, -1) * F.log_softmax(s.logits / TEMPERATURE, -1)).sum(-1).mean()
        s_h, t_h = s.hidden_states, t.hidden_states
        hidden = (
            F.mse_loss(self.proj[0](s_h[0]), t_h[0]) + F.mse_loss(self.proj[1](s_h[self.s_depth]), t_h[self.t_depth])
        ) / 2

        def similarity(h: torch.Tensor) -> torch.Tensor:
            return h @ h.transpose(1, 2) / h.shape[-1]

        nst = F.mse_loss(similarity(s_h[self.s_depth]), similarity(t_h[self.t_depth]))
        return kd + hidden + nst, {"kd": kd, "hidden": hidden, "nst": nst}

    def run(self, batch: dict[str, torch.Tensor], steps: int) -> None:
        """`steps` updates under a fresh warmup-then-linear LR schedule, as each brewlab `fit` has."""
        from transformers import get_linear_schedule_with_warmup

        self.sched = get_linear_schedule_with_warmup(self.opt, int(0.1 * steps), steps)
        self.student.train()
        for _ in range(steps):
            loss, _ = self.loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()


def bench_overhead(shapes: dict[str, Any], rounds: int, steps: int) -> float:
    batch_size, length = shapes["batch"]
    gen = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1, shapes["vocab"], (batch_size, length), generator=gen),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=gen),
    }
    teacher = bert(shapes["teacher"], shapes["vocab"], seed=1).eval()
    student = bert(shapes["student"], shapes["vocab"], seed=2)
    ours = brewlab_contender(teacher, student)
    hand_student = copy.deepcopy(student)
    names = [f"hidden_{layer}" for layer in (0, student.config.num_hidden_layers)]
    hand = HandLoop(teacher, hand_student, copy.deepcopy(torch.nn.ModuleList(ours.projections[n] for n in names)))

    student.eval(), hand_student.eval()  # no dropout: the two objectives must agree before timing
    with torch.no_grad():
        mine, parts = ours.compute_loss(batch, 0, 1)
        theirs, hand_parts = hand.loss(batch)
    diff = abs(float(mine) - float(theirs))
    print(f"overhead: first-step loss brewlab {float(mine):.6f} hand {float(theirs):.6f} (|diff| {diff:.2e}); "
          + ", ".join(f"{k} {float(parts[k]):.5f}/{float(hand_parts[k]):.5f}" for k in hand_parts))
    if diff > 1e-4 * max(1.0, abs(float(theirs))):
        raise SystemExit(f"bench: the hand loop's loss {float(theirs)} differs from brewlab's {float(mine)}")

    def ours_run(n: int) -> None:
        ours.trainer = dataclasses.replace(ours.trainer, max_steps=n)
        ours.fit([batch] * n, evaluate=lambda: {"score": 0.0}, main_metric="score", progress=False)

    ours_run(max(2, steps // 2))  # warm-up: allocator, kernels, autograd graph caches
    hand.run(batch, max(2, steps // 2))
    rates: dict[str, list[float]] = {"brewlab": [], "hand": []}
    contenders = [("brewlab", ours_run), ("hand", lambda n: hand.run(batch, n))]
    for r in range(rounds):
        for name, fn in contenders if r % 2 == 0 else contenders[::-1]:  # neither always goes first
            start = time.perf_counter()
            fn(steps)
            rates[name].append(steps / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    # the ratio within each round cancels slow drifts of a shared machine; its median is the figure
    ratio = statistics.median(o / h for o, h in zip(rates["brewlab"], rates["hand"], strict=True))
    print(f"overhead: brewlab {med['brewlab']:.3f} steps/s, hand loop {med['hand']:.3f} steps/s "
          f"(medians of {rounds} rounds x {steps} steps, batch {batch_size}x{length}); "
          f"median per-round ratio {ratio:.3f}")
    return ratio


# ----------------------------------------------------------------------------- 2./3. real data


def composed(overrides: list[str]) -> dict[str, Any]:
    cfg = compose_run("logger=none", "trainer.progress=false", *overrides)
    validate(cfg)
    return cfg


def padded_baseline(teacher: Any, student: Any, prep: Any, cfg: dict[str, Any], evaluate: Any) -> tuple[list[float], float]:
    """A TextBrewer-example-style loop: pad to max_seq_length, teacher forward on every step,
    a host sync (.item()) on every step. Same loss, optimizer, schedule and clipping as the run."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    trainer, kind = cfg["trainer"], prep.kind
    max_len, pad = int(cfg["task"]["max_seq_length"]), prep.tokenizer.pad_token_id

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in rows[0]:
            if key.startswith("_"):
                continue
            values = [r[key] for r in rows]
            if isinstance(values[0], (list, tuple)):
                fill = {"input_ids": pad, "labels": -100}.get(key, 0)
                values = [list(v) + [fill] * (max_len - len(v)) for v in values]
            batch[key] = torch.tensor(values)
        return batch

    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    loader = DataLoader(prep.features["train"], int(trainer["batch_size"]), shuffle=True, generator=gen, collate_fn=collate)
    params = list(student.parameters())
    opt = instantiate(cfg["optim"], params)
    if cfg["scheduler"]["lr"]["kind"] != "linear":
        raise SystemExit("bench: the real-data baseline implements scheduler.lr.kind=linear only")
    total = len(loader) * int(trainer["epochs"])
    sched = get_linear_schedule_with_warmup(opt, int(cfg["scheduler"]["lr"].get("warmup_ratio", 0.0) * total), total)
    temperature = float(cfg["scheduler"]["temperature"]["base"])
    kd_w = float(cfg["loss"]["kd"]["weight"])
    hard_w = float(cfg["loss"].get("hard", {}).get("weight", 0.0))
    teacher.eval()
    seconds, best, logged = [], -math.inf, []
    for _ in range(int(trainer["epochs"])):
        student.train()
        start = time.perf_counter()
        for batch in loader:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            with torch.no_grad():
                t_logits = kind.model_logits(teacher(**inputs), batch)
            s_logits = kind.model_logits(student(**inputs), batch)
            per_pos = -(F.softmax(t_logits / temperature, -1) * F.log_softmax(s_logits / temperature, -1)).sum(-1)
            mask = kind.logits_mask(batch)
            kd = per_pos.mean() if mask is None else (per_pos * mask).sum() / mask.sum().clamp(min=1)
            loss = kd_w * kd + hard_w * kind.supervised_loss(s_logits, batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, float(trainer["grad_clip"]))
            opt.step()
            sched.step()
            logged.append(loss.item())
        seconds.append(time.perf_counter() - start)
        best = max(best, evaluate())
    return seconds, best


def realdata_child(contender: str, overrides: list[str]) -> dict[str, Any]:
    """One contender, alone in this process (so its peak RSS is its own)."""
    from brewlab.config.schema import run_settings
    from brewlab.core.errors import BrewlabError
    from brewlab.data.prepare import prepare_task, train_loader
    from brewlab.eval.evaluation import evaluate
    from brewlab.models.adaptors import HFAdaptor
    from brewlab.models.build import set_attention
    from brewlab.stages.stage import build_distiller, build_student
    from brewlab.stages.teachers import get_teacher, teacher_base
    from brewlab.train.runtime import Runtime, keep_heap_compact, seed_everything

    cfg = composed(overrides)
    sched, trainer = cfg["scheduler"], cfg["trainer"]
    plain_run = (
        all(t.get("kind") != "match" and not t.get("t2_scaling") for t in cfg["loss"].values())
        and cfg["loss"].get("kd", {}).get("fn") == "ce"
        and sched["temperature"]["kind"] == "constant"
        and sched["kd_weight"] == sched["hard_weight"] == "constant"
        and not sched["probability_shift"]
        and trainer["grad_accum"] == 1
        and trainer["precision"] == "fp32"
    )
    if not plain_run:
        raise BrewlabError(
            "bench: the real-data baseline implements the default objective only (loss=kd+hard with fn ce, "
            "constant temperature and weights, no probability shift, grad_accum 1, fp32)"
        )
    settings = run_settings(cfg)
    rt = Runtime.of(cfg["cache_dir"], dataclasses.replace(settings.trainer, device="cpu"), SimpleNamespace(log=lambda metrics, step: None))
    device = rt.device
    base = teacher_base(cfg, settings, rt)
    prep = prepare_task(cfg, rt.cache, tokenizer_from=base)
    teacher = get_teacher(cfg, settings, prep, base, "sdpa", rt).model
    if contender == "prepare":
        return {}
    seed_everything(settings.seed)
    student = build_student(cfg, prep, teacher, "sdpa", device)
    adaptor, main = HFAdaptor, prep.kind.main_metric
    eval_bs, eval_seconds = settings.trainer.eval_batch_size, [0.0]

    def dev_score() -> dict[str, float]:
        start = time.perf_counter()
        metrics = evaluate(adaptor(student, prep.kind), prep, "validation", eval_bs, device)
        eval_seconds[0] += time.perf_counter() - start
        return metrics

    if contender == "brewlab":
        keep_heap_compact(settings.trainer.heap_trim_every_s)  # what run.py does at startup
        distiller = build_distiller(cfg["distiller"]["name"], cfg, student, [teacher], prep, cfg["loss"], settings.trainer, rt.tracker)
        loader = train_loader(prep.features["train"], settings.trainer, prep.tokenizer.pad_token_id, settings.seed)
        epoch_ends: list[float] = []
        start = time.perf_counter()

        def timed_dev() -> dict[str, float]:
            epoch_ends.append(time.perf_counter() - start - eval_seconds[0])
            return dev_score()

        result = distiller.fit(loader, timed_dev, main, progress=False)
        seconds = [b - a for a, b in zip([0.0, *epoch_ends], epoch_ends, strict=False)]
        best = result.best_metric
    else:
        for model in (teacher, student):
            set_attention(model, "eager")
        seconds, best = padded_baseline(teacher, student, prep, cfg, lambda: dev_score()[main])
    n = len(prep.features["train"])
    return {
        "examples_per_s": n * len(seconds) / sum(seconds),
        "epoch_examples_per_s": [n / s for s in seconds],
        "dev": best,
        "main_metric": main,
        "rss_mb": peak_rss_mb(),
        "train_examples": n,
    }


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's ru_maxrss survives exec, so a child started by a
    large parent reports at least the parent's size; VmHWM belongs to the process's own memory
    map (made new at exec), so it counts only what the contender itself used."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(contender: str, overrides: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", contender, *overrides], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"bench: the {contender} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_realdata(overrides: list[str], repeats: int) -> tuple[float, float]:
    realdata_child("prepare", overrides)  # here: the teacher trained (or found in the cache) before timing
    runs: dict[str, list[dict[str, Any]]] = {"brewlab": [], "baseline": []}
    for _ in range(repeats):
        for name in runs:
            runs[name].append(child(name, overrides))
            r = runs[name][-1]
            print(f"real data: {name:8s} {r['examples_per_s']:8.1f} examples/s (per epoch "
                  + ", ".join(f"{v:.1f}" for v in r["epoch_examples_per_s"])
                  + f"), best dev {r['main_metric']} {100 * r['dev']:.2f}, peak RSS {r['rss_mb']:.0f} MB", flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("examples_per_s", "dev", "rss_mb")} for k, v in runs.items()}
    first = {k: statistics.median(r["epoch_examples_per_s"][0] for r in v) for k, v in runs.items()}
    speedup = med["brewlab"]["examples_per_s"] / med["baseline"]["examples_per_s"]
    rss = med["brewlab"]["rss_mb"] / med["baseline"]["rss_mb"]
    n = runs["brewlab"][0]["train_examples"]
    print(f"real data: {n} training examples x {len(runs['brewlab'][0]['epoch_examples_per_s'])} epochs; "
          f"speedup {speedup:.2f}x (first epoch alone, before any cached teacher logits: "
          f"{first['brewlab'] / first['baseline']:.2f}x); best dev brewlab {100 * med['brewlab']['dev']:.2f} "
          f"vs baseline {100 * med['baseline']['dev']:.2f}")
    cumulative = []  # speedup over the first e epochs, to compare with shorter runs
    for e in range(1, len(runs["brewlab"][0]["epoch_examples_per_s"]) + 1):
        secs = {k: statistics.median(sum(1 / x for x in r["epoch_examples_per_s"][:e]) for r in v) for k, v in runs.items()}
        cumulative.append(f"{e} epoch{'s' if e > 1 else ''} {secs['baseline'] / secs['brewlab']:.2f}x")
    print("real data: speedup over the first " + ", ".join(cumulative))
    print(f"memory: peak RSS brewlab {med['brewlab']['rss_mb']:.0f} MB, baseline {med['baseline']['rss_mb']:.0f} MB; "
          f"ratio {rss:.3f}")
    return speedup, rss


# ----------------------------------------------------------------------------- 4. startup


def bench_startup(times: int) -> float:
    walls = []
    for _ in range(times):
        start = time.perf_counter()
        subprocess.run([sys.executable, "run.py", "--cfg", "job"], cwd=ROOT, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    wall = statistics.median(walls)
    print(f"startup: python run.py --cfg job {wall:.2f} s (median of {times})")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and debug=smoke: checks the script runs")
    parser.add_argument("--rounds", type=int, default=12, help="overhead: alternating rounds per contender")
    parser.add_argument("--steps", type=int, default=8, help="overhead: optimizer steps per round")
    parser.add_argument(
        "--epochs", type=int, default=None, help="real data: training epochs per contender (default: the run's trainer.epochs)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="real data: alternating runs per contender")
    parser.add_argument(
        "--parts", default="overhead,realdata,startup", help="comma-separated subset of overhead,realdata,startup"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.child:
        print(json.dumps(realdata_child(args.child, overrides)))
        return
    if args.quick:
        args.rounds, args.steps, args.epochs = 2, 2, 1
        overrides = ["debug=smoke", *overrides]
    epochs = [] if args.epochs is None else [f"trainer.epochs={args.epochs}"]
    overrides = [*overrides, *epochs, "trainer.max_steps=null", "trainer.eval_every=null"]
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    parts = set(args.parts.split(","))
    unknown = parts - {"overhead", "realdata", "startup"}
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from overhead, realdata, startup")
    nan = float("nan")
    ratio = bench_overhead(QUICK if args.quick else FULL, args.rounds, args.steps) if "overhead" in parts else nan
    speedup, rss = bench_realdata(overrides, args.repeats) if "realdata" in parts else (nan, nan)
    startup = bench_startup(1 if args.quick else 3) if "startup" in parts else nan
    print(f"overhead_ratio={ratio:.3f} realdata_speedup={speedup:.2f} rss_ratio={rss:.3f} startup_s={startup:.2f}")


if __name__ == "__main__":
    main()
