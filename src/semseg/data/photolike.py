"""Photograph-like road scenes with index masks: what the benchmark measures the data path on.

The synthetic default (``semseg.data.synthetic``) is 64-pixel shapes: decoding one costs nothing,
so it cannot show what a data path costs on photographs. These images cost what a road-scene
photograph costs: 480x360 (or any size) RGB PNGs whose content is textured (multi-scale noise),
shaded (gradients, a vignette) and noisy (sensor noise, a slight optical blur), so PNG compresses
them about as much as real street photographs: at 480x360 ~300 KiB and ~5 ms to decode, where
CamVid's photographs take ~255 KiB and ~4.5 ms (cv2.imread, one thread).
The layout is a street: sky above a horizon, a skyline of buildings with windows, a road in
perspective with lane marks, pavements, trees, cars, poles and people, each a class of the mask.

Written like the synthetic set: into a staging folder renamed into place (never half a data set),
with a manifest, so a second call with the same spec returns at once, and processes generating it at
the same moment share one copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from semseg.data.synthetic import write_dataset

PHOTO_CLASS_NAMES = ("sky", "building", "road", "pavement", "tree", "car", "pole", "person")
MANIFEST = "photolike.json"


@dataclass(frozen=True)
class PhotoSpec:
    """What to generate; two equal specs give byte-identical data sets."""

    num_train: int = 64
    num_val: int = 16
    height: int = 360
    width: int = 480
    seed: int = 0


def fractal_noise(
    rng: np.random.Generator, height: int, width: int, octaves: int = 6, decay: float = 0.6
) -> np.ndarray:
    """Multi-scale noise in about [-1, 1]: random grids from coarse to fine, each upsampled
    bicubically and weighted ``decay`` times the coarser one (natural images' falling spectrum)."""
    total = np.zeros((height, width), np.float32)
    for octave in range(octaves):
        cells = 2 ** (octave + 2)
        grid = rng.standard_normal((cells, max(2, cells * width // height))).astype(np.float32)
        total += decay**octave * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return total / 2.0


def _paint(
    image: np.ndarray,
    mask: np.ndarray,
    region: np.ndarray,
    cls: int,
    colour: np.ndarray | Sequence[float],
    texture: np.ndarray,
) -> None:
    """Fills ``region`` (bool) with ``colour`` (RGB) modulated by ``texture``, and labels it ``cls``."""
    image[region] = np.asarray(colour, np.float32) * (1.0 + texture[region, None])
    mask[region] = cls


def render_street(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB street image (uint8, HxWx3) and its class-index mask (uint8, HxW)."""
    image = np.zeros((height, width, 3), np.float32)
    mask = np.zeros((height, width), np.uint8)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = int(height * rng.uniform(0.35, 0.5))
    fine = fractal_noise(rng, height, width, octaves=7, decay=0.8)

    # Sky (class 0): a vertical gradient with soft clouds.
    clouds = np.clip(fractal_noise(rng, height, width, octaves=4), 0, None)
    sky = np.stack([110 + 80 * rows / horizon, 150 + 60 * rows / horizon, 220 + 20 * rows / horizon], -1)
    image[:] = sky + 90 * clouds[..., None]

    # Buildings (1): a skyline of blocks with a stucco texture and a grid of windows.
    left = 0
    while left < width:
        right = min(width, left + int(rng.uniform(0.08, 0.3) * width))
        top = int(horizon - rng.uniform(0.1, 0.35) * height)
        block = (cols >= left) & (cols < right) & (rows >= top) & (rows < horizon + height // 10)
        colour = rng.uniform(60, 200, 3)
        _paint(image, mask, block, 1, colour, 0.15 * fine)
        pitch = rng.integers(8, 20)
        windows = block & ((rows - top) % pitch < pitch // 2) & ((cols - left) % pitch < pitch // 2)
        image[windows] *= rng.uniform(0.3, 0.6)
        left = right

    # Road (2) in perspective towards a vanishing point, pavements (3) on both sides.
    vanish = width * rng.uniform(0.35, 0.65)
    depth = np.clip((rows - horizon) / (height - horizon), 0, 1)
    half_road = depth * width * rng.uniform(0.45, 0.7)
    ground = rows >= horizon + height // 10
    road = ground & (np.abs(cols - vanish) < half_road)
    _paint(image, mask, ground & ~road, 3, rng.uniform(120, 170, 3), 0.2 * fine)
    _paint(image, mask, road, 2, np.array([90, 90, 95]) * rng.uniform(0.8, 1.2), 0.25 * fine)
    dashes = road & (np.abs(cols - vanish) < 1 + 3 * depth) & ((rows // 12) % 2 == 0)
    image[dashes] = 230

    # Trees (4): clusters of leafy discs, with high-frequency texture.
    leaves = fractal_noise(rng, height, width, octaves=7, decay=1.0)
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0, width), horizon - rng.uniform(0, 0.15) * height
        radius = rng.uniform(0.06, 0.15) * height
        crown = ((cols - cx) ** 2 + (rows - cy) ** 2 * 1.3) < radius**2 * (1 + 0.3 * leaves)
        _paint(image, mask, crown, 4, rng.uniform([30, 70, 20], [80, 130, 60]), 0.5 * leaves)

    # Cars (5) on the road: bodies with darker windows, larger when nearer.
    for _ in range(rng.integers(1, 5)):
        y = rng.uniform(horizon + 0.15 * height, height * 0.95)
        scale = (y - horizon) / (height - horizon)
        car_w, car_h = scale * width * 0.3, scale * height * 0.18
        x = vanish + rng.uniform(-1, 1) * (y - horizon) / (height - horizon) * width * 0.4
        body = (np.abs(cols - x) < car_w / 2) & (rows > y - car_h) & (rows < y)
        _paint(image, mask, body, 5, rng.uniform(20, 230, 3), 0.1 * fine)
        glass = body & (rows < y - car_h * 0.55) & (np.abs(cols - x) < car_w * 0.4)
        image[glass] *= 0.4

    # Poles (6): thin verticals; people (7): small upright ellipses on the pavement.
    for _ in range(rng.integers(1, 4)):
        x, top = rng.uniform(0, width), horizon - rng.uniform(0.05, 0.3) * height
        pole = (np.abs(cols - x) < rng.uniform(1, 3)) & (rows > top) & (rows < rng.uniform(horizon, height))
        _paint(image, mask, pole, 6, [70, 70, 75], 0.1 * fine)
    for _ in range(rng.integers(0, 4)):
        y = rng.uniform(horizon + 0.15 * height, height)
        x = vanish + rng.choice([-1, 1]) * (y - horizon) / (height - horizon) * width * rng.uniform(0.5, 0.8)
        size = (y - horizon) / (height - horizon) * height * 0.25
        person = ((cols - x) / (0.25 * size)) ** 2 + ((rows - (y - size / 2)) / (0.5 * size)) ** 2 < 1
        _paint(image, mask, person, 7, rng.uniform(20, 200, 3), 0.2 * fine)

    # Light and camera: a sideways illumination gradient, a vignette, optical blur, sensor noise.
    light = 1.0 + rng.uniform(-0.25, 0.25) * (cols / width - 0.5)
    vignette = 1.0 - 0.35 * (((cols - width / 2) / width) ** 2 + ((rows - height / 2) / height) ** 2)
    image *= (light * vignette)[..., None]
    image = cv2.GaussianBlur(image, (0, 0), 0.7)
    image += rng.normal(0, 2.5, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate_photolike(root: Path, spec: PhotoSpec = PhotoSpec()) -> Path:
    """Writes the photograph-like set to ``root`` (images/{train,val}, masks/{train,val}) unless
    it is there already (its ``photolike.json`` holds ``spec``: the benchmark calls this every run).

    Raises:
        DataError: ``root`` exists and holds another spec's set or anything without our manifest;
            nothing is written to it (see ``write_dataset``).
    """

    def render(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return render_street(rng, spec.height, spec.width)

    splits = {"train": spec.num_train, "val": spec.num_val}
    return write_dataset(Path(root), splits, render, spec.seed, MANIFEST, asdict(spec))
