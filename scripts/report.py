"""Leaderboard of finished runs: `python scripts/report.py <run or multirun folder> [--sort val/miou]`.

Writes into the folder (or --output): leaderboard.md and leaderboard.csv (runs that differ only in
their seed are one row, with mean ± std), leaderboard.png (a bar chart) and predictions.png (the
same validation images predicted by every run's best checkpoint, side by side). Offline: it reads
the run folders only.
"""

import argparse
from pathlib import Path

from semseg.cli import exit_on_user_error
from semseg.report import find_runs, leaderboard, metric_columns, to_markdown, write_csv


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a run folder, or a multirun folder of several runs")
    parser.add_argument("--sort", default="val/miou", help="metric to rank by (default val/miou)")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default: the folder)")
    parser.add_argument("--images", type=int, default=4, help="validation images in predictions.png (default 4)")
    parser.add_argument("--no-pictures", action="store_true", help="skip predictions.png (loads every checkpoint)")
    args = parser.parse_args()
    # After parsing: matplotlib, torch and Lightning take seconds to load, which --help need not wait for.
    from semseg.report_figures import bar_chart, prediction_grid

    runs = find_runs(args.folder)
    rows = leaderboard(runs, args.sort)
    columns = metric_columns(runs)
    output = args.output or args.folder
    output.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows, columns)
    (output / "leaderboard.md").write_text(markdown)
    write_csv(output / "leaderboard.csv", rows, columns)
    bar_chart(rows, output / "leaderboard.png")
    notes = [] if args.no_pictures else prediction_grid(runs, output / "predictions.png", args.images)
    print(markdown)
    print("\n".join(notes))
    print(f"{len(runs)} runs in {len(rows)} rows; wrote leaderboard.md, .csv, .png and predictions.png to {output}")


if __name__ == "__main__":
    main()
