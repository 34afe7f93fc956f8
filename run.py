"""Entry point: `python run.py [group=option ...]`, `python run.py -m ...` for sweeps,
`torchrun --nproc_per_node=N run.py ...` for data-parallel training."""

import atexit
import os
import shutil
import sys
import tempfile

import hydra
from omegaconf import DictConfig

import brewlab  # noqa: F401  (registers the typed config groups before Hydra composes)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from brewlab.run.job import run_job

    return run_job(cfg)


def check_output_dirs(argv: list[str]) -> None:
    """An output directory given on the command line must be writable: one line, exit 2, before
    Hydra would fail on it with a traceback."""
    from brewlab.core.errors import BrewlabError
    from brewlab.core.files import check_writable

    for arg in argv:
        key, _, path = arg.partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or "${" in path:
            continue
        try:
            check_writable(path, key)
        except BrewlabError as exc:
            print(f"brewlab: error: {exc}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    check_output_dirs(sys.argv[1:])
    if int(os.environ.get("RANK", 0)) > 0:  # data-parallel ranks other than 0 write no run directory
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")]
        scratch = tempfile.mkdtemp(prefix="brewlab-rank")  # for Hydra's log only; rank 0's is the record
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    main()
