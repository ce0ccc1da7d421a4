"""Leaderboard of finished runs: `python scripts/report.py <run or multirun folder> [--sort val/miou]
[--compare "loss=wce" "loss=ce"]`.

Writes into the folder (or --output):
- leaderboard.md: the headline metrics of each row (runs that differ only in their seed) as a mean
  with its 95% confidence interval (resampling seeds and images), each row against the best with
  the paired difference in mIoU, its interval, P(difference > 0) and a verdict (better, worse, not
  distinguishable at this sample size); the pairs asked for with --compare class by class; costs;
  per-class IoU.
- leaderboard.csv, comparisons.csv: the same numbers as tables.
- leaderboard.png (scores), comparisons.png (the differences with their intervals) and
  predictions.png (the same validation images predicted by every run's best checkpoint).
The intervals come from each run's per_image_scores.npz alone (training and eval.py write it): no
checkpoint is needed but for predictions.png (--no-pictures). Offline: it reads the run folders only.
"""

import argparse
from pathlib import Path

from semseg.cli import exit_on_user_error
from semseg.reporting.intervals import RESAMPLES  # light: NumPy only


# argparse, not @hydra.main: it reads finished run folders (each with its own saved config) rather
# than composing a config of its own.
@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a run folder, or a multirun folder of several runs")
    parser.add_argument("--sort", default="val/miou", help="metric to rank by (default val/miou)")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default: the folder)")
    parser.add_argument(
        "--compare",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help='two rows to compare class by class: a row\'s name or overrides ("loss=wce"), or a run folder; repeatable',
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default {RESAMPLES})")
    parser.add_argument("--images", type=int, default=4, help="validation images in predictions.png (default 4)")
    parser.add_argument("--no-pictures", action="store_true", help="skip predictions.png (loads every checkpoint)")
    args = parser.parse_args()
    # After the command line: the runs' scores are read with torch (--help need not wait for it).
    from semseg.reporting.report import write_report

    print(
        write_report(
            args.folder, args.sort, args.output, args.images, not args.no_pictures, args.compare, args.resamples
        )
    )


if __name__ == "__main__":
    main()
