"""Train a segmentation model: `python scripts/train.py [overrides]` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from semseg.cli import run_job
from semseg.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@run_job
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("val/miou")  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
