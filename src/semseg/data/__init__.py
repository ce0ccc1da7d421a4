"""Data: image-mask folders, their transforms, and the synthetic default."""

__all__ = ["SegmentationDataModule"]


def __getattr__(name: str):
    # The data module (torch, Lightning: seconds to import) loads when first asked for, so that
    # scripts/inspect_data.py and the other torch-free readers of semseg.data start at once.
    if name == "SegmentationDataModule":
        from semseg.data.datamodule import SegmentationDataModule

        return SegmentationDataModule
    raise AttributeError(f"module 'semseg.data' has no attribute {name!r}")
