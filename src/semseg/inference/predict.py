"""predict(cfg): index masks, colour masks and overlays for a folder (or a file) of images.

The masks follow ``data.mode``: multiclass, class indices; binary, 0 (background) / 255
(foreground), single channel, as binary masks are usually stored; multilabel, a folder
``masks/<stem>/`` of one ``<class name>.png`` (0 / 255) per class, the layout training reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from omegaconf import DictConfig
from tqdm import tqdm

from semseg.data.pairing import IMAGE_EXTENSIONS, index_images
from semseg.data.palette import colorize_mode, stored_to_display
from semseg.data.reading import read_image
from semseg.data.transforms import resize_transform
from semseg.errors import ConfigError, DataError, Problem, problems_message
from semseg.files import write_bytes_atomic, write_json_atomic
from semseg.inference.checkpoint import load_module
from semseg.inference.tiling import InferenceSettings
from semseg.task.module import SegmentationModule

log = logging.getLogger(__name__)

OUTPUT_KINDS = ("masks", "colour", "overlay")  # subfolders of the output folder
FAILED_IMAGES_FILE = "failed_images.json"  # the images of an input folder that could not be predicted


def list_inputs(path: str | Path) -> list[Path]:
    """The images to predict: the file itself, or the images directly inside the folder (by name)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"input={path}: no such file or folder.")
    images, problems = index_images(path)
    if problems:
        raise DataError(problems_message(problems, f"input={path}: outputs are named by stem, so stems must differ:"))
    if not images:
        raise ConfigError(f"input={path}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return [images[stem] for stem in sorted(images)]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluation_transform(module: SegmentationModule):
    """Training's evaluation steps for ``module``'s inputs (resize to the training ``image_size``
    if it had one), so predictions match eval.py's; ``module.prepare_batch`` normalises."""
    input_size = (module.hparams.get("data") or {}).get("image_size")
    steps = [] if input_size is None else [resize_transform(input_size)]
    return A.Compose([*steps, ToTensorV2()])


def predict_mask(
    module: SegmentationModule, image: np.ndarray, settings: InferenceSettings, transform=None
) -> np.ndarray:
    """(H, W) uint8 class indices of an (H, W, C) uint8 image, at the image's own size: binary,
    0/1; multilabel, (K, H, W) 0/1 planes (``SegmentationModule.prediction``).

    ``transform``: ``evaluation_transform(module)``, built once per folder by the caller.
    """
    if transform is None:
        transform = evaluation_transform(module)
    # Normalised where the image is (the CPU): tiling sends only tiles to the network's device.
    pixels = module.prepare_batch({"image": transform(image=image)["image"][None]})["image"]
    logits = module.predict_logits(pixels, settings)
    height, width = image.shape[:2]
    if logits.shape[-2:] != (height, width):  # trained on resized images: scores back to this size
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
    return module.prediction(logits)[0].to(torch.uint8).cpu().numpy()


def overlay(image: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """The colour mask blended over the image (``stored_to_display``: its first 3 bands, or its
    first as grey; 16-bit images stretched to 8 bits)."""
    return cv2.addWeighted(stored_to_display(image), 1 - alpha, colour, alpha, 0)


def _encode_png(pixels: np.ndarray, path: Path) -> bytes:
    if pixels.ndim == 3:  # RGB -> OpenCV's BGR
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise DataError(f"{path}: could not encode the PNG.")
    return data.tobytes()


def _planned_outputs(
    inputs: list[Path], output: Path, kinds: list[str], mode: str = "multiclass"
) -> dict[Path, dict[str, Path]]:
    def path(kind: str, stem: str) -> Path:  # a multi-label mask is a folder of per-class PNGs
        return output / kind / stem if kind == "masks" and mode == "multilabel" else output / kind / f"{stem}.png"

    return {image: {kind: path(kind, image.stem) for kind in kinds} for image in inputs}


def _write_mask(mask: np.ndarray, path: Path, module: SegmentationModule) -> None:
    """The stored form of a predicted mask (see the module docstring)."""
    if module.mode == "multilabel":
        for name, plane in zip(module.hparams.class_names, mask, strict=True):
            write_bytes_atomic(path / f"{name}.png", _encode_png(plane * np.uint8(255), path / f"{name}.png"))
    else:
        write_bytes_atomic(path, _encode_png(mask * np.uint8(255) if module.mode == "binary" else mask, path))


def _check_existing(plan: dict[Path, dict[str, Path]], overwrite: bool, skip_existing: bool) -> dict:
    """Leaves out inputs whose outputs all exist (skip_existing), or refuses to overwrite any."""
    existing = [p for outputs in plan.values() for p in outputs.values() if p.exists()]
    if not existing or overwrite:
        return plan
    if skip_existing:
        return {image: outs for image, outs in plan.items() if not all(p.exists() for p in outs.values())}
    shown = "\n  ".join(str(p) for p in existing[:5]) + ("\n  ..." if len(existing) > 5 else "")
    raise ConfigError(
        f"{len(existing)} output file(s) exist already, e.g.\n  {shown}\nNothing was written. Use "
        "overwrite=true to replace them, skip_existing=true to predict only the images without outputs "
        "(e.g. to finish an interrupted run), or another output=."
    )


def predict(cfg: DictConfig) -> dict:
    """Predicts every input image of ``cfg.input`` with ``cfg.ckpt_path``, writing ``cfg.outputs``
    (masks, colour, overlay) as PNGs named by stem under ``cfg.output``.

    An image that cannot be read is reported and skipped; the others are predicted. Each PNG is
    written atomically, so an interrupted run leaves whole files only (``skip_existing=true``
    finishes it).

    Returns:
        ``{"predicted": n, "skipped": n, "failed": [{"file", "error"}]}``.

    Raises:
        DataError: after the folder is done, when some images failed (listed in ``failed.json``).
    """
    kinds = list(cfg.outputs)
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise ConfigError(f"outputs={kinds}: choose among {', '.join(OUTPUT_KINDS)}.")
    if not 0 <= cfg.overlay_alpha <= 1:
        raise ConfigError(f"overlay_alpha={cfg.overlay_alpha}: between 0 and 1.")
    settings = InferenceSettings.from_config(cfg.get("inference"))
    module = load_module(cfg.ckpt_path).to(_device(cfg.device))
    inputs = list_inputs(cfg.input)
    output = Path(cfg.output)
    plan = _planned_outputs(inputs, output, kinds, module.mode)
    todo = _check_existing(plan, cfg.overwrite, cfg.skip_existing)
    hp = module.hparams
    log.info(f"predicting {len(todo)} image(s) of {cfg.input} into {output} ({len(plan) - len(todo)} done already)")

    transform = evaluation_transform(module)
    failed: list[Problem] = []
    for image_path, outputs in tqdm(todo.items(), desc="predict", unit="image", disable=len(todo) < 2):
        try:
            image = read_image(image_path, hp.in_channels)
            mask = predict_mask(module, image, settings, transform)  # refuses an image of another depth
        except DataError as error:
            failed.append(
                Problem(str(image_path), str(error).removeprefix(f"{image_path}: "), "fix or remove the file.")
            )
            continue
        colour = colorize_mode(mask, module.palette, module.mode)
        pictures = {"colour": colour}
        if "overlay" in kinds:
            pictures["overlay"] = overlay(image, colour, cfg.overlay_alpha)
        for kind, path in outputs.items():
            if kind == "masks":
                _write_mask(mask, path, module)
            else:
                write_bytes_atomic(path, _encode_png(pictures[kind], path))

    result = {"predicted": len(todo) - len(failed), "skipped": len(plan) - len(todo), "failed": len(failed)}
    print(f"predicted {result['predicted']} image(s) into {output}; {result['skipped']} had outputs already")
    if failed:
        write_json_atomic(
            output / FAILED_IMAGES_FILE, {"failed": [{"file": p.file, "error": p.problem} for p in failed]}
        )
        raise DataError(
            problems_message(
                failed, f"{len(failed)} image(s) could not be predicted (see {output / FAILED_IMAGES_FILE}):"
            )
        )
    return result
