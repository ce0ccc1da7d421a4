"""Losses: named terms, and ignored pixels never change the loss or its gradient."""

from __future__ import annotations

import pytest
import torch

from semseg.errors import ConfigError
from semseg.losses import build_loss


@pytest.mark.parametrize("terms", [{"ce": 1.0}, {"dice": 1.0}, {"ce": 1.0, "dice": 0.5}])
@pytest.mark.parametrize(("num_classes", "ignore_index"), [(2, 255), (5, 255), (5, 0)])
def test_ignored_pixels_change_neither_loss_nor_gradient(terms, num_classes, ignore_index):
    torch.manual_seed(0)
    loss = build_loss({"terms": terms}, num_classes, ignore_index)
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


def test_compound_is_the_weighted_sum_of_its_terms():
    loss = build_loss({"terms": {"ce": 2.0, "dice": 0.5}}, 3, 255)
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    total, parts = loss(logits, target)
    assert torch.allclose(total, 2.0 * parts["ce"] + 0.5 * parts["dice"])


def test_unknown_term_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid terms: ce, dice"):
        build_loss({"terms": {"dcie": 1.0}}, 3, 255)


def test_class_weights_must_match_the_classes():
    with pytest.raises(ConfigError, match=r"3 values but data\.num_classes=2"):
        build_loss({"terms": {"ce": 1.0}}, 2, 255, class_weights=[1.0, 2.0, 3.0])
