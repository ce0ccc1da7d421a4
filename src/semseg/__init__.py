"""semseg: semantic segmentation experiments with Lightning and Hydra."""
