"""Shared fixtures: tiny synthetic data sets and the real config, composed and forced cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from semseg.data.synthetic import SyntheticSpec, generate
from semseg.run_folder import RunFolder
from semseg.task.per_image import read_per_image_scores

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Under pytest-xdist (`make test` runs two workers), the cores are shared out among the workers,
# and the trainings they start (subprocesses inherit OMP_NUM_THREADS): PyTorch's default of one
# thread per core in every process would oversubscribe them, slowing each process several times.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

# Drawing the run folder's pictures costs matplotlib ~3 s per run: only the tests of the pictures
# draw them (make_cfg(..., pictures=True)).
NO_PICTURES = "callbacks.validation_pictures=null"
# Tests train on timm's test ResNet (0.45 M parameters, the same five strides as ResNet-18): a
# ResNet-18 U-Net checkpoint with its AdamW state is ~170 MB, and saving it twice a run was half of
# each tiny training's time and ~24 GB of disk a suite. tests/models cover ResNet-18 itself. The
# command-line tests take it as an override in CHEAP (they train the default U-Net); make_cfg sets
# it after composing (with_tiny_encoder).
TINY_ENCODER = "model.encoder_name=tu-test_resnet"
# U-Net's default decoder (256 ... 16 channels) is 1.9 M of the tiny U-Net's 2.3 M parameters and
# half of each tiny training's time: the tests' U-Net decodes with a narrow one (0.5 M in all).
# An override for the command-line tests that train the default U-Net; make_cfg sets it after
# composing, for U-Nets only (with_tiny_encoder).
TINY_DECODER_CHANNELS = [32, 32, 16, 16, 8]
TINY_DECODER = f"+model.kwargs.decoder_channels=[{','.join(map(str, TINY_DECODER_CHANNELS))}]"
# DPT's stand-in, as TINY_ENCODER is U-Net's: timm's test ViT (0.37 M parameters, 16-pixel patches)
# under a narrow decoder, 0.5 M parameters in all (DINOv2 ViT-S/14 under the default decoder: 61 M,
# ten times slower a step). tests/test_finetuning_weights.py trains the DINOv2 presets themselves.
TINY_DPT_OVERRIDES = [
    "model.encoder_name=tu-test_vit",
    "model.encoder_weights=null",
    "++model.kwargs.decoder_intermediate_channels=[16,32,64,64]",
    "++model.kwargs.decoder_fusion_channels=16",
]
# Every test run of train(): CPU, one small epoch, no W&B and no pictures unless a test asks.
CHEAP = [
    TINY_ENCODER,
    TINY_DECODER,
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "logger=csv",
    "data.batch_size=4",
    "data.num_workers=0",
    NO_PICTURES,
]


@pytest.fixture(scope="session", autouse=True)
def mask_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tests keep the mask statistics cache out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("cache")
        patch.setenv("SEMSEG_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32x32 synthetic data set (8 train, 4 val, 4 test) in the image-mask folder layout."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", SyntheticSpec(8, 4, 4, image_size=32, seed=1))


@pytest.fixture(scope="session")
def odd_size_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic pairs cropped to sides no stride divides (37x45, 45x30, 30x50), mixed in batches."""
    root = generate(tmp_path_factory.mktemp("data") / "odd", SyntheticSpec(6, 3, 0, image_size=64, seed=2))
    sizes = [(37, 45), (45, 30), (30, 50)]
    for split in ("train", "val"):
        for index, image_path in enumerate(sorted((root / "images" / split).iterdir())):
            height, width = sizes[index % len(sizes)]
            mask_path = root / "masks" / split / f"{image_path.stem}.png"
            for path in (image_path, mask_path):
                cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:height, :width])
    return root


def tiny_data(root: Path) -> list[str]:
    """The overrides that train on a generated set already there (``root``, of another spec than
    data=synthetic's): data=synthetic's classes and recipe, nothing generated."""
    return ["data=synthetic", f"data.root={root}", "data.synthetic=null"]


