"""The package's layers import downward only (docs/architecture.md): data and models at the bottom,
the LightningModule above them, then what builds, infers, reports and trains, and the entry
points on top. Code that runs after training (inference, reporting) never imports training code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first; a module may import its own layer and those below it. Prefixes match whole names.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "semseg.errors",
            "semseg.files",
            "semseg.markdown",
            "semseg.run_folder",
            "semseg.lightning_private",
            "semseg.online",
            "semseg.secrets",
            "semseg.extras",
            "semseg.config_resolvers",
        ),
    ),
    ("data and models", ("semseg.data", "semseg.models", "semseg.inference.tiling")),
    ("task", ("semseg.task",)),
    ("builders", ("semseg.builders", "semseg.trainer_defaults")),
    ("inference", ("semseg.inference",)),
    ("reporting", ("semseg.reporting",)),
    ("callbacks", ("semseg.callbacks",)),
    ("training", ("semseg.training",)),
    ("entry points", ("semseg.cli", "semseg.hydra_callbacks", "semseg.bench", "hydra_plugins")),
]


def layer_of(module: str) -> int:
    """The layer of ``module``: its longest matching prefix's (``semseg.inference.tiling`` is a
    leaf the task uses, below the rest of ``semseg.inference``)."""
    if module == "semseg":  # the package's docstring
        return 0
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)")
    return best[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def semseg_imports(path: Path) -> list[str]:
    """Every semseg module ``path`` imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in found if name.split(".")[0] == "semseg"]


def imported_module(name: str) -> str:
    """``semseg.data.palette.colorize`` -> ``semseg.data.palette`` (the longest existing module)."""
    parts = name.split(".")
    while parts:
        candidate = SRC.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    raise AssertionError(f"{name} names no module under src/")


SOURCES = sorted(p for p in SRC.rglob("*.py") if "egg-info" not in str(p))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward_only(path: Path):
    here = module_name(path)
    upward = [
        f"{name} ({LAYERS[layer_of(imported_module(name))][0]})"
        for name in semseg_imports(path)
        if layer_of(imported_module(name)) > layer_of(here)
    ]
    assert not upward, f"{here} ({LAYERS[layer_of(here)][0]}) imports upward: {', '.join(upward)}"


def test_every_layer_is_used():
    """A layer listed but empty would be a stale name in the architecture's description."""
    names = [module_name(p) for p in SOURCES]
    for title, prefixes in LAYERS:
        assert any(n == p or n.startswith(p + ".") for n in names for p in prefixes), f"layer {title} is empty"


def conf_targets() -> list[str]:
    """Every semseg ``_target_`` in conf/ (users copy these into their own configs)."""
    conf = SRC.parent / "conf"
    found = set()
    for path in conf.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip().lstrip("- ") == "_target_" and value.split("#")[0].strip().startswith("semseg."):
                found.add(value.split("#")[0].strip())
    return sorted(found)


@pytest.mark.parametrize("target", conf_targets())
def test_every_semseg_target_in_conf_resolves(target: str):
    from hydra.utils import get_object

    assert callable(get_object(target))
