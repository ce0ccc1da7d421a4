"""The Trainer's arguments from ``cfg.trainer``, with the defaults a GPU user should get unasked.

- ``benchmark: null``: cuDNN's autotuner on when every batch has one size (``data.crop_size`` or
  ``data.image_size`` set); with varying sizes it would re-tune at every new shape.
- fp32 matmuls may use TF32 (``torch.set_float32_matmul_precision("high")``) on a GPU.
- In a SLURM job of submitit (``hydra/launcher=slurm``), Lightning's SLURM auto-requeue off
  (``slurm_plugins``, for the Trainer's ``plugins``): submitit requeues.
- Training refuses ``ddp_spawn`` and the other strategies that start their ranks anew for each
  stage (``refuse_spawned_ranks``): rank 0's state would not survive fit.

Lightning has none of these as defaults (benchmark off, "highest", its own requeueing),
hence this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from semseg.data.rare_class import training_input_size
from semseg.errors import ConfigError

GPU_ACCELERATORS = ("auto", "gpu", "cuda")
# Trainer arguments whose null semseg resolves itself (see the module docstring).
SEMSEG_RESOLVED = ("benchmark",)


def uses_cuda(trainer: Mapping) -> bool:
    """True when the Trainer will run on CUDA GPUs."""
    return str(trainer.get("accelerator", "auto")) in GPU_ACCELERATORS and torch.cuda.is_available()


def trainer_kwargs(trainer: DictConfig | Mapping, data: DictConfig | Mapping | None = None) -> dict:
    """``cfg.trainer`` as keyword arguments of ``lightning.Trainer``, ``benchmark: null`` resolved."""
    kwargs = OmegaConf.to_container(trainer, resolve=True) if isinstance(trainer, DictConfig) else dict(trainer)
    # conf/trainer/default.yaml lists every Trainer argument; null ones take Lightning's default.
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in SEMSEG_RESOLVED}
    _check_arguments(kwargs)
    # A _target_ entry, built with the entries inside it: debug=profiler's profiler, trainer=ddp's
    # DDPStrategy and its timeout.
    for key in ("profiler", "strategy"):
        if isinstance(kwargs.get(key), Mapping):
            kwargs[key] = instantiate(kwargs[key])
    check_gpus_exist(kwargs)
    cuda = uses_cuda(kwargs)
    fixed_size = data is not None and training_input_size(data) is not None
    if kwargs.get("benchmark") is None and cuda and fixed_size and not kwargs.get("deterministic"):
        kwargs["benchmark"] = True
    if cuda:
        torch.set_float32_matmul_precision("high")
    return kwargs


def _check_arguments(kwargs: Mapping) -> None:
    """A key that is not a ``lightning.Trainer`` argument (``+trainer.fast_dev_rn=true``) is named
    with the closest one, instead of Lightning's TypeError traceback."""
    import difflib
    import inspect

    import lightning as L

    valid = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean trainer.{close[0]}?" if close else " (conf/trainer/default.yaml lists them)."
            raise ConfigError(f"trainer.{key} is not a lightning.Trainer argument{hint}")


def slurm_plugins() -> list[ClusterEnvironment]:
    """``[SLURMEnvironment(auto_requeue=False)]`` in a SLURM job that submitit runs
    (``SUBMITIT_EXECUTOR=slurm``), else none: Lightning's own choice of environment stands.

    One owner per requeue, so that the signal handlers do not compete:

    - pre-emption (``scontrol requeue``, a partition's ``PreemptMode=REQUEUE``): SLURM requeues the
      job itself and sends SIGTERM; Lightning's clean stop saves last.ckpt and the requeued job resumes;
    - the time limit: submitit requeues (its SIGUSR2, ``hydra.launcher.signal_delay_s`` before the
      limit, at most ``max_num_timeout`` times) and re-runs the job, which resumes from last.ckpt.

    Lightning's auto-requeue would be a second, uncounted requeuer (on SIGUSR1, for a job submitted
    with ``--signal=USR1``), and it chains a SIGTERM handler that only logs "Bypassing SIGTERM" to
    submitit's that logs the same. Its SIGTERM notifier, which turns the signal into a clean stop,
    stays: it does not depend on ``auto_requeue``.
    """
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def refuse_spawned_ranks(trainer: Mapping) -> None:
    """Raises ``ConfigError`` for a strategy that starts its ranks anew for each of fit, validate and
    test (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook`` and their variants).

    Such ranks bring back only the weights and the metrics: whatever rank 0 kept while fitting is
    lost with its process. Lightning's CSV logger, which no longer knows the columns it wrote,
    fails at the first validation after fit ("dict contains fields not in fieldnames"), and the
    run's own records come out wrong (0 epochs, no epoch lines in train.log, empty training curves).
    ``ddp`` keeps rank 0 in this process and has none of that. The strategy is a name
    (``trainer.strategy=ddp_spawn``) or a ``_target_`` entry (``trainer=ddp``'s ``DDPStrategy``, whose
    ``start_method`` is checked the same way; another class is the user's own).
    """
    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, Mapping):
        if str(strategy.get("_target_", "")).rsplit(".", 1)[-1] != DDPStrategy.__name__:
            return
        start_method = strategy.get("start_method", "popen")
        setting = f"trainer.strategy.start_method={start_method}"
    elif isinstance(strategy, str) and strategy in StrategyRegistry:  # else auto, or a name Lightning names
        # The entry, not StrategyRegistry.get(), which builds the strategy.
        start_method = StrategyRegistry[strategy]["init_params"].get("start_method", "popen")
        setting = f"trainer.strategy={strategy}"
    else:
        return
    if start_method != "popen":
        raise ConfigError(
            f"{setting} restarts the ranks for each of fit, validate and test, losing rank 0's "
            "state (loggers, epochs, pictures): use trainer.strategy=ddp (trainer=ddp_cpu on the CPU, trainer=ddp "
            "on GPUs)."
        )


def check_gpus_exist(trainer: Mapping) -> None:
    """Raises ``ConfigError`` (the key and the fix) when the config asks for GPUs this machine
    does not have; Lightning's own error is a traceback ending in "No supported gpu backend found!"."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    # Lightning's "gpu" is CUDA or Apple's MPS; "cuda" is CUDA only.
    mps = accelerator == "gpu" and torch.backends.mps.is_available()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0 and not mps:
        raise ConfigError(
            f"trainer.accelerator={accelerator} asks for a GPU, but PyTorch sees no CUDA GPU{where}. "
            "Fix: trainer=cpu (or trainer.accelerator=auto, which takes a GPU when there is one), or "
            "check the driver (nvidia-smi) and that torch is a CUDA build."
        )
    devices = trainer.get("devices", "auto")
    wanted = max(devices) + 1 if isinstance(devices, list) and devices else devices
    if not mps and isinstance(wanted, int) and wanted > count:
        raise ConfigError(
            f"trainer.devices={devices} needs {wanted} GPUs, but PyTorch sees {count}{where}. "
            f"Fix: trainer.devices={count} (or -1: every visible GPU)."
        )
