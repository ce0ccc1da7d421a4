"""Leaderboard of finished runs: `python scripts/report.py <run or multirun folder> [--sort val/miou]`.

Writes into the folder (or --output): leaderboard.md and leaderboard.csv (runs that differ only in
their seed are one row, with mean ± std), leaderboard.png (a bar chart) and predictions.png (the
same validation images predicted by every run's best checkpoint, side by side). Offline: it reads
the run folders only.
"""

import argparse
from pathlib import Path

from semseg.cli import exit_on_user_error
from semseg.reporting.leaderboard import write_leaderboard  # light: it loads matplotlib and torch when it draws


# argparse, not @hydra.main: it reads finished run folders (each with its own saved config) rather
# than composing a config of its own.
@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a run folder, or a multirun folder of several runs")
    parser.add_argument("--sort", default="val/miou", help="metric to rank by (default val/miou)")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default: the folder)")
    parser.add_argument("--images", type=int, default=4, help="validation images in predictions.png (default 4)")
    parser.add_argument("--no-pictures", action="store_true", help="skip predictions.png (loads every checkpoint)")
    args = parser.parse_args()
    print(write_leaderboard(args.folder, args.sort, args.output, args.images, pictures=not args.no_pictures))


if __name__ == "__main__":
    main()
