"""Train a segmentation model: `python scripts/train.py [overrides]` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from semseg.cli import exit_if_extras_missing, run_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@run_job
def main(cfg: DictConfig) -> float | None:
    # Imported here, after Hydra read the command line: torch and Lightning take seconds to load,
    # which `--help` or a config error need not wait for (tests/test_console.py).
    from semseg.training.train import train

    metrics = train(cfg)
    return metrics.get("val/miou")  # what a Hydra sweeper optimises


if __name__ == "__main__":
    exit_if_extras_missing()
    main()
