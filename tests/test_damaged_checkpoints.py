"""A damaged checkpoint (cut short by a lost node, a full quota, a sync tool): resume=auto sets it
aside and resumes from the newest readable one, an explicit one is a one-line error, and a new
last.ckpt replaces the previous one only once it loads back."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import open_dict

from semseg.callbacks import resilience
from semseg.inference.evaluate import evaluate
from semseg.run_folder import RunFolder, checkpoint_epoch, checkpoint_problem, previous_checkpoint
from semseg.training.checkpoints import resume_checkpoint
from semseg.training.train import train
from tests.conftest import compose_named


def truncate(path: Path) -> None:
    """Cuts the file to half its size, as an interrupted copy leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture
def run(trained_run: Path, make_cfg) -> RunFolder:
    """A copy of the shared 2-epoch run, in the folder ``make_cfg`` trains into."""
    folder = Path(make_cfg().output_dir)
    shutil.copytree(trained_run / "checkpoints", folder / "checkpoints")
    return RunFolder(folder)


def test_a_normal_run_leaves_a_verified_last_ckpt_and_no_previous_one(trained_run: Path):
    run = RunFolder(trained_run)  # its second epoch's save replaced the first's last.ckpt
    assert checkpoint_problem(run.last_checkpoint) is None
    assert not run.previous_last_checkpoint.exists()


def test_resume_auto_sets_a_truncated_last_ckpt_aside_and_resumes_from_best(run, make_cfg, caplog):
    truncate(run.last_checkpoint)
    damaged = run.last_checkpoint.read_bytes()
    epoch = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)["epoch"] + 1  # as people count
    cfg = make_cfg("resume=auto", "trainer.max_epochs=3", "run_test=false")
    with caplog.at_level(logging.INFO, logger="semseg"):
        train(cfg)
    lines = [record.getMessage() for record in caplog.records]
    named = [line for line in lines if line.startswith(f"cannot resume from {run.last_checkpoint}: ")]
    assert len(named) == 1 and "damaged or truncated" in named[0] and "\n" not in named[0], lines
    resuming = f"resuming from {run.best_checkpoint} (epoch {epoch}) because last.ckpt is damaged"
    assert any(line.startswith(resuming) for line in lines), lines
    kept = list(run.damaged_checkpoints.iterdir())
    assert [p.name[: len("last.")] for p in kept] == ["last."] and kept[0].read_bytes() == damaged
    assert kept[0].name.endswith("Z.ckpt") and str(kept[0]) in named[0]
    assert torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)["epoch"] == 2  # the third epoch
    assert not run.previous_last_checkpoint.exists()


def test_resume_auto_tries_the_newest_first_and_best_last(run, make_cfg, caplog, monkeypatch):
    cfg = make_cfg("resume=auto")
    cfg.output_dir = str(run.root.parent / "new")
    assert resume_checkpoint(cfg) is None  # a new run
    cfg.output_dir = str(run.root)
    checkpoints = run.checkpoints
    shutil.copy2(run.last_checkpoint, run.previous_last_checkpoint)
    hpc = run.root / "hpc_ckpt_1.ckpt"  # Lightning's, saved on SLURM's SIGUSR1
    shutil.copy2(run.last_checkpoint, hpc)
    newest = run.last_checkpoint.stat().st_mtime_ns
    for age, path in enumerate([hpc, run.last_checkpoint, run.previous_last_checkpoint, run.best_checkpoint]):
        os.utime(path, ns=(newest - age * 10**9,) * 2)  # best.ckpt is tried last even when newer
    os.utime(run.best_checkpoint, ns=(newest + 10**9,) * 2)
    assert resume_checkpoint(cfg) == str(hpc)
    cfg.ckpt_path = str(run.best_checkpoint)
    assert resume_checkpoint(cfg) == str(run.best_checkpoint)  # ckpt_path wins
    cfg.ckpt_path = None

    truncate(hpc)
    run.last_checkpoint.write_bytes(b"")  # a full quota
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # another DDP rank skips them, moving nothing
    assert resume_checkpoint(cfg) == str(run.previous_last_checkpoint)
    assert hpc.exists() and run.last_checkpoint.exists() and not run.damaged_checkpoints.exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert resume_checkpoint(cfg) == str(run.previous_last_checkpoint)
    assert not hpc.exists() and not run.last_checkpoint.exists()
    assert sorted(p.name.split(".")[0] for p in run.damaged_checkpoints.iterdir()) == ["hpc_ckpt_1", "last"]

    truncate(run.previous_last_checkpoint)
    assert resume_checkpoint(cfg) == str(run.best_checkpoint)
    truncate(run.best_checkpoint)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="semseg"):
        assert resume_checkpoint(cfg) is None  # starts over
    assert f"training starts over; the damaged ones are kept in {run.damaged_checkpoints}" in caplog.text
    assert sorted(p.name for p in checkpoints.iterdir()) == ["damaged"]  # every one kept, none deleted
    assert len(list(run.damaged_checkpoints.iterdir())) == 4

    cfg.resume = False
    assert resume_checkpoint(cfg) is None


