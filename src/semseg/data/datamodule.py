"""LightningDataModule over an image-mask folder (images/{train,val,test}, masks/{train,val,test})."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from torch.utils.data import DataLoader

from semseg.data.batch import MASK_PAD_CODE, pad_collate
from semseg.data.cores import data_parallelism
from semseg.data.dataset import SegmentationDataset
from semseg.data.layout import DataLayout
from semseg.data.loader_workers import init_worker
from semseg.data.mask_encoding import resolve_class_names
from semseg.data.multilabel_masks import mask_encoder
from semseg.data.rare_class import RareClassSampler, sampler_settings
from semseg.data.reading import is_8_bit_grey_or_colour
from semseg.data.samples import FileSamples, PackedSamples, sample_source
from semseg.data.sampling import EpochSampler
from semseg.data.synthetic import SyntheticSpec, generate
from semseg.data.transforms import build_transforms, check_augmentations
from semseg.errors import DataError

# The Lightning stages (None: all) that need each split.
SPLIT_STAGES = {"train": (None, "fit"), "val": (None, "fit", "validate"), "test": (None, "test")}


def default_num_workers(model_on_cpu: bool = False, cached: bool = False) -> int:
    """Loader workers for ``data.num_workers: null``: one per core this process may use (at most
    ``semseg.data.cores.MAX_PARALLEL_DATA``), or none when the model trains on the CPU from cached samples.

    Then a sample costs a copy and its augmentations (well under a millisecond at 192x256), and
    worker processes would only contend with the model's threads for the same cores: on 2 cores
    the loop without workers trained ~8% faster than with 2 (benchmark; docs/speed.md).
    """
    return 0 if model_on_cpu and cached else data_parallelism()


class SegmentationDataModule(L.LightningDataModule):
    """Batches of ``{"image", "mask", "name"}`` from an image-mask folder, uint8 as stored
    (``semseg.data.batch``: the LightningModule normalises them on its device).

    Args mirror the ``data`` config group (see conf/data/*.yaml); ``seed`` makes the
    augmentations reproducible; ``train_class_pixels`` (mask path -> pixels per class, from the
    start-up inspection: ``SplitReport.image_class_pixels``) is what ``sampler=rare_class`` draws by.
    """

    def __init__(
        self,
        root: str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        label_map: Mapping[int, int] | str | None = None,
        split_files: Mapping[str, str] | None = None,
        image_folder: str = "images",
        mask_folder: str = "masks",
        in_channels: int = 3,
        batch_size: int = 8,
        num_workers: int | None = None,
        image_size: Sequence[int] | None = None,
        crop_size: Sequence[int] | None = None,
        augment: Sequence | None = None,
        synthetic: Mapping | None = None,
        cache: str = "auto",
        cache_max_gb: float = 4.0,
        mode: str = "multiclass",
        sampler: str | None = None,
        rare_class: Mapping | None = None,
        seed: int | None = None,
        train_class_pixels: Mapping[Path, np.ndarray] | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        self.layout = DataLayout.of(
            {"root": root, "split_files": split_files, "image_folder": image_folder, "mask_folder": mask_folder}
        )
        self.num_classes = num_classes
        self.class_names = resolve_class_names(num_classes, class_names, label_map, ignore_index, root)
        self.ignore_index = self.effective_ignore_index(ignore_index)
        self.mode = mode  # data.mode: multiclass, binary or multilabel (semseg.data.multilabel_masks)
        self.encoder = mask_encoder(mode, num_classes, self.class_names, ignore_index, label_map, root)
        self.in_channels = in_channels
        self.batch_size = batch_size
        self.num_workers = num_workers  # None: workers_for decides per loader
        self.synthetic = SyntheticSpec(**synthetic) if synthetic else None
        self.image_size = image_size
        self.cache, self.cache_max_gb = cache, cache_max_gb
        self.rare_class = sampler_settings(sampler, rare_class)  # None: the plain shuffle
        self.train_class_pixels = train_class_pixels
        # Without a seed, one drawn here: shuffling and augmentations still need one (EpochSampler).
        self.seed = secrets.randbits(31) if seed is None else int(seed)
        self.train_transform = build_transforms(
            train=True, crop_size=crop_size, augment=augment, seed=self.seed, image_size=image_size
        )
        self.eval_transform = build_transforms(train=False)
        self.datasets: dict[str, SegmentationDataset] = {}

    @staticmethod
    def effective_ignore_index(ignore_index: int | None) -> int:
        """The target value of ignored pixels: ``data.ignore_index``, or the pad code when null.

        Padding always needs an ignored value; with no ignore_index configured, the pad code
        (never a class, as data.num_classes <= 254) plays that part.
        """
        return MASK_PAD_CODE if ignore_index is None else int(ignore_index)

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            generate(self.root, self.synthetic)

    def _files(self, split: str, require_masks: bool) -> FileSamples:
        pairs = self.layout.list_pairs(split, require_masks=require_masks)
        return FileSamples(pairs, self.encoder, self.in_channels, self.image_size)

    def _dataset(self, split: str) -> SegmentationDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        files = self._files(split, require_masks=split != "test")
        # Train and val are read every epoch: worth caching. Test is read once.
        cache = self.cache if split != "test" else "off"
        source = sample_source(files, cache, self.cache_max_gb, self.layout.describe(split))
        if split == "train" and len(source):
            image, mask = source[0]
            if not is_8_bit_grey_or_colour(image.dtype.name, image.shape[2]):
                check_augmentations(transform, image, mask)
        crop = self.rare_class.crop if split == "train" and self.rare_class else None
        return SegmentationDataset(files.pairs, source, transform, self.seed, class_crop=crop)

    @property
    def has_test_split(self) -> bool:
        """True when a labelled test split exists (the split is optional; an empty one is none)."""
        return self.layout.has_labels("test")

    def setup(self, stage: str | None = None) -> None:
        # Each split is built once: train() validates and tests after fit, and a cached split
        # would otherwise be decoded again for each stage.
        wanted = [split for split, stages in SPLIT_STAGES.items() if stage in stages]
        for split in wanted:
            if split not in self.datasets and (split != "test" or self.has_test_split):
                self.datasets[split] = self._dataset(split)

    def evaluation_dataloader(self, split: str) -> DataLoader:
        """Any labelled split, in order, with the evaluation transform (no augmentation): what
        eval.py scores, including ``split=train``."""
        files = self._files(split, require_masks=True)
        return self._loader(SegmentationDataset(files.pairs, files, self.eval_transform))

    def workers_for(self, dataset: SegmentationDataset) -> int:
        """``data.num_workers``, or the default for this dataset and the trainer's device."""
        if self.num_workers is not None:
            return self.num_workers
        if self.trainer is not None:
            model_on_cpu = isinstance(self.trainer.accelerator, CPUAccelerator)
        else:  # used on its own: the model goes where a GPU is
            model_on_cpu = not torch.cuda.is_available()
        return default_num_workers(model_on_cpu, cached=isinstance(dataset.source, PackedSamples))

    def _loader(self, dataset: SegmentationDataset, sampler: EpochSampler | None = None) -> DataLoader:
        workers = self.workers_for(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=sampler is not None and len(dataset) > self.batch_size,
            num_workers=workers,
            collate_fn=pad_collate,
            # Pinned host memory lets the copy to the GPU overlap compute (non_blocking).
            pin_memory=torch.cuda.is_available(),
            # Workers that survive the epoch spare re-forking and re-importing every epoch.
            persistent_workers=workers > 0,
            worker_init_fn=init_worker if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        dataset, trainer = self.datasets["train"], self.trainer
        if trainer is None:  # used on its own: the caller sets the epoch
            return self._loader(dataset, self._train_sampler(dataset))
        ranks = (trainer.world_size, trainer.global_rank, self._fit_epoch)
        return self._loader(dataset, self._train_sampler(dataset, *ranks))

    def _train_sampler(self, dataset: SegmentationDataset, *ranks) -> EpochSampler:
        """``data.sampler``'s: the plain shuffle, or rare-class draws (``semseg.data.rare_class``);
        ``ranks``: EpochSampler's num_replicas, rank and epoch_source."""
        if self.rare_class is None:
            return EpochSampler(dataset, self.seed, *ranks)
        return RareClassSampler(dataset, self._class_pixels(dataset), self.rare_class, self.seed, *ranks)

    def _class_pixels(self, dataset: SegmentationDataset) -> np.ndarray:
        """``train_class_pixels`` in the data set's order, matched by mask path."""
        if self.train_class_pixels is None:
            raise DataError(
                "data.sampler=rare_class draws by the train masks' class pixels: pass train_class_pixels "
                "(semseg.data.inspection.inspect_data(...).splits['train'].image_class_pixels), as training does."
            )
        missing = [mask for _, mask in dataset.pairs if mask not in self.train_class_pixels]
        if missing:
            raise DataError(
                f"{missing[0]}: not among the train masks counted at start-up (the split changed?); run again."
            )
        return np.stack([self.train_class_pixels[mask] for _, mask in dataset.pairs])

    def _fit_epoch(self) -> int:
        """The epoch the trainer is in (or resumes at): what Lightning passes to set_epoch."""
        return self.trainer.fit_loop.epoch_progress.current.processed

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"])

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise DataError(f"no labelled {self.layout.describe('test')}: it is missing or has no masks.")
        return self._loader(self.datasets["test"])
