"""The Trainer's arguments from ``cfg.trainer``, with the defaults a GPU user should get unasked.

- ``precision: auto``: ``bf16-mixed`` on a CUDA GPU that supports bfloat16 (Ampere and newer), else
  ``32-true``. bf16 keeps fp32's range, so no loss scaling is needed, and runs the convolutions
  and matmuls on the tensor cores.
- ``benchmark: null``: cuDNN's autotuner on when every batch has one size (``data.crop_size`` or
  ``data.image_size`` set); with varying sizes it would re-tune at every new shape.
- fp32 matmuls may use TF32 (``torch.set_float32_matmul_precision("high")``) on a GPU.

Lightning has none of these as defaults (32-true, benchmark off, "highest"), hence this module.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from omegaconf import DictConfig, OmegaConf

GPU_ACCELERATORS = ("auto", "gpu", "cuda")


def uses_cuda(trainer: Mapping) -> bool:
    """True when the Trainer will run on CUDA GPUs."""
    return str(trainer.get("accelerator", "auto")) in GPU_ACCELERATORS and torch.cuda.is_available()


def trainer_kwargs(trainer: DictConfig | Mapping, data: DictConfig | Mapping | None = None) -> dict:
    """``cfg.trainer`` as keyword arguments of ``lightning.Trainer``, ``auto``/``null`` resolved."""
    kwargs = OmegaConf.to_container(trainer, resolve=True) if isinstance(trainer, DictConfig) else dict(trainer)
    cuda = uses_cuda(kwargs)
    if kwargs.get("precision", "auto") == "auto":
        kwargs["precision"] = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    fixed_size = data is not None and (data.get("crop_size") or data.get("image_size"))
    if kwargs.get("benchmark") is None and cuda and fixed_size and not kwargs.get("deterministic"):
        kwargs["benchmark"] = True
    if cuda:
        torch.set_float32_matmul_precision("high")
    return kwargs
