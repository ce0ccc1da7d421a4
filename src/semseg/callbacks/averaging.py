"""Weight averaging: Lightning's exponential moving average, scored in test as well as validation."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMAWeights(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (conf/callbacks/ema.yaml), with the average also in test.

    Lightning swaps the average in for validation only. Training's ``trainer.test(ckpt_path=best)``
    after fitting would then score the trained weights: loading the checkpoint puts its
    ``current_model_state`` into the module and the average into the callback. Swapping for test as
    for validation makes test score the weights that validation chose best.ckpt by, and that
    best.ckpt holds (``state_dict`` is the average, so eval.py and export.py use it as well).
    """

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)
