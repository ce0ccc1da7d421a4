"""Predict masks: `python scripts/predict.py ckpt_path=... input=<folder or file> output=<folder>`
(see conf/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from semseg.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from semseg.inference.predict import predict  # torch loads after the command line is read: --help is quick

    predict(cfg)


if __name__ == "__main__":
    main()
