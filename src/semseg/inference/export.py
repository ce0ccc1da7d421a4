"""export(cfg): a checkpoint as ONNX, a torch.export program, or an smp ``save_pretrained`` folder,
each checked against the PyTorch model before it is put in place."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from semseg.errors import ConfigError
from semseg.extras import require_extra
from semseg.files import atomic_path, staging_path
from semseg.inference.checkpoint import load_module
from semseg.models.mask_classification import export_refusal
from semseg.models.vit import plain_vit_patch
from semseg.run_folder import RunFolder
from semseg.task.module import SegmentationModule

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2", "smp": ""}


def input_contract(module: SegmentationModule) -> str:
    """What the exported network takes, in words (stored with every format)."""
    full = f"{module.max_pixel_value:g}"
    return f"float32 NCHW pixel values 0-{full} (bands in file order: RGB for 3); any height and width"


class PixelsToLogits(nn.Module):
    """The deployable network: raw pixel values in, class logits out, normalisation inside, so a
    consumer needs nothing but the file (and argmax over dim 1, or a sigmoid and ``threshold`` for
    binary and multilabel tasks: ``inference_info``'s ``mode``)."""

    def __init__(self, module: SegmentationModule):
        super().__init__()
        self.net = module.net
        mean, std = module.normalization
        shape, full = (1, len(mean), 1, 1), module.max_pixel_value
        self.register_buffer("mean", torch.tensor(mean).view(shape) * full)
        self.register_buffer("std", torch.tensor(std).view(shape) * full)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels - self.mean) / self.std)


def inference_info(module: SegmentationModule) -> dict:
    """What a consumer of an exported model needs to read its output (stored with every format)."""
    hp = module.hparams
    mean, std = module.normalization
    return {
        "class_names": list(hp.class_names),
        "palette": [list(c) for c in hp.palette],
        "ignore_index": hp.ignore_index,
        "in_channels": hp.in_channels,
        "mean": mean,
        "std": std,
        "max_pixel_value": module.max_pixel_value,  # mean and std are of pixel values divided by it
        "image_size": (hp.get("data") or {}).get("image_size"),
        "model": {k: hp.model[k] for k in ("arch", "encoder_name") if k in hp.model},
        # How to read the logits: multiclass, argmax over dim 1; binary and multilabel, a class is
        # present where sigmoid(logit) > threshold.
        "mode": module.mode,
        "threshold": hp.get("threshold", 0.5),
    }


def _check_shapes(module: SegmentationModule) -> list[tuple[int, ...]]:
    """Inputs the export is checked on: a stride multiple, odd sides, batch 2, the training size."""
    stride, channels = module.net.stride, module.hparams.in_channels
    shapes = [(1, channels, 2 * stride, 3 * stride), (2, channels, 2 * stride + 5, stride + 21)]
    size = (module.hparams.get("data") or {}).get("image_size")
    if size:
        shapes.append((1, channels, *size))
    return shapes


def pixel_range(module: SegmentationModule) -> tuple[int, int]:
    """The integer pixel values exports are checked on: all of 0..255 for 8-bit images; for 16-bit
    ones, those within 4 standard deviations of the mean (of every band at once). Values of 0..65535
    far out of the data's range would make logits of many thousands, where float32 rounding alone
    differs by more than the tolerance."""
    full = module.max_pixel_value
    if full <= 255:
        return 0, int(full)
    mean, std = (np.asarray(v) * full for v in module.normalization)
    return max(int((mean - 4 * std).min()), 0), min(int((mean + 4 * std).max()) + 1, int(full))


