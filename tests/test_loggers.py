"""Loggers users bring: TensorBoard, MLflow (a local store or a server), several at once, and what
each gets (metrics, config, pictures); a missing extra; strategies that lose rank 0's state."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from omegaconf import OmegaConf

from semseg.errors import ConfigError
from semseg.trainer_defaults import refuse_spawned_ranks
from semseg.training.loggers import build_logger, finish_logger, logger_configs
from semseg.training.train import train
from semseg.training.wandb_run import WandbRunLogger
from tests.conftest import compose_cfg

PICTURES = {"val_examples", "val_worst", "confusion_matrix", "per_class_iou", "training_curves"}
IDENTITY = {"name": "unet-ce+dice-s0", "group": None, "tags": ["model:unet", "loss:ce+dice", "data:tiny"]}


@pytest.fixture(autouse=True)
def mlflow_environment(monkeypatch):
    """MLflow keeps its tracking URI in MLFLOW_TRACKING_URI once a logger used one (and
    conf/logger/mlflow.yaml reads it): each test starts without it and leaves none behind."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        monkeypatch.setenv(name, "")  # recorded as absent: restored so after the test
        monkeypatch.delenv(name)


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def the_run(client, experiment: str = "semseg"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    found = set()
    for entry in client.list_artifacts(run_id, folder):
        found |= artifact_paths(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def picture_artifacts(where: str) -> set[str]:
    return {f"pictures/{where}/{name}.png" for name in PICTURES}


def test_logger_layouts_single_and_many():
    single = compose_cfg(["logger=wandb", "output_dir=/tmp/run"]).logger
    assert single._target_.endswith("WandbRunLogger") and single.project == "semseg" and single.save_dir == "/tmp/run"
    many = OmegaConf.to_container(compose_cfg(["logger=many", "output_dir=/tmp/run"]).logger, resolve=True)
    assert "_target_" not in many and set(many) == {"wandb", "csv"}
    assert many["wandb"]["offline"] == "auto" and many["csv"]["save_dir"] == "/tmp/run"
    picked = compose_cfg(
        ["logger=many", "logger.wandb=null", "+logger@logger.mlflow=mlflow", "output_dir=/tmp/run"]
    ).logger
    assert set(logger_configs(OmegaConf.to_container(picked))) == {"logger.csv", "logger.mlflow"}
    # One more beside a single logger: the top level is one, the entry another.
    added = OmegaConf.to_container(compose_cfg(["logger=csv", "+logger@logger.tensorboard=tensorboard"]).logger)
    assert list(logger_configs(added)) == ["logger=csv", "logger.tensorboard"]
    with pytest.raises(ConfigError, match=r"^logger.project is not a logger config"):
        logger_configs({"wandb": None, "project": "semseg"})


def test_tensorboard_mlflow_and_csv_at_once_get_metrics_config_and_pictures(make_cfg, tmp_path: Path):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    store = tmp_path / "mlruns"
    cfg = make_cfg(
        "logger=many",
        "logger.wandb=null",
        "+logger@logger.tensorboard=tensorboard",
        "+logger@logger.mlflow=mlflow",
        f"logger.mlflow.save_dir={store}",
        "run_test=false",
        pictures=True,
    )
    metrics = train(cfg)
    run = Path(cfg.output_dir)

    with open(run / "csv" / "metrics.csv") as f:
        assert {"train/loss", "val/miou"} <= set(next(csv.reader(f)))

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"train/loss", "val/miou", "val/iou/speck"} <= set(events.PluginTagToContent("scalars"))
    images = set(events.PluginTagToContent("images"))
    assert {f"pictures/{name}" for name in PICTURES} | {f"pictures/best/{name}" for name in PICTURES} <= images
    hparams = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["trainer/max_epochs"].number_value == 1
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert "val/miou_best" in {info.name.tag for info in experiment.metric_infos}
    assert OmegaConf.load(run / "tensorboard" / "hparams.yaml").trainer.max_epochs == 1

    client = mlflow_client(f"sqlite:///{store / 'mlflow.db'}")
    found = the_run(client)
    assert found.info.status == "FINISHED" and found.info.run_name == "unet-ce+dice-s0"
    assert {"model": "unet", "loss": "ce+dice", "data": "tiny"}.items() <= found.data.tags.items()
    assert found.data.metrics["val/miou_best"] == pytest.approx(metrics["val/miou"])
    assert {"train/loss", "val/miou"} <= set(found.data.metrics)
    params = found.data.params
    assert params["trainer/max_epochs"] == "1" and params["model/arch"] == "unet" and int(params["params"]) > 0
    saved = artifact_paths(client, found.info.run_id)
    assert {"config.yaml"} | picture_artifacts("epoch_001") | picture_artifacts("best") <= saved
    assert (store / "artifacts" / found.info.run_id / "artifacts" / "config.yaml").is_file()

    # Resuming its checkpoint with more epochs continues that MLflow run: MLflow cannot change the
    # logged trainer/max_epochs, so the new value is a tag.
    more = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2"]
    train(make_cfg("logger=many", "logger.wandb=null", "+logger@logger.mlflow=mlflow",
                   f"logger.mlflow.save_dir={store}", "run_test=false", *more))  # fmt: skip
    resumed = the_run(client)
    assert resumed.info.run_id == found.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.params["trainer/max_epochs"] == "1" and resumed.data.tags["resumed/trainer/max_epochs"] == "2"
    assert {m.value for m in client.get_metric_history(found.info.run_id, "epoch")} >= {0, 1}  # both epochs


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` on 127.0.0.1: SQLite store and artifacts in a temporary folder."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]  # fmt: skip
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    # Its own session: the server's workers are stopped with it, by its process group.
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{url}/health"):
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_mlflow_server_gets_metrics_params_and_pictures(make_cfg, mlflow_server: str, capsys):
    cfg = make_cfg("logger=mlflow", f"logger.tracking_uri={mlflow_server}", "run_test=false", pictures=True)
    metrics = train(cfg)
    client = mlflow_client(mlflow_server)
    found = the_run(client)
    assert found.info.status == "FINISHED"
    assert found.data.metrics["val/miou"] == pytest.approx(metrics["val/miou"])
    assert found.data.params["trainer/max_epochs"] == "1" and found.data.params["loss/terms/dice"] == "1.0"
    assert {"config.yaml"} | picture_artifacts("best") <= artifact_paths(client, found.info.run_id)
    # The run's address once (MLflow's own, printed each time Lightning ends a stage, is off).
    printed = capsys.readouterr().out
    assert printed.count(f"MLflow run: {mlflow_server}/#/experiments/") == 1 and "View run" not in printed


def test_mlflow_runs_end_finished_with_the_summary_or_failed(tmp_path: Path):
    config = {"_target_": "semseg.training.mlflow_run.MLflowRunLogger", "experiment_name": "semseg"}
    config["save_dir"] = str(tmp_path)
    done, failed, killed = (build_logger(config, IDENTITY) for _ in range(3))
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # before MLflow was imported
    for logger in (done, failed, killed):
        assert isinstance(logger, MLFlowLogger)
        logger.log_metrics({"val/miou": 0.5}, step=1)
    # Lightning ends the run FINISHED after each stage; a failure after that still marks it FAILED.
    failed.finalize("success")
    finish_logger(done, summary={"val/miou_best": 0.5, "checkpoint": "checkpoints/best.ckpt", "epochs": 2})
    finish_logger(failed, exit_code=1)
    finish_logger(killed, exit_code=1, preempted=True)  # SIGTERM: to be resumed
    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ended = {run.info.run_id: run for run in client.search_runs([done.experiment_id])}
    assert ended[done.run_id].info.status == "FINISHED" and ended[failed.run_id].info.status == "FAILED"
    assert ended[killed.run_id].info.status == "KILLED"
    assert ended[done.run_id].data.metrics == {"val/miou": 0.5, "val/miou_best": 0.5, "epochs": 2.0}
    assert ended[done.run_id].data.tags["model"] == "unet" and ended[done.run_id].info.run_name == IDENTITY["name"]


def test_wandb_among_many_loggers_still_gives_its_upload_command(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_cfg(["logger=many", f"output_dir={tmp_path}"])
    loggers = build_logger(cfg.logger, IDENTITY)
    assert [type(each) for each in loggers] == [WandbRunLogger, CSVLogger]
    loggers[0].experiment  # noqa: B018 (starts the offline run)
    command = finish_logger(loggers, summary={"val/miou_best": 0.5}, say_sync=False)
    assert command is not None and command.startswith(f"wandb sync {tmp_path / 'wandb'}/offline-run-")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["logger=mlflow"], 'logger=mlflow needs mlflow, which is not installed: pip install "semseg[mlflow]"'),
        (
            ["logger=many", "logger.wandb=null", "+logger@logger.tensorboard=tensorboard"],
            'logger.tensorboard needs tensorboard, which is not installed: pip install "semseg[tensorboard]"',
        ),
    ],
)
def test_a_logger_whose_extra_is_missing_names_the_install_command(
    monkeypatch, tmp_path: Path, overrides: list[str], message: str
):
    for module in ("mlflow", "tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it fails: as if not installed
    cfg = compose_cfg([*overrides, f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError) as error:
        build_logger(cfg.logger, IDENTITY)
    assert str(error.value) == message


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_spawn_find_unused_parameters_true", "ddp_fork"])
def test_strategies_that_restart_the_ranks_are_refused_before_any_output(make_cfg, strategy: str):
    cfg = make_cfg(f"trainer.strategy={strategy}", "trainer.devices=2")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == (
        f"trainer.strategy={strategy} restarts the ranks for each of fit, validate and test, losing rank 0's state "
        "(loggers, epochs, pictures): use trainer.strategy=ddp (trainer=ddp_cpu on the CPU, trainer=ddp on GPUs)."
    )
    assert not Path(cfg.output_dir).exists()
    for kept in ("ddp", "ddp_find_unused_parameters_true", "auto", "single_device"):
        refuse_spawned_ranks({"strategy": kept})
