"""Lightning's MLFlowLogger, able to continue the MLflow run of a checkpoint being resumed."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from semseg.lightning_private import flat_params

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 250  # what Lightning's MLFlowLogger keeps of a parameter's value
MLFLOW_STORE_FILE = "mlflow.db"  # the local store's database, in save_dir (mlruns/)


def quiet_mlflow() -> None:
    """MLflow's usage telemetry off, and no run address printed each time a run ends (Lightning ends
    it after each of fit, validate and test: finish_logger prints it once). MLflow reads both when
    imported; a user's own settings of them win."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def local_store(save_dir: str | None) -> tuple[str, str]:
    """The tracking URI and artifact location of the local store in ``save_dir`` (default
    ``mlruns``): a SQLite database, not MLflow's ./mlruns file store, which MLflow 3 refuses
    (maintenance mode) unless MLFLOW_ALLOW_FILE_STORE is set. Absolute paths: the store is the same
    whatever reads it later, and the artifacts sit beside the database. Made if missing."""
    store = Path(save_dir or "mlruns").resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / MLFLOW_STORE_FILE}", (store / "artifacts").as_uri()


class MLflowRunLogger(MLFlowLogger):
    """``MLFlowLogger`` that, given the ``run_id`` of an earlier run (resuming its checkpoint), logs
    into that run without stopping on its parameters.

    MLflow refuses to change a logged parameter, and a resumed run logs its config again, often
    with a value changed (``trainer.max_epochs`` raised to train on): Lightning's logger would stop
    the run there. Here the parameters the run holds already are not logged again, and the changed
    ones are recorded as tags ``resumed/<key>`` with their new values, and said in the log.

    Without a ``tracking_uri`` it logs into the local store in ``save_dir`` (``local_store``).
    """

    def __init__(
        self,
        *args: Any,
        tracking_uri: str | None = None,
        save_dir: str | None = "mlruns",
        artifact_location: str | None = None,
        run_id: str | None = None,
        **kwargs: Any,
    ):
        quiet_mlflow()
        if not tracking_uri:
            tracking_uri, local_artifacts = local_store(save_dir)
            artifact_location = artifact_location or local_artifacts
        super().__init__(
            *args,
            tracking_uri=tracking_uri,
            save_dir=save_dir,
            artifact_location=artifact_location,
            run_id=run_id,
            **kwargs,
        )
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
