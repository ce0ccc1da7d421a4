"""Hard pixels and deep supervision: loss=ohem_ce keeps the pixels MMSegmentation's rule keeps, and
model.aux_head trains a head on an encoder stage that inference and exports never see."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semseg.builders import build_module
from semseg.errors import ConfigError
from semseg.inference.checkpoint import load_module
from semseg.inference.export import PixelsToLogits
from semseg.task.losses import OhemCrossEntropy, build_loss
from semseg.training.train import train
from tests.conftest import CHEAP, compose_cfg, tiny_data

IGNORE = 255


def logits_with_true_probabilities(probabilities: torch.Tensor, target: torch.Tensor, classes: int = 3):
    """(N, classes, H, W) logits whose softmax gives each pixel's true class (``target``) the
    probability ``probabilities`` and shares the rest equally among the other classes."""
    rest = (1 - probabilities) / (classes - 1)
    planes = rest.unsqueeze(1).repeat(1, classes, 1, 1)
    planes.scatter_(1, target.clamp(max=classes - 1).unsqueeze(1), probabilities.unsqueeze(1))
    return planes.log()


def test_ohem_keeps_the_pixels_below_the_threshold_when_they_are_enough():
    probabilities = torch.tensor([[[0.1, 0.5, 0.69], [0.71, 0.9, 0.99]]])
    target = torch.tensor([[[0, 1, 2], [0, 1, 2]]])
    ohem = OhemCrossEntropy(IGNORE, threshold=0.7, min_kept=2)
    kept = ohem.kept(logits_with_true_probabilities(probabilities, target), target)
    assert kept.tolist() == [[[True, True, True], [False, False, False]]]


def test_ohem_keeps_at_least_min_kept_hardest_pixels_per_image():
    # One pixel of each image is below 0.7; min_kept=2 per image (4 in the batch) raises the threshold
    # to the batch's probability at sorted index 4 (0.95): the 4 hardest pixels are below it.
    probabilities = torch.tensor([[[0.3, 0.8, 0.95]], [[0.75, 0.9, 0.97]]])
    target = torch.tensor([[[0, 1, 2]], [[2, 1, 0]]])
    ohem = OhemCrossEntropy(IGNORE, threshold=0.7, min_kept=2)
    kept = ohem.kept(logits_with_true_probabilities(probabilities, target), target)
    assert kept.tolist() == [[[True, True, False]], [[True, True, False]]]
    # With min_kept=0 the threshold alone decides.
    kept = OhemCrossEntropy(IGNORE, threshold=0.7, min_kept=0).kept(
        logits_with_true_probabilities(probabilities, target), target
    )
    assert kept.tolist() == [[[True, False, False]], [[False, False, False]]]


def test_ohem_is_the_class_weighted_mean_cross_entropy_of_the_kept_pixels_and_ignores_ignored():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :2] = IGNORE
    weights = torch.tensor([0.5, 1.0, 2.0])
    ohem = OhemCrossEntropy(IGNORE, weights, threshold=0.5, min_kept=5)
    kept = ohem.kept(logits, target)
    assert not kept[target == IGNORE].any() and 0 < kept.sum() < (target != IGNORE).sum()
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[kept], target[kept], weight=weights)
    loss = ohem(logits, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    gradient_per_pixel = logits.grad.abs().sum(1)
    assert (gradient_per_pixel[~kept] == 0).all() and (gradient_per_pixel[kept] > 0).all()


@pytest.mark.parametrize("params", [{"threshold": 0.0}, {"threshold": 1.5}, {"min_kept": -1}, {"min_kept": 2.5}])
def test_bad_ohem_settings_are_named(params):
    with pytest.raises(ConfigError, match=r"loss\.terms\.ohem_ce"):
        build_loss({"terms": {"ohem_ce": {"weight": 1.0, **params}}}, 3, IGNORE)


def test_the_ohem_config_builds_its_term():
    loss = build_loss(compose_cfg(["loss=ohem_ce"]).loss, 3, IGNORE)
    term = loss.terms["ohem_ce"]
    assert isinstance(term, OhemCrossEntropy) and (term.threshold, term.min_kept) == (0.7, 10000)


AUX = ("model.aux_head.weight=0.4", "model.aux_head.channels=8")


@pytest.fixture(scope="module")
def aux_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aux_run")
    cfg = compose_cfg([*CHEAP, *tiny_data(tiny_root), *AUX, "resume=false"])
    cfg.output_dir = str(out)
    train(cfg)
    return out


def test_the_aux_head_trains_and_its_loss_is_a_named_term(aux_run: Path, make_cfg):
    with open(aux_run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    aux = [float(row["train/loss_aux"]) for row in rows if row.get("train/loss_aux")]
    assert aux and all(value > 0 for value in aux)
    checkpoint = torch.load(aux_run / "checkpoints" / "last.ckpt", weights_only=False)
    initial = build_module(make_cfg(*AUX)).aux_head.state_dict()
    trained = {k.removeprefix("aux_head."): v for k, v in checkpoint["state_dict"].items() if k.startswith("aux_head.")}
    assert trained.keys() == initial.keys()
    assert not torch.equal(trained["layers.4.weight"], initial["layers.4.weight"])  # it learned


def test_the_aux_head_is_absent_at_inference_and_from_exports(aux_run: Path):
    module = load_module(aux_run / "checkpoints" / "best.ckpt")
    assert module.aux_head is not None  # kept in the checkpoint, to resume
    assert not any(name.startswith("aux") for name in module.net.state_dict())
    # Every export format exports PixelsToLogits: the network's tensors and the normalisation.
    assert set(PixelsToLogits(module).state_dict()) == {f"net.{name}" for name in module.net.state_dict()} | {
        "mean",
        "std",
    }


def test_the_aux_head_refuses_a_stage_the_encoder_lacks(make_cfg):
    with pytest.raises(ConfigError, match=r"model.aux_head.stage=9: the encoder has 6 feature maps"):
        build_module(make_cfg(*AUX, "model.aux_head.stage=9"))
    with pytest.raises(ConfigError, match=r"model.aux_head has unknown keys \['weigth'\]"):
        build_module(make_cfg("+model.aux_head.weigth=0.4"))
