"""Credentials never reach what a run saves: refused in the config, absent from the run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from semseg.hydra_callbacks import RefuseSecrets
from semseg.secrets import find_secrets
from tests.conftest import CHEAP, compose_cfg, tiny_data

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key


def test_the_training_config_holds_no_secret():
    assert find_secrets(compose_cfg(["logger=wandb"])) == []


def test_credentials_in_the_config_are_found_by_key_or_by_value(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = OmegaConf.create(
        {
            "logger": {"api_key": "abc", "project": "semseg", "token": None},
            "extra": [{"HF_TOKEN": "xyz"}],
            "pulled": "${oc.env:WANDB_API_KEY}",
        }
    )
    assert find_secrets(cfg) == ["logger.api_key", "extra[0].HF_TOKEN", "pulled"]


def test_a_credential_stops_the_run_before_hydra_saves_the_config(capsys):
    cfg = compose_cfg(["+logger.api_key=abc"])
    with pytest.raises(SystemExit) as stop:
        RefuseSecrets().on_run_start(cfg)
    assert stop.value.code == 2
    assert "logger.api_key: a credential" in capsys.readouterr().err


def test_the_wandb_key_appears_in_no_file_of_a_run(tiny_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *CHEAP, "logger=wandb", *tiny_data(tiny_root),
         "run_test=false", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=300,
        env=os.environ | {"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert FAKE_KEY not in result.stdout + result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    assert any(p.name == "config.yaml" for p in files)
    assert [p for p in files if FAKE_KEY.encode() in p.read_bytes()] == []
