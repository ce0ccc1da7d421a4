"""Evaluate a checkpoint: `python scripts/eval.py ckpt_path=... [split=test] [data overrides]`
(see conf/eval.yaml). Prints and saves the metrics and a per-class table."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from semseg.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from semseg.inference.evaluate import (
        evaluate,  # torch and Lightning load after the command line is read: --help is quick
    )

    evaluate(cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    main()
