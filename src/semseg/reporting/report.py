"""report.py's job: the leaderboard of the runs under a folder, with intervals and paired comparisons
(from the runs' per-image scores), its tables and its pictures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from semseg.errors import DataError
from semseg.files import atomic_path
from semseg.reporting.comparisons import (
    Comparison,
    SplitSamples,
    against_best,
    compare,
    named_row,
    split_samples,
    write_comparisons_csv,
)
from semseg.reporting.intervals import RESAMPLES
from semseg.reporting.leaderboard import Row, find_runs, leaderboard, metric_columns
from semseg.reporting.tables import (
    against_best_table,
    costs_table,
    headline_table,
    notes,
    pair_table,
    per_class_table,
    write_leaderboard_csv,
)

SPLITS = ("val", "test")


def _pairs(
    rows: list[Row], samples: dict[str, SplitSamples], compare_specs: Sequence[tuple[str, str]]
) -> list[Comparison]:
    """The comparisons the command line asks for (``--compare A B``), on every split both rows were
    scored on alike; rows named by a folder join ``rows`` and are resampled with them."""
    pairs = []
    for spec_a, spec_b in compare_specs:
        a, b = named_row(rows, spec_a), named_row(rows, spec_b)
        if a.name == b.name:
            raise DataError(f'--compare "{spec_a}" "{spec_b}" names one row twice ({a.name}): name two.')
        found = [split for split, s in samples.items() if s.comparable(a.name, b.name)]
        if not found:
            why = "; ".join(f"{split}: {s.missing.get(a.name) or s.missing.get(b.name) or 'other images'}"
                            for split, s in samples.items())  # fmt: skip
            raise DataError(
                f"{a.name} and {b.name} have no split scored on the same images with per-image scores ({why})."
            )
        pairs += [compare(samples[split], a.name, b.name) for split in found]
    return pairs


def write_report(
    folder: Path,
    sort: str = "val/miou",
    output: Path | None = None,
    images: int = 4,
    pictures: bool = True,
    compare_specs: Sequence[tuple[str, str]] = (),
    resamples: int = RESAMPLES,
) -> str:
    """Writes the leaderboard of the runs under ``folder`` into ``output`` (default: ``folder``):
    leaderboard.md (headline metrics with intervals, the comparisons, costs, per-class IoU),
    leaderboard.csv, comparisons.csv, leaderboard.png, comparisons.png and, with ``pictures``,
    predictions.png of ``images`` validation images. Returns what to print."""
    # Here, not at the top: matplotlib, torch and Lightning take seconds to load, which report.py's
    # --help (and whoever only reads runs) need not wait for.
    from semseg.reporting.difference_plot import comparisons_plot
    from semseg.reporting.figures import bar_chart, prediction_grid

    runs = find_runs(folder)
    rows = leaderboard(runs, sort)
    # Rows named by a folder on the command line take part like the others.
    named = [named_row(rows, spec) for pair in compare_specs for spec in pair]
    everything = list(rows)
    for row in named:
        if all(row.name != known.name for known in everything):
            everything.append(row)
    samples = {split: split_samples(everything, split, resamples) for split in SPLITS}
    samples = {split: s for split, s in samples.items() if s.samples or (s.missing and _scored(rows, split))}
    headline, per_class = metric_columns(runs)
    best = rows[0].name
    versus_best = [c for s in samples.values() for c in against_best(s, best) if c.run in {r.name for r in rows}]
    pairs = _pairs(everything, samples, compare_specs)
    listed = {(c.split, c.run, c.against) for c in versus_best}
    extra_pairs = [c for c in pairs if (c.split, c.run, c.against) not in listed]  # not twice in comparisons.csv

    sections = [f"# Leaderboard: {folder}", headline_table(rows, headline, samples)]
    if versus_best:
        sections += [f"## Against the best ({best})", against_best_table(versus_best)]
    for pair in pairs:
        sections += [f"## {pair.run} against {pair.against} ({pair.split})", pair_table(pair, samples[pair.split])]
    sections += ["## Costs", costs_table(rows)]
    for split, columns in sorted(per_class.items(), key=lambda item: SPLITS.index(item[0])):
        sections += [
            f"## Per-class IoU, {split} (means; intervals in leaderboard.csv)",
            per_class_table(rows, columns, samples),
        ]
    written = notes(rows, samples)
    if written:
        sections += ["## Notes", "\n".join(written)]
    markdown = "\n\n".join(section.strip() for section in sections) + "\n"

    output = output or folder
    with atomic_path(output / "leaderboard.md") as tmp:
        tmp.write_text(markdown)
    write_leaderboard_csv(
        output / "leaderboard.csv", rows, headline + [k for c in per_class.values() for k in c], samples
    )
    write_comparisons_csv(output / "comparisons.csv", versus_best + extra_pairs)
    bar_chart(rows, output / "leaderboard.png", samples=samples)
    chosen = pairs[0] if pairs else next((c for c in versus_best if c.split == sort.split("/")[0]), None)
    comparisons_plot(versus_best, chosen, output / "comparisons.png")
    picture_notes = prediction_grid(runs, output / "predictions.png", images) if pictures else []
    written_files = "leaderboard.md, .csv, .png, comparisons.csv, .png" + (" and predictions.png" if pictures else "")
    summary = f"{len(runs)} runs in {len(rows)} rows; wrote {written_files} to {output}"
    return "\n".join([markdown, *picture_notes, summary])


def _scored(rows: Sequence[Row], split: str) -> bool:
    """Some run has ``split``'s metrics (then a row without its per-image scores is worth a note)."""
    return any(
        f"{split}/miou" in run.metrics and run.metrics[f"{split}/miou"] is not None for r in rows for run in r.runs
    )
