"""Lightning's MLFlowLogger, able to continue the MLflow run of a checkpoint being resumed."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from semseg.lightning_private import flat_params

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 250  # what Lightning's MLFlowLogger keeps of a parameter's value


class MLflowRunLogger(MLFlowLogger):
    """``MLFlowLogger`` that, given the ``run_id`` of an earlier run (resuming its checkpoint), logs
    into that run without stopping on its parameters.

    MLflow refuses to change a logged parameter, and a resumed run logs its config again, often
    with a value changed (``trainer.max_epochs`` raised to train on): Lightning's logger would stop
    the run there. Here the parameters the run holds already are not logged again, and the changed
    ones are recorded as tags ``resumed/<key>`` with their new values, and said in the log.
    """

    def __init__(self, *args: Any, run_id: str | None = None, **kwargs: Any):
        super().__init__(*args, run_id=run_id, **kwargs)
        self.continues_run = run_id is not None

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if not self.continues_run:
            return super().log_hyperparams(params)
        held = self.experiment.get_run(self.run_id).data.params
        values = {key: str(value)[:MAX_PARAM_CHARS] for key, value in flat_params(params).items()}
        changed = {key: value for key, value in values.items() if key in held and held[key] != value}
        for key, value in changed.items():
            self.experiment.set_tag(self.run_id, f"resumed/{key}", value)
        if changed:
            listed = ", ".join(f"{key}: {held[key]} -> {value}" for key, value in changed.items())
            log.info(f"MLflow run {self.run_id} continues; changed since, recorded as resumed/<key> tags: {listed}")
        super().log_hyperparams({key: value for key, value in values.items() if key not in held})
