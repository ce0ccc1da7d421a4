"""Speed: `python scripts/benchmark.py [overrides]` (see conf/benchmark.yaml; `make bench`).

Prints the pipeline/plain-loop, loader/consumption and fused/unfused-optimizer ratios, the scan
time of a 10,000-pair folder and a per-architecture table; writes them to
<output_dir>/benchmark.json."""

import hydra
from omegaconf import DictConfig

from semseg.cli import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from semseg.bench.run import run_benchmark  # torch loads after the command line is read: --help is quick

    run_benchmark(cfg)


if __name__ == "__main__":
    main()
