"""Train a segmentation model: `python scripts/train.py [overrides]` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from semseg.cli import exit_on_user_error
from semseg.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("val/miou")  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
