"""A sweep's MLflow parent run: every job of a multirun logs its run under it (MLflow's
``mlflow.parentRunId`` tag), so the tracking UI shows the sweep as one run holding its jobs.

The first job to ask creates it; the others, in parallel processes or on other nodes of a cluster
(the sweep folder shared), find it by its ``semseg_sweep_parent`` tag, under a file lock in the sweep
folder so that two jobs never create two parents. ``EndSweepParentRun`` (a Hydra callback) ends it
when the sweep ends.
"""

from __future__ import annotations

import json
from pathlib import Path

from filelock import FileLock

PARENT_FILE = "mlflow_parent_run.json"  # in the sweep folder: the parent's tracking URI and run id
PARENT_TAG = "semseg_sweep_parent"  # the parent's: its sweep folder
SWEEP_TAG = "semseg_sweep_dir"  # each job's: its sweep folder


def sweep_parent_run(tracking_uri: str, experiment_name: str, artifact_location: str | None, sweep_dir: Path) -> str:
    """The id of the MLflow parent run of the sweep in ``sweep_dir``, created if none exists."""
    from mlflow.tracking import MlflowClient

    sweep_dir = sweep_dir.resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    with FileLock(sweep_dir / f"{PARENT_FILE}.lock"):
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            experiment_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
        else:
            experiment_id = experiment.experiment_id
        found = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{sweep_dir}'", max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"sweep {sweep_dir.name}", tags={PARENT_TAG: str(sweep_dir)})
        (sweep_dir / PARENT_FILE).write_text(json.dumps({"tracking_uri": tracking_uri, "run_id": run.info.run_id}))
        return run.info.run_id


def end_sweep_parent_run(sweep_dir: Path) -> None:
    """Ends the sweep's parent run (FINISHED), if its jobs made one."""
    record = sweep_dir / PARENT_FILE
    if not record.is_file():
        return
    from mlflow.tracking import MlflowClient

    parent = json.loads(record.read_text())
    MlflowClient(parent["tracking_uri"]).set_terminated(parent["run_id"], "FINISHED")
