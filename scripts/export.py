"""Export a checkpoint: `python scripts/export.py ckpt_path=... format=onnx [output=...]`
(see conf/export.yaml). The export is checked against PyTorch before it is written."""

import hydra
from omegaconf import DictConfig

from semseg.cli import exit_if_extras_missing, exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from semseg.inference.export import export  # torch loads after the command line is read: --help is quick

    export(cfg)


if __name__ == "__main__":
    exit_if_extras_missing()
    main()
