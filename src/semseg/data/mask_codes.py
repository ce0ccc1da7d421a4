"""The codes masks travel as, from the files to the device: uint8 class indices.

A module of its own, without torch, so that the readers of mask files (the data check,
scripts/inspect_data.py) need not load torch for one constant."""

# The code of ignored pixels (stored ignore values and padding). It can never be a class:
# num_classes is at most 254.
MASK_PAD_CODE = 255
