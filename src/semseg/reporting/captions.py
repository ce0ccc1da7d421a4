"""What every picture shows and how it says so (run folder, W&B, the leaderboard's): its title, and
the seeded choice of example images."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def picture_title(split: str, epoch: int | None, checkpoint: str | None = None, last: bool = False) -> str:
    """What a picture shows: "val, epoch 12, best.ckpt", "val, epoch 30 (last)". ``epoch`` counts
    from 1, as the console, train.log and run_info.json do (Lightning's counter + 1)."""
    parts = [split]
    if epoch is not None:
        parts.append(f"epoch {epoch}" + (" (last)" if last else ""))
    if checkpoint:
        parts.append(checkpoint)
    return ", ".join(parts)


def example_names(names: Iterable[str], count: int, seed: int) -> list[str]:
    """A seeded choice of ``count`` of ``names`` (all when there are fewer), sorted.

    The choice is made over the sorted names, so it depends on the set of names and the seed only,
    not on the order in which a data set lists them.
    """
    ordered = sorted(names)
    rng = np.random.default_rng(seed)
    return sorted(ordered[i] for i in rng.choice(len(ordered), min(count, len(ordered)), replace=False))
