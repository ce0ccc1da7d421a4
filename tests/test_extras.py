"""Optional parts (pyproject's extras): a missing one gives one line with the install command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from semseg import extras
from semseg.errors import ConfigError
from semseg.inference.export import export

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# Started before anything else in a child Python: makes the named modules look not installed.
HIDE_MODULES = """
import importlib.abc, os
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in os.environ["HIDDEN_MODULES"].split(","):
            raise ModuleNotFoundError(name)
import sys; sys.meta_path.insert(0, _Hide())
"""


def test_every_extra_of_pyproject_is_known_and_installed_here():
    import tomllib

    project = tomllib.loads((SCRIPTS.parent / "pyproject.toml").read_text())["project"]
    declared = set(project["optional-dependencies"]) - {"dev", "all"}
    assert declared == set(extras.EXTRAS)
    assert set(extras.CHOICES.values()) <= declared
    for extra in extras.EXTRAS:  # make install installs them all: nothing is refused here
        extras.require_extra(extra, extra)


@pytest.mark.parametrize(
    ("override", "extra"),
    [
        ("hydra/launcher=slurm", "slurm"),
        ("logger=csv,mlflow", "mlflow"),
        ("+hparams_search=optuna", "optuna"),
        ("+logger@logger.tensorboard=tensorboard", "tensorboard"),
    ],
)
def test_a_choice_that_needs_a_missing_extra_names_the_install_command(monkeypatch, override: str, extra: str):
    monkeypatch.setattr(extras, "_installed", lambda module: module not in extras.EXTRAS[extra])
    with pytest.raises(ConfigError, match=rf'pip install "semseg\[{extra}\]"') as error:
        extras.check_command_line(["model=unet", override])
    assert "\n" not in str(error.value)
    extras.check_command_line(["model=unet", "logger=csv", "hydra/launcher=gpu_pool"])  # nothing needed


def test_onnx_export_without_the_export_extra_says_so_before_loading(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(extras, "_installed", lambda module: module != "onnxruntime")
    cfg = OmegaConf.create({"format": "onnx", "ckpt_path": str(tmp_path / "missing.ckpt"), "output": None})
    with pytest.raises(
        ConfigError, match=r'format=onnx needs onnxruntime, which is not installed: pip install "semseg\[export\]"'
    ):
        export(cfg)


def test_train_script_refuses_before_hydra_makes_a_folder(tmp_path: Path):
    (tmp_path / "sitecustomize.py").write_text(HIDE_MODULES)
    env = {"PYTHONPATH": str(tmp_path), "HIDDEN_MODULES": "hydra_plugins.hydra_submitit_launcher", "PATH": "/usr/bin"}
    command = [sys.executable, str(SCRIPTS / "train.py"), "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}/s"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        'error: hydra/launcher=slurm needs hydra_submitit_launcher, which is not installed: pip install "semseg[slurm]"'
    )
    assert not (tmp_path / "s").exists()
