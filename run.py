"""Entry point: `python run.py [group=option ...]`, `python run.py -m ...` for sweeps."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from brewlab.pipeline import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
