"""Keeping credentials out of everything a run saves (Hydra's .hydra/, checkpoints, W&B metadata)."""

from __future__ import annotations

import os
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Config keys that hold credentials by name. W&B reads its key from WANDB_API_KEY or `wandb login`
# (~/.netrc), never from the config.
SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd)", re.IGNORECASE)
SECRET_ENV = ("WANDB_API_KEY",)


def find_secrets(cfg: DictConfig) -> list[str]:
    """Config paths whose key names a credential and has a value, or whose value is the value of a
    secret environment variable (e.g. pulled in with ``${oc.env:WANDB_API_KEY}``)."""
    env_values = {os.environ[name] for name in SECRET_ENV if os.environ.get(name)}
    found: list[str] = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, DictConfig):
            for key in node:
                child = f"{path}.{key}" if path else str(key)
                value = OmegaConf.select(node, str(key), throw_on_missing=False, throw_on_resolution_failure=False)
                if SECRET_KEY.search(str(key)) and value not in (None, ""):
                    found.append(child)
                else:
                    visit(value, child)
        elif isinstance(node, ListConfig):
            for index, item in enumerate(node):
                visit(item, f"{path}[{index}]")
        elif isinstance(node, str) and node in env_values:
            found.append(path)

    visit(cfg, "")
    return found


def secrets_message(paths: list[str]) -> str:
    return (
        f"{', '.join(paths)}: a credential in the config would be saved in the run's .hydra/ folder, its "
        "checkpoints and W&B's run metadata. Remove it and give W&B its key with the WANDB_API_KEY "
        "environment variable or `wandb login`. Nothing was written."
    )