def max_difference(
    run: Callable[[np.ndarray], np.ndarray],
    reference: nn.Module,
    shapes: list[tuple[int, ...]],
    values: tuple[int, int] = (0, 255),
) -> float:
    """The largest absolute logit difference between ``run`` and ``reference`` over random images
    of integer pixel ``values`` (lowest, highest: ``pixel_range``)."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        pixels = torch.randint(values[0], values[1] + 1, shape, generator=generator).float()
        with torch.no_grad():
            expected = reference(pixels).numpy()
        worst = max(worst, float(np.abs(run(pixels.numpy()) - expected).max()))
    return worst


def _example(module: SegmentationModule) -> torch.Tensor:
    # Batch 2 and sides no stride divides: a batch of 1 or a padding of 0 would let the exporter
    # specialise the graph to that case.
    stride, channels = module.net.stride, module.hparams.in_channels
    return torch.rand(2, channels, 2 * stride + 6, 3 * stride + 10) * module.max_pixel_value


def _dynamic_shapes() -> dict:
    dynamic = torch.export.Dim.DYNAMIC
    return {"pixels": {0: dynamic, 2: dynamic, 3: dynamic}}


def export_onnx(module: SegmentationModule, path: Path, opset: int | None) -> float:
    """ONNX with dynamic batch, height and width, metadata ``semseg`` (``inference_info`` as JSON);
    checked with onnxruntime. Returns the max abs logit difference to PyTorch."""
    import onnx
    import onnxruntime

    model = PixelsToLogits(module).eval()
    for name in ("onnx_ir", "onnxscript"):  # a line per graph pass at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not about this model
        program = torch.onnx.export(
            model,
            (_example(module),),
            input_names=["pixels"],
            output_names=["logits"],
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(),
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    info = {**inference_info(module), "input": input_contract(module), "output": "logits (N, classes, H, W)"}
    onnx.helper.set_model_props(proto, {"semseg": json.dumps(info)})
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return max_difference(
        lambda x: session.run(None, {"pixels": x})[0], model, _check_shapes(module), pixel_range(module)
    )


def export_program(module: SegmentationModule, path: Path) -> float:
    """A ``torch.export`` program (.pt2) with dynamic batch, height and width; ``inference_info``
    in its extra files. Load: ``torch.export.load(path).module(check_guards=False)``.

    check_guards=False: export records a guard on whether the stride padding is zero, although the
    graph pads by zero correctly (checked here on stride multiples and on odd sides)."""
    model = PixelsToLogits(module).eval()
    program = torch.export.export(model, (_example(module),), dynamic_shapes=_dynamic_shapes())
    info = {**inference_info(module), "input": input_contract(module)}
    torch.export.save(program, str(path), extra_files={"semseg.json": json.dumps(info)})
    loaded = torch.export.load(str(path)).module(check_guards=False)
    return max_difference(
        lambda x: loaded(torch.from_numpy(x)).detach().numpy(), model, _check_shapes(module), pixel_range(module)
    )


def export_smp(module: SegmentationModule, folder: Path, metrics: dict | None) -> float:
    """An smp folder: ``smp.from_pretrained(folder)`` loads it without this repository;
    ``preprocessing.json`` is the albumentations pipeline its inputs need (``A.load``), and
    ``semseg.json`` the classes and palette. Checked by loading it back the way a user would."""
    import albumentations as A
    import cv2
    import segmentation_models_pytorch as smp

    net = module.net.architecture
    if module.hparams.model["arch"].lower() == "fcn":
        raise ConfigError(
            "format=smp: FCN is this repository's own architecture, which smp cannot load; "
            "use format=onnx or format=torch_export."
        )
    patch = plain_vit_patch(module.hparams.model.get("encoder_name", ""))
    if patch is not None and patch != 16:
        # smp 0.6 builds DPT's resize blocks for 16-pixel patches; semseg rebuilds them for others
        # (models.vit.fit_dpt_to_patch), which smp.from_pretrained would not do on loading.
        raise ConfigError(
            f"format=smp: smp cannot load a DPT on {patch}-pixel patches as it was trained; "
            "use format=onnx or format=torch_export."
        )
    mean, std = module.normalization
    steps = []
    size = (module.hparams.get("data") or {}).get("image_size")
    if size:
        steps.append(A.Resize(*size, interpolation=cv2.INTER_LINEAR))
    steps += [
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=module.max_pixel_value),
        # smp models need sides divisible by the encoder's stride: pad bottom and right with the
        # edge pixels, as semseg does, and crop the logits back to the image.
        A.PadIfNeeded(
            min_height=None,
            min_width=None,
            pad_height_divisor=module.net.stride,
            pad_width_divisor=module.net.stride,
            position="top_left",
            border_mode=cv2.BORDER_REPLICATE,
        ),
    ]
    card = {"metrics": metrics} if metrics else None
    net.save_pretrained(str(folder), model_card_kwargs=card)
    A.save(A.Compose(steps), str(folder / "preprocessing.json"))
    (folder / "semseg.json").write_text(json.dumps(inference_info(module), indent=2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # smp warns that the hub config carries extra keys
        loaded = smp.from_pretrained(str(folder)).eval()
    preprocess = A.load(str(folder / "preprocessing.json"))
    reference = PixelsToLogits(module).eval()

    def run(pixels: np.ndarray) -> np.ndarray:
        outputs = []
        for image in pixels.transpose(0, 2, 3, 1).astype(np.uint16 if module.max_pixel_value > 255 else np.uint8):
            x = torch.from_numpy(preprocess(image=image)["image"].transpose(2, 0, 1))[None]
            with torch.no_grad():
                outputs.append(loaded(x)[..., : image.shape[0], : image.shape[1]].numpy())
        return np.concatenate(outputs)

    # Random integer pixels: exact as the images' type (uint8 or uint16), which the pipeline takes.
    shapes = [s for s in _check_shapes(module) if not size or tuple(s[2:]) == tuple(size)]
    return max_difference(run, reference, shapes, pixel_range(module))


def _output_path(cfg: DictConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    checkpoint = Path(cfg.ckpt_path)
    suffix = FORMATS[cfg.format]
    return checkpoint.with_name(checkpoint.stem + (suffix or "_smp"))


def export(cfg: DictConfig) -> dict:
    """Exports ``cfg.ckpt_path`` as ``cfg.format`` to ``cfg.output`` (default: beside the
    checkpoint), checks it against PyTorch and puts it in place only if the difference is within
    ``cfg.tolerance``.

    Returns:
        ``{"format", "output", "max_abs_diff"}``.
    """
    if cfg.format not in FORMATS:
        hint = (
            " (TorchScript traces the stride padding as constants: use torch_export)"
            if cfg.format == "torchscript"
            else ""
        )
        raise ConfigError(f"format={cfg.format}: choose one of {', '.join(FORMATS)}{hint}.")
    if cfg.format == "onnx":
        require_extra("export", "format=onnx")
    output = _output_path(cfg)
    if output.exists() and not cfg.overwrite:
        raise ConfigError(f"output={output} exists already; use overwrite=true to replace it, or another output=.")
    module = load_module(cfg.ckpt_path)
    refusal = export_refusal(module.hparams.model["arch"], cfg.format)
    if refusal:
        raise ConfigError(refusal)
    metrics_file = RunFolder.of_checkpoint(cfg.ckpt_path).metrics
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None

    if cfg.format == "smp":
        staging = staging_path(output)
        staging.mkdir()
        try:
            difference = export_smp(module, staging, metrics)
            _check(difference, cfg.tolerance, output)
            shutil.rmtree(output, ignore_errors=True)
            staging.rename(output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        with atomic_path(output) as tmp:
            difference = export_onnx(module, tmp, cfg.opset) if cfg.format == "onnx" else export_program(module, tmp)
            _check(difference, cfg.tolerance, output)
    print(
        f"exported {cfg.ckpt_path} as {cfg.format} to {output}; max abs logit difference to PyTorch: {difference:.2e}"
    )
    return {"format": cfg.format, "output": str(output), "max_abs_diff": difference}


def _check(difference: float, tolerance: float, output: Path) -> None:
    if not difference <= tolerance:
        raise ConfigError(
            f"the exported model's logits differ from PyTorch's by up to {difference:.3g} (tolerance={tolerance}); "
            f"{output} was not written. Try another opset= or format=."
        )