def compose_named(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """The real conf/<config_name>.yaml with ``overrides`` (no Hydra run, so output_dir must be set)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    """The real conf/train.yaml with ``overrides``."""
    return compose_named("train", overrides)


def with_tiny_encoder(cfg: DictConfig, overrides: tuple[str, ...]) -> None:
    """TINY_ENCODER in place of the default encoder, and a U-Net's TINY_DECODER, set after composing
    rather than as overrides so that a model naming its own encoder (SegFormer's mit_b0) or a test
    naming one keeps it."""
    default = OmegaConf.load(CONF_DIR / "model" / "smp.yaml").encoder_name
    if cfg.model.encoder_name == default and not any(o.startswith("model.encoder_name=") for o in overrides):
        cfg.model.encoder_name = TINY_ENCODER.split("=", 1)[1]
    if cfg.model.arch == "unet" and "decoder_channels" not in (cfg.model.kwargs or {}):
        cfg.model.kwargs = {**(cfg.model.kwargs or {}), "decoder_channels": TINY_DECODER_CHANNELS}


def new_samples(root: Path, counts: dict[str, int]):
    """(split, index) of every sample a test writes into the new image-mask folder ``root``: its
    ``images/<split>`` and ``masks/<split>`` folders made first."""
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        yield from ((split, index) for index in range(count))


def folder_cfg(root: Path, out: Path, *overrides: str) -> DictConfig:
    """A cheap training config (CHEAP, from scratch, no augmentation) on the folder ``root``,
    writing into ``out``: for tests that bring their own data set."""
    base = ["data=folder", f"data.root={root}", *CHEAP, "model.encoder_weights=null", "augment=none", "resume=false"]
    cfg = compose_cfg([*base, *overrides])
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return cfg


@pytest.fixture
def make_cfg(tiny_root: Path, tmp_path: Path):
    """Builds a cheap training config on the tiny data set (data=synthetic's recipe), writing into
    ``tmp_path/run``."""

    def make(*overrides: str, root: Path | None = None, pictures: bool = False) -> DictConfig:
        cheap = [o for o in CHEAP if o not in (TINY_ENCODER, TINY_DECODER) and not (pictures and o == NO_PICTURES)]
        # resume=false: tests that train twice into one folder mean two fresh runs.
        cfg = compose_cfg([*cheap, "resume=false", "data=synthetic", f"data.root={root or tiny_root}", *overrides])
        with open_dict(cfg):
            with_tiny_encoder(cfg, overrides)
            cfg.output_dir = str(tmp_path / "run")
            cfg.data.synthetic = None  # the fixture generated it already
        return cfg

    return make


@pytest.fixture
def entry_point(monkeypatch):
    """``exit_on_user_error``, as the scripts run, without its process-wide console settings: a
    script's one-line errors checked in process."""
    from semseg import cli

    monkeypatch.setattr(cli, "quiet_upstream_noise", lambda **_: None)
    return cli.exit_on_user_error


def console_output(run: Path) -> bytes:
    """What ``scripts/train.py`` printed while making ``trained_run``."""
    return (run.parent / "console.txt").read_bytes()


@pytest.fixture(scope="session")
def trained_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A run folder of a model trained for 2 epochs on the tiny data set (checkpoints, metrics.json,
    train.log) by ``scripts/train.py``, as a user runs it: its output, stdout and stderr into one
    pipe as in a batch job, is kept beside the folder (``console_output``).

    Trained once per test session: under pytest-xdist the first worker to need it trains it into
    the folder the workers share, and the others wait for it and read it (tests only read it)."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    folder = shared / "trained" / "run"
    with FileLock(shared / "trained.lock"):
        if not (folder / "metrics.json").is_file():
            _train_into(folder, tiny_root)
    return folder


def _train_into(folder: Path, tiny_root: Path) -> None:
    cheap = [o for o in CHEAP if o != "trainer.enable_model_summary=false"]  # tests/test_console.py reads it
    command = [sys.executable, str(CONF_DIR.parent / "scripts" / "train.py"), *cheap, *tiny_data(tiny_root),
               "trainer.max_epochs=2", f"hydra.run.dir={folder}"]  # fmt: skip
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    (folder.parent / "console.txt").write_bytes(result.stdout)
    assert result.returncode == 0, result.stdout.decode(errors="replace")[-4000:]


def assert_per_image_scores_match(folder: Path, splits: tuple[str, ...] = ("val", "test")) -> None:
    """The folder's per_image_scores.npz, summed, gives its metrics.json's headline scores of each split."""
    metrics = json.loads((folder / "metrics.json").read_text())
    scores = read_per_image_scores(RunFolder(folder).per_image_scores)
    assert sorted(scores) == sorted(splits)
    for split in splits:
        assert len(set(scores[split].names.tolist())) == len(scores[split])  # each image once
        for key, value in scores[split].scores().items():
            assert value == pytest.approx(metrics[f"{split}/{key}"], abs=1e-5), f"{split}/{key}"
