"""semseg's optional parts (pyproject.toml's extras), and the one line a missing one gives.

``make install`` installs them all; ``pip install semseg`` alone leaves them out, and a config that
needs one then says which and how to install it, not an ImportError from deep inside a library.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from semseg.errors import ConfigError

# Extra -> the modules it provides (importable names, not distributions).
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "optuna": ("optuna",),
    "slurm": ("hydra_plugins.hydra_submitit_launcher",),
    "mlflow": ("mlflow",),
    "tensorboard": ("tensorboard",),
    "mask": ("transformers", "scipy"),  # scipy: the models' Hungarian matching
}

# Command-line choices that need an extra. They are checked before Hydra composes the config: a
# Hydra plugin that is not installed leaves its configs out, and Hydra's "Could not find
# 'hydra/launcher/submitit_slurm'" does not say what to install.
CHOICES: dict[tuple[str, str], str] = {
    ("hydra/launcher", "slurm"): "slurm",
    ("hydra/launcher", "slurm_cpu"): "slurm",
    ("hydra/launcher", "submitit_slurm"): "slurm",
    ("hydra/launcher", "submitit_local"): "slurm",
    ("hparams_search", "optuna"): "optuna",
    ("logger", "mlflow"): "mlflow",
    ("logger", "tensorboard"): "tensorboard",
    ("format", "onnx"): "export",
    ("model", "mask2former"): "mask",
    ("model", "eomt"): "mask",
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (hydra_plugins.x) is missing
        return False


def require_extra(extra: str, what: str) -> None:
    """Raises a one-line ``ConfigError`` when a module of ``extra`` is not installed.

    ``what`` names what needs it, as the user asked for it (``logger=mlflow``)."""
    missing = [module for module in EXTRAS[extra] if not _installed(module)]
    if missing:
        names = ", ".join(module.rsplit(".", 1)[-1] for module in missing)
        raise ConfigError(f'{what} needs {names}, which is not installed: pip install "semseg[{extra}]"')


def _choices(override: str) -> list[tuple[str, str]]:
    """``group=value`` pairs of one command-line override (``logger=csv,mlflow``, ``+hparams_search=optuna``,
    ``+logger@logger.mlflow=mlflow``)."""
    key, sep, value = override.lstrip("+~").partition("=")
    if not sep:
        return []
    key = key.split("@", 1)[0]  # +logger@logger.mlflow=mlflow: the group, without where it goes
    values = value.strip("[]").split(",")
    return [(key, each.strip().strip("'\"")) for each in values]


def check_command_line(overrides: Sequence[str]) -> None:
    """Raises a one-line ``ConfigError`` for the first override whose choice needs a missing extra."""
    for override in overrides:
        for group, value in _choices(override):
            extra = CHOICES.get((group, value))
            if extra:
                require_extra(extra, f"{group}={value}")
