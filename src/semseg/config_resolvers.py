"""The OmegaConf resolver semseg's configs use, registered when semseg is imported."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from semseg.errors import ConfigError

# semseg's own config folder (conf/ beside src/), where configs find the files they ship with.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def conf_file(relative: str) -> str:
    """The absolute path of a file semseg's configs ship with (``conf/<relative>``), e.g. a data
    set's list files: ``${semseg.conf_file:splits/camvid_dev/train.csv}``."""
    path = CONF_DIR / relative
    if not path.is_file():
        raise ConfigError(f"${{semseg.conf_file:{relative}}}: no file {path} in semseg's config folder.")
    return str(path)


def register_resolvers() -> None:
    """Registers ``semseg.conf_file`` (a second call replaces it with itself)."""
    OmegaConf.register_new_resolver("semseg.conf_file", conf_file, replace=True)


register_resolvers()
