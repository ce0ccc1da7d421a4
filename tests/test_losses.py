"""Losses: named terms, and ignored pixels never change the loss or its gradient."""

from __future__ import annotations

import pytest
import torch

from semseg.errors import ConfigError
from semseg.task.losses import TERMS, build_loss
from tests.conftest import CONF_DIR, compose_cfg

CONFIGS = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))


@pytest.mark.parametrize("terms", [*({name: 1.0} for name in TERMS), {"ce": 1.0, "dice": 0.5}])
@pytest.mark.parametrize(("num_classes", "ignore_index"), [(2, 255), (5, 255), (5, 0)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class_weights"])
def test_ignored_pixels_change_neither_loss_nor_gradient(terms, num_classes, ignore_index, weighted):
    torch.manual_seed(0)
    class_weights = torch.linspace(0.5, 3.0, num_classes).tolist() if weighted else None
    loss = build_loss({"terms": terms}, num_classes, ignore_index, class_weights)
    target = torch.randint(0, num_classes, (2, 8, 8))
    target[:, :3] = ignore_index
    logits = torch.randn(2, num_classes, 8, 8, requires_grad=True)
    total, parts = loss(logits, target)
    assert set(parts) == set(terms)
    total.backward()
    grad = logits.grad.clone()

    scrambled = logits.detach().clone()
    scrambled[:, :, :3] = torch.randn_like(scrambled[:, :, :3]) * 10  # change only ignored pixels
    scrambled.requires_grad_(True)
    total2, _ = loss(scrambled, target)
    total2.backward()
    assert torch.allclose(total, total2, atol=1e-6)
    assert torch.allclose(grad[:, :, 3:], scrambled.grad[:, :, 3:], atol=1e-6)
    assert scrambled.grad[:, :, :3].abs().max() == 0


@pytest.mark.parametrize("name", CONFIGS)
def test_every_loss_config_builds_and_learns(name):
    cfg = compose_cfg([f"loss={name}"]).loss
    loss = build_loss(cfg, 3, 255, class_weights=None)
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    total, _ = loss(logits, target)
    total.backward()
    # One gradient step on the logits lowers the loss: the terms point the right way.
    after, _ = loss(logits.detach() - 0.5 * logits.grad / logits.grad.abs().max(), target)
    assert after < total


@pytest.mark.parametrize("term", ["ce", "dice", "focal", "tversky", "boundary_ce"])
def test_class_weights_reach_the_terms_that_take_them(term):
    torch.manual_seed(0)
    logits, target = torch.randn(1, 3, 8, 8), torch.randint(0, 3, (1, 8, 8))
    plain, _ = build_loss({"terms": {term: 1.0}}, 3, 255)(logits, target)
    weighted, _ = build_loss({"terms": {term: 1.0}}, 3, 255, class_weights=[1.0, 1.0, 9.0])(logits, target)
    assert not torch.isclose(plain, weighted)


def test_boundary_ce_weighs_edge_pixels_more():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, :, 8:] = 1  # one vertical edge
    logits = torch.zeros(1, 2, 16, 16)
    logits[0, 0] = 2.0  # confident class 0 everywhere: wrong on the right half
    ce = build_loss({"terms": {"ce": 1.0}}, 2, 255)(logits, target)[0]
    flat = build_loss({"terms": {"boundary_ce": {"edge_weight": 1.0}}}, 2, 255)(logits, target)[0]
    assert torch.isclose(flat, ce)  # edge_weight 1 is plain cross-entropy
    edges_only_wrong = logits.clone()
    edges_only_wrong[0, 1, :, 11:] = 4.0  # right everywhere except the 3 columns next to the edge
    easy = build_loss({"terms": {"ce": 1.0}}, 2, 255)(edges_only_wrong, target)[0]
    edgy = build_loss({"terms": {"boundary_ce": {"edge_weight": 5.0, "width": 3}}}, 2, 255)(edges_only_wrong, target)[0]
    assert edgy > 1.5 * easy  # the same mistakes cost more when they sit on an edge


def test_term_arguments_are_checked():
    with pytest.raises(ConfigError, match=r"loss\.terms\.focal: .*gama"):
        build_loss({"terms": {"focal": {"weight": 1.0, "gama": 2.0}}}, 3, 255)
    with pytest.raises(ConfigError, match=r"loss\.terms\.ce='heavy'"):
        build_loss({"terms": {"ce": "heavy"}}, 3, 255)


def test_compound_is_the_weighted_sum_of_its_terms():
    loss = build_loss({"terms": {"ce": 2.0, "dice": 0.5}}, 3, 255)
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    total, parts = loss(logits, target)
    assert torch.allclose(total, 2.0 * parts["ce"] + 0.5 * parts["dice"])


def test_unknown_term_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid terms: ce, dice, focal, lovasz, tversky, boundary_ce"):
        build_loss({"terms": {"dcie": 1.0}}, 3, 255)


def test_class_weights_must_match_the_classes():
    with pytest.raises(ConfigError, match=r"3 values but data\.num_classes=2"):
        build_loss({"terms": {"ce": 1.0}}, 2, 255, class_weights=[1.0, 2.0, 3.0])
