"""Data: image-mask folders, their transforms, and the synthetic default."""

from semseg.data.datamodule import SegmentationDataModule

__all__ = ["SegmentationDataModule"]
