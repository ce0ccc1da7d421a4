"""Leaderboard of finished runs: `python scripts/report.py <run or multirun folder> [--sort val/miou]`.

Writes leaderboard.md and leaderboard.csv into the folder (or --output) and prints the Markdown.
Runs that differ only in their seed are one row, with mean ± std.
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
    args = parser.parse_args()
    runs = find_runs(args.folder)
    rows = leaderboard(runs, args.sort)
    columns = metric_columns(runs)
    output = args.output or args.folder
    output.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows, columns)
    (output / "leaderboard.md").write_text(markdown)
    write_csv(output / "leaderboard.csv", rows, columns)
    print(markdown)
    print(f"{len(runs)} runs in {len(rows)} rows: {output / 'leaderboard.md'}, {output / 'leaderboard.csv'}")


if __name__ == "__main__":
    main()
