"""Lightning's model summary with the FLOPs semseg counts."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelSummary


class ModelSummaryWithFlops(ModelSummary):
    """Lightning's model summary, with the network's FLOPs as training counts them (run_info.json's
    ``gflops``: one image at the training input size) instead of "0".

    Lightning counts FLOPs only by running ``example_input_array`` through the model when fitting
    starts, which this module does not set: a compiled network would compile one more shape for it,
    and training has counted them already. Plain text, through logging: it lands in train.log too.

    Args:
        flops: FLOPs of one forward pass of one image.
        max_depth: as Lightning's ``ModelSummary``.
    """

    def __init__(self, flops: int, max_depth: int = 1):
        super().__init__(max_depth)
        self.flops = flops

    def summarize(self, summary_data, total_parameters, trainable_parameters, model_size, modes, total_flops, **kw):
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]  # not counted per layer
        ModelSummary.summarize(columns, total_parameters, trainable_parameters, model_size, modes, self.flops, **kw)
