"""A one-device DDP training run end to end: the distributed path (process group, NCCL on a GPU,
gloo on a CPU, the distributed sampler, synchronised BatchNorm and metrics) that a cluster user
meets, checked in seconds on the machine at hand."""

from __future__ import annotations

import tempfile
import time
import traceback

from omegaconf import DictConfig, open_dict

from semseg.bench.training import bench_device
from semseg.training.train import train


def ddp_smoke(cfg: DictConfig) -> dict:
    """``train(cfg)`` with ``strategy: ddp`` on one device for ``bench.steps`` batches, one
    validation batch and one test batch, into a scratch folder. One device needs no extra process:
    Lightning starts the process group in this one.

    Returns ``{"ddp": {"ok", "backend", "seconds", "val/miou" | "error"}}``.
    """
    cuda = bench_device(cfg).type == "cuda"
    run = cfg.copy()
    started = time.perf_counter()
    result: dict = {"backend": "nccl" if cuda else "gloo"}
    with tempfile.TemporaryDirectory() as folder:
        with open_dict(run):
            run.output_dir = folder
            run.resume = False
            run.trainer.update(
                accelerator="gpu" if cuda else "cpu",
                devices=1,
                strategy="ddp",
                sync_batchnorm=cuda,  # SyncBatchNorm works on GPUs only
                max_epochs=1,
                max_steps=-1,
                limit_train_batches=cfg.bench.steps,
                limit_val_batches=1,
                limit_test_batches=1,
                num_sanity_val_steps=0,
                enable_model_summary=False,
            )
        try:
            metrics = train(run)
            result |= {"ok": True, "val/miou": metrics.get("val/miou")}
        except Exception as error:  # the smoke test reports a failure instead of ending the benchmark
            result |= {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    return {"ddp": result | {"seconds": round(time.perf_counter() - started, 1)}}
