"""Per-image scores: each evaluated image's confusion matrix and boundary counts, with its name.

Training writes them for val (and test when labelled) of the best checkpoint, eval.py for the split
it scores, into ``per_image_scores.npz`` (``RunFolder.per_image_scores``). Summed over any subset
or resample of the images they give the split's contract scores exactly (``batch_scores``): the
report's confidence intervals and paired comparisons are computed from these files alone, without
the checkpoints.

The file (NumPy's compressed ``.npz``) holds, for each scored split ``<s>``:

    <s>/names        (N,) image names (file stems), in no particular order
    <s>/confusion    (N, C, C) pixel counts, rows target, columns prediction (multiclass), or
                     (N, K, 2, 2) each class's presence counts (binary, multilabel)
    <s>/boundary     (N, 2, C) boundary IoU's intersection and union pixel counts (multiclass; 2K
                     entries over ``boundary_planes`` for binary and multilabel)

and once: ``class_names``, ``ignore_index`` (-1 for none), ``mode``, ``format`` (this layout's version).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from semseg.errors import DataError
from semseg.files import atomic_path
from semseg.task.metrics import batch_scores, counted_class_names

FORMAT = 1


@dataclass
class PerImageScores:
    """One split's per-image records (see the module docstring), and what they need to be scored."""

    names: np.ndarray
    confusion: np.ndarray
    boundary: np.ndarray
    class_names: list[str]
    ignore_index: int | None
    mode: str

    def __len__(self) -> int:
        return len(self.names)

    def scores(self) -> dict[str, float]:
        """The split's headline scores from the summed records: what its metrics.json says."""
        means, _ = self.scores_of(self.confusion.sum(0)[None], self.boundary.sum(0)[None])
        return {key: float(value[0]) for key, value in means.items()}

    def scores_of(self, confusion: np.ndarray, boundary: np.ndarray) -> tuple[dict, dict]:
        """``batch_scores`` (as NumPy arrays) of summed records: ``confusion`` (..., C, C) and
        ``boundary`` (..., 2, C), e.g. one per resample of the images."""
        boundary = torch.as_tensor(boundary, dtype=torch.float64)
        intersection, union = boundary[..., 0, :], boundary[..., 1, :]
        boundary_iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.nan)
        means, per_class = batch_scores(torch.as_tensor(confusion), self.mode, self.ignore_index, boundary_iou)
        return {k: v.numpy() for k, v in means.items()}, {k: v.numpy() for k, v in per_class.items()}

    def scored_class_names(self) -> list[str]:
        """The names of the per-class scores' columns (``batch_scores``: ignore_index left out)."""
        if self.mode == "multiclass":
            return counted_class_names(self.class_names, self.ignore_index)
        return list(self.class_names)

    def in_order(self, names: Sequence[str]) -> PerImageScores:
        """These records in the order of ``names`` (another run's, to pair images).

        Raises:
            DataError: the two sets of images differ.
        """
        position = {name: index for index, name in enumerate(self.names.tolist())}
        missing = [name for name in names if name not in position]
        if missing or len(names) != len(position):
            raise DataError(
                f"the runs scored different images ({len(position)} and {len(names)}; e.g. {missing[:3]} only in "
                "one): paired comparisons need the same split."
            )
        order = np.array([position[name] for name in names])
        return PerImageScores(
            self.names[order],
            self.confusion[order],
            self.boundary[order],
            self.class_names,
            self.ignore_index,
            self.mode,
        )


class PerImageRecorder:
    """Collects one stage's per-image records, batch by batch, on the CPU."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.confusion: list[torch.Tensor] = []
        self.boundary: list[torch.Tensor] = []

    def add(
        self, names: Sequence[str], confusion: torch.Tensor, intersection: torch.Tensor, union: torch.Tensor
    ) -> None:
        """Adds a batch: its names, (N, ...) confusion matrices and (N, C) boundary counts."""
        self.names += list(names)
        # int32 halves the file and the memory (a 46k x 46k image still fits); the copy to the host
        # is a sync, paid only in the final scoring, where it is asked for.
        self.confusion.append(confusion.to(torch.int32).cpu())
        self.boundary.append(torch.stack([intersection, union], dim=1).to(torch.int32).cpu())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(names, confusion, boundary) of every image this process and, under DDP, every rank saw;
        an image that a distributed sampler gave twice (padding its last batch) counted once."""
        records = (self.names, self.confusion, self.boundary)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, records)
        else:
            gathered = [records]
        names, confusion, boundary, seen = [], [], [], set()
        for rank_names, rank_confusion, rank_boundary in gathered:
            if not rank_names:
                continue
            for name, matrix, counts in zip(
                rank_names, torch.cat(rank_confusion), torch.cat(rank_boundary), strict=True
            ):
                if name not in seen:
                    seen.add(name)
                    names.append(name)
                    confusion.append(matrix.numpy())
                    boundary.append(counts.numpy())
        if not names:
            return np.array([], dtype=str), np.zeros((0,)), np.zeros((0,))
        return np.array(names), np.stack(confusion), np.stack(boundary)


def write_per_image_scores(
    path: Path,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    ignore_index: int | None,
    mode: str,
) -> None:
    """Writes the ``splits``' records (``PerImageRecorder.arrays``) into ``path``, atomically."""
    arrays = {
        "class_names": np.array(list(class_names)),
        "ignore_index": np.array(-1 if ignore_index is None else ignore_index),
        "mode": np.array(mode),
        "format": np.array(FORMAT),
    }
    for split, (names, confusion, boundary) in splits.items():
        arrays |= {f"{split}/names": names, f"{split}/confusion": confusion, f"{split}/boundary": boundary}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def read_per_image_scores(path: Path) -> dict[str, PerImageScores]:
    """The per-image records of each split in ``path``.

    Raises:
        DataError: the file is not one of these (or of a newer format).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not a per-image scores file ({error}): re-score the run with eval.py.") from error
    if int(arrays.get("format", -1)) != FORMAT:
        raise DataError(f"{path} has format {arrays.get('format')}, this semseg reads {FORMAT}: upgrade semseg.")
    ignore_index = int(arrays["ignore_index"])
    common = ([str(n) for n in arrays["class_names"]], None if ignore_index < 0 else ignore_index, str(arrays["mode"]))
    splits = sorted({key.split("/")[0] for key in arrays if "/" in key})
    return {
        split: PerImageScores(
            arrays[f"{split}/names"], arrays[f"{split}/confusion"], arrays[f"{split}/boundary"], *common
        )
        for split in splits
    }
