"""Deterministic synthetic segmentation data: the embedded default and the tests' fixture.

Each image holds filled shapes (disks, squares, triangles) on a textured, noisy background plus a
few tiny high-contrast specks. Shape colours are random, so a model must learn shape, not colour.
The specks are the rare class (about 1% of pixels): the class-imbalance lesson of the book.

The data set is written in the project's folder layout (images/{split}, masks/{split}) into a
temporary folder that is renamed into place at the end, so an interrupted run never leaves a
half-written data set behind. Several processes generating the same set at once (a sweep's jobs,
DDP's ranks) all get it: one generates it while the others wait, then use it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf

from semseg.config_resolvers import CONF_DIR
from semseg.errors import ConfigError, DataError
from semseg.files import lock_making, staging_path

log = logging.getLogger(__name__)

# conf/data/synthetic.yaml is the one place of the set's classes (Hydra reads them there). The
# renderer draws each class by its name: code 0 the background, 1-3 the shapes, and "speck".
CLASS_NAMES: tuple[str, ...] = tuple(OmegaConf.load(CONF_DIR / "data" / "synthetic.yaml").class_names)
MANIFEST = "synthetic.json"
PNG_LEVEL = [cv2.IMWRITE_PNG_COMPRESSION, 6]
# What renaming a folder onto one that another process has just put in place fails with (Linux
# says ENOTEMPTY, other systems EEXIST; the other two when one of them is a file).
TARGET_EXISTS = (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; two equal specs give byte-identical data sets.

    No field has a default: the default set's values are ``data.synthetic`` in
    conf/data/synthetic.yaml, and every caller builds its spec from a config or names each field.
    """

    num_train: int
    num_val: int
    num_test: int
    image_size: int
    seed: int


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _shape_polygon(kind: str, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    corners = 4 if kind == "square" else 3
    theta = angle + np.arange(corners) * 2 * np.pi / corners
    points = center + radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return np.round(points).astype(np.int32)


def render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws one RGB image (uint8, HxWx3) and its class-index mask (uint8, HxW)."""
    base = rng.uniform(40, 200, size=3)
    texture = _smooth_noise(rng, size, cells=rng.integers(3, 7))[..., None]
    image = base + (texture - 0.5) * rng.uniform(40, 90)
    image = np.ascontiguousarray(image, dtype=np.float32)  # HxWx3: texture shared by channels
    mask = np.zeros((size, size), dtype=np.uint8)

    for _ in range(rng.integers(1, 4)):
        kind_index = int(rng.integers(1, 4))  # disk, square or triangle
        kind = CLASS_NAMES[kind_index]
        radius = float(rng.uniform(0.1, 0.2) * size)
        center = rng.uniform(radius, size - radius, size=2)
        colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        if kind == "disk":
            c, r = (round(center[0]), round(center[1])), round(radius)
            cv2.circle(image, c, r, colour, thickness=-1)
            cv2.circle(mask, c, r, kind_index, thickness=-1)
        else:
            polygon = _shape_polygon(kind, center, radius, float(rng.uniform(0, 2 * np.pi)))
            cv2.fillPoly(image, [polygon], colour)
            cv2.fillPoly(mask, [polygon], kind_index)

    # Specks: ~1% of pixels, drawn last and in a colour far from the local background.
    for _ in range(rng.poisson(size * size / 500)):
        c = tuple(int(v) for v in rng.integers(2, size - 2, size=2))
        local = image[c[1], c[0]]
        colour = tuple(float(v) for v in np.where(local > 127, local - 110, local + 110))
        cv2.circle(image, c, 1, colour, thickness=-1)
        cv2.circle(mask, c, 1, CLASS_NAMES.index("speck"), thickness=-1)

    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    image += rng.normal(0.0, rng.uniform(4, 12), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _split_sizes(spec: SyntheticSpec) -> dict[str, int]:
    return {"train": spec.num_train, "val": spec.num_val, "test": spec.num_test}


def generate(root: str | os.PathLike, spec: SyntheticSpec) -> Path:
    """Writes the synthetic data set to ``root`` unless it is already there.

    Args:
        root: target folder; created atomically (written beside it, then renamed).
        spec: sizes, resolution and seed.

    Returns:
        The root folder.

    Raises:
        DataError: ``root`` exists but holds something else (another spec or not ours).
    """

    def render(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return render_sample(rng, spec.image_size)

    return write_dataset(Path(root), _split_sizes(spec), render, spec.seed, MANIFEST, asdict(spec))


Render = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def require_data_named(data: Mapping, command: str = "python scripts/train.py") -> None:
    """Raises ``ConfigError`` when the ``data`` config names no data set: ``data=folder`` (the
    default) leaves ``data.root`` and ``data.num_classes`` to the user (``???``), and Hydra's own
    error for them ("Missing mandatory value") says neither what they are nor that the embedded
    synthetic set is ``data=synthetic``."""
    missing = [f"data.{key}" for key in ("root", "num_classes") if OmegaConf.is_missing(data, key)]
    if missing:
        example = f"`{command} data.root=/data/roads data.num_classes=11`"
        raise ConfigError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: name your data set, e.g. "
            f"{example} (images/{{train,val}} and masks/{{train,val}} inside; docs/data.md), or use the embedded "
            f"synthetic set: `{command} data=synthetic` (what `make train` runs)."
        )


def generate_configured(data: Mapping) -> None:
    """Generates the synthetic set of a ``data`` config with generator settings (``data=synthetic``)
    into ``data.root`` when it is missing; a config without them (``data=folder``, one's own data)
    is left alone.

    Raises:
        DataError: ``data.num_classes`` or ``data.class_names`` are not the generated set's, or
            ``data.root`` holds something else (``write_dataset``).
    """
    if not data.get("synthetic"):
        return
    names = data.get("class_names")
    if data["num_classes"] != len(CLASS_NAMES) or (names is not None and tuple(names) != CLASS_NAMES):
        raise DataError(
            f"data=synthetic generates {len(CLASS_NAMES)} classes {list(CLASS_NAMES)}, but data.num_classes="
            f"{data['num_classes']} and data.class_names={names}: to train on your own data set, leave "
            "data=synthetic out (the default data=folder reads data.root as your image-mask folder)."
        )
    generate(data["root"], SyntheticSpec(**data["synthetic"]))


def write_dataset(root: Path, splits: dict[str, int], render: Render, seed: int, manifest: str, spec: dict) -> Path:
    """Writes a generated data set (``render``: one RGB image and its mask per call) into
    ``root``'s images/{split} and masks/{split}, with ``manifest`` holding ``spec``, unless the
    same spec's set is there already.

    Written into a staging folder beside ``root`` that is renamed into place, so an interrupted
    run never leaves half a data set; sample ``i`` of split ``k`` draws from its own generator
    ``(seed, k, i)``, so any sample can be regenerated alone. Of several processes writing the same
    set at once, one writes it while the others wait (``lock_making``); where they cannot wait, each
    writes it and the first rename wins: the others use the winner's set.

    Raises:
        DataError: ``root`` exists and holds another spec's set, or anything that is not ours.
    """
    if _holds_set(root, manifest, spec):
        return root
    with lock_making(root):
        if _holds_set(root, manifest, spec):  # generated by another process while this one waited
            return root
        staging = staging_path(root)
        staging.mkdir()
        try:
            for split_index, (split, count) in enumerate(splits.items()):
                (staging / "images" / split).mkdir(parents=True)
                (staging / "masks" / split).mkdir(parents=True)
                for i in range(count):
                    image, mask = render(np.random.default_rng([seed, split_index, i]))
                    name = f"{split}_{i:05d}.png"
                    # zlib level 6, libpng's and Pillow's default (OpenCV's is 1): files as photos come.
                    cv2.imwrite(str(staging / "images" / split / name), image[..., ::-1], PNG_LEVEL)  # RGB->BGR
                    cv2.imwrite(str(staging / "masks" / split / name), mask, PNG_LEVEL)
            (staging / manifest).write_text(json.dumps(spec, indent=2))
            try:
                os.replace(staging, root)
            except OSError as error:
                # Another process renamed its set into place first (it could not see our lock):
                # equal specs give byte-identical sets, so its set is ours.
                if error.errno not in TARGET_EXISTS or not _holds_set(root, manifest, spec):
                    raise
                log.info(f"{root}: another process generated the same data set at the same time; using its copy")
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when renamed into place
    return root


def _holds_set(root: Path, manifest: str, spec: dict) -> bool:
    """True when ``root`` holds the generated set of ``spec``, False when there is no ``root``.

    Raises:
        DataError: ``root`` exists and holds another spec's set, or anything that is not ours.
    """
    if not root.exists():
        return False
    found = root / manifest
    if found.exists():
        found_spec = json.loads(found.read_text())
        if found_spec == spec:
            return True
        what = f"a generated data set of another spec ({found_spec})"
    else:
        what = f"no generated data set (no {manifest}): it may be yours, and nothing is written to it"
    raise DataError(
        f"{root} exists but is not the generated data set for {spec}: it holds {what}. "
        "Point data.root at a new folder to generate there, or read the folder as your own image-mask folder "
        "with data=folder (the default) instead of data=synthetic."
    )