def test_an_explicit_damaged_or_missing_ckpt_path_is_a_one_line_error(run, make_cfg, entry_point, capsys):
    truncate(run.last_checkpoint)
    for given in (str(run.last_checkpoint), "last", str(run.root / "missing.ckpt")):
        with pytest.raises(SystemExit) as exited:
            entry_point(train)(make_cfg(f"ckpt_path={given}"))
        message = capsys.readouterr().err
        assert exited.value.code == 2 and message.count("\n") == 1, message
        assert message.startswith(f"error: ckpt_path={given}") and "resume=auto" in message, message
        assert ("no such file" if "missing" in given else "damaged or truncated") in message, message
    assert not run.metrics.exists() and run.last_checkpoint.exists()  # no training, nothing moved


def test_eval_with_a_truncated_checkpoint_is_a_one_line_error(run, entry_point, capsys):
    truncate(run.best_checkpoint)
    cfg = compose_named("eval", [f"ckpt_path={run.best_checkpoint}", "trainer=cpu"])
    with open_dict(cfg):
        cfg.output_dir = str(run.root / "eval")
    with pytest.raises(SystemExit) as exited:
        entry_point(evaluate)(cfg)
    message = capsys.readouterr().err
    assert exited.value.code == 2 and message.count("\n") == 1, message
    assert message.startswith(f"error: ckpt_path={run.best_checkpoint}: damaged or truncated"), message


def test_a_new_last_ckpt_that_does_not_load_back_keeps_the_previous_one(run, make_cfg, monkeypatch, caplog):
    before = run.last_checkpoint.read_bytes()
    real = resilience.checkpoint_problem

    def new_one_damaged(path: Path) -> str | None:  # the previous one is kept only while a save verifies
        return "cut short (simulated)" if previous_checkpoint(path).exists() else real(path)

    monkeypatch.setattr(resilience, "checkpoint_problem", new_one_damaged)
    with caplog.at_level(logging.WARNING, logger="semseg"):
        train(make_cfg("resume=auto", "trainer.max_epochs=3", "run_test=false"))
    assert run.previous_last_checkpoint.read_bytes() == before
    assert torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)["epoch"] == 2
    assert f"the previous one is kept as {run.previous_last_checkpoint}" in caplog.text


def test_a_checkpoint_that_loaded_back_is_not_read_again_before_the_next_save(make_cfg, monkeypatch):
    checked = []

    def recording(path: Path) -> str | None:
        checked.append(resilience.file_identity(Path(path)))
        return checkpoint_problem(path)

    monkeypatch.setattr(resilience, "checkpoint_problem", recording)
    cfg = make_cfg("trainer.max_epochs=3", "run_test=false")
    train(cfg)
    assert len(checked) >= 3 and len(set(checked)) == len(checked)  # each file, as saved, read once
    run = RunFolder(cfg.output_dir)
    assert not any(path.name.endswith("-prev.ckpt") for path in run.checkpoints.iterdir())
    # The best epoch is noted as the best checkpoint loads for the final validation, not read again.
    info = json.loads((run.root / "run_info.json").read_text())
    assert info["best_epoch"] == checkpoint_epoch(run.best_checkpoint)
