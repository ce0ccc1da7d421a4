"""Lightning callbacks of semseg, by what they serve: pictures of each validation, progress and the
per-epoch log line, fault tolerance, the model summary, weight averaging, pruning of Optuna trials.
Configs name them as ``semseg.callbacks.<Class>``."""

from semseg.callbacks.averaging import EMAWeights
from semseg.callbacks.model_summary import ModelSummaryWithFlops
from semseg.callbacks.optuna_pruning import OptunaPruning
from semseg.callbacks.pictures import ValidationPictures
from semseg.callbacks.progress import EpochLog, LossProgressBar
from semseg.callbacks.resilience import CheckpointOnSigterm, StopRanksOnError, VerifiedCheckpoint

__all__ = [
    "CheckpointOnSigterm",
    "EMAWeights",
    "EpochLog",
    "LossProgressBar",
    "ModelSummaryWithFlops",
    "OptunaPruning",
    "StopRanksOnError",
    "ValidationPictures",
    "VerifiedCheckpoint",
]
