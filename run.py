"""Entry point: `python run.py [group=option ...]`, `python run.py -m ...` for sweeps,
`torchrun --nproc_per_node=N run.py ...` for data-parallel training."""

import os
import sys
import tempfile

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from brewlab.pipeline import run_job

    return run_job(cfg)


if __name__ == "__main__":
    if int(os.environ.get("RANK", 0)) > 0:  # data-parallel ranks other than 0 write no run directory
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")]
        sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='brewlab-rank')}", "hydra.output_subdir=null"]
    main()
