"""Check a data set before training: `python scripts/inspect_data.py [data overrides]`.

Prints the splits, class pixel frequencies, per-image presence, suggested class weights and every
problem (file + fix); writes the JSON report (`report=<file>`); exits 1 when there are problems.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from semseg.cli import exit_on_user_error
from semseg.data.doctor import inspect_data_config
from semseg.files import write_json_atomic


@hydra.main(version_base="1.3", config_path="../conf", config_name="inspect_data")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    report = inspect_data_config(OmegaConf.to_container(cfg.data, resolve=True), full=cfg.full)
    print(report.summary())
    write_json_atomic(Path(cfg.report), report.to_json())
    print(f"report: {cfg.report}")
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
