"""Wall time of the default study (what `make run` runs): once with an empty cache (teacher
fine-tuned), once cached.

Usage: python benchmarks/time_default.py [overrides...]   (default: +experiment=distillation_pays;
pass other overrides, e.g. `task=reviews_zh`, to time plain `python run.py` compositions)
Prints one line per run and a summary line `empty_cache_s=<s> cached_s=<s>`. Budget of the
default study on the project's 2-core CPU: <= 900 s empty, <= 240 s cached. Timings are
evidence, never unit tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from brewlab.config.compose import ROOT

DEFAULT_STUDY = "+experiment=distillation_pays"  # the Makefile's `make run`


def timed_run(cache: str, out: str, extra: list[str]) -> float:
    env = {**os.environ, "BREWLAB_CACHE": cache}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={out}", "trainer.progress=false", *extra],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    extra = sys.argv[1:] or [DEFAULT_STUDY]
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        empty = timed_run(cache, os.path.join(tmp, "run1"), extra)
        print(f"empty cache (teacher trained): {empty:.1f} s")
        cached = timed_run(cache, os.path.join(tmp, "run2"), extra)
        print(f"teacher cached: {cached:.1f} s")
    print(f"cores={os.cpu_count()} empty_cache_s={empty:.1f} cached_s={cached:.1f}")


if __name__ == "__main__":
    main()
