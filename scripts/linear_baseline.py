"""A linear baseline any teacher should beat (see brewlab/eval/baselines.py for the methods).

Usage: python scripts/linear_baseline.py [task=reviews_zh] [other task overrides...]
Reads the task's splits through brewlab's own loader (same split, same seed as every run) and
prints validation and test scores. A run can add the same figure to its metrics with
`baselines.linear=true`.
"""

from __future__ import annotations

import sys


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    from brewlab.config.compose import compose_run
    from brewlab.core.errors import BrewlabError
    from brewlab.data.tasks import load_task_data
    from brewlab.eval.baselines import linear_baseline

    cfg = compose_run(*sys.argv[1:])
    task = cfg["task"]
    data = load_task_data(task)
    try:
        result = linear_baseline(task, data.splits, data.label_names)
    except BrewlabError as exc:
        raise SystemExit(f"brewlab: error: {exc}") from None
    (metric,) = result["test"]
    print(f"task={task['name']} sizes={data.sizes()} method={result['method']} features={result['features']} C={result['C']}")
    print(
        f"linear_baseline dev_{metric}={100 * result['validation'][metric]:.2f} "
        f"test_{metric}={100 * result['test'][metric]:.2f} seconds={result['seconds']:.1f}"
    )


if __name__ == "__main__":
    main()
