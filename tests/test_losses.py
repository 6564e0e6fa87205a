import math

import pytest
import torch

from wsloc.losses import build_loss, weighted_bce


def _loop(logits, labels):
    """The paper's W-CEL term by term, then divided by the number of entries."""
    flat_z, flat_y = logits.flatten().tolist(), labels.flatten().tolist()
    p = sum(flat_y)
    n = len(flat_y) - p
    total = 0.0
    for z, y in zip(flat_z, flat_y):
        f = 1 / (1 + math.exp(-z))
        if y == 1:
            total += (p + n) / p * -math.log(f)
        else:
            total += (p + n) / n * -math.log(1 - f)
    return total / len(flat_y)


def test_weighted_bce_matches_the_formula():
    logits = torch.randn(6, 8, dtype=torch.float64)
    labels = (torch.rand(6, 8) < 0.2).double()
    assert weighted_bce(logits, labels).item() == pytest.approx(_loop(logits, labels), rel=1e-12)


def test_one_sided_batches_and_extreme_logits():
    logits = torch.tensor([[-3.0, 2.0]], dtype=torch.float64)
    only_neg = torch.zeros(1, 2, dtype=torch.float64)
    expected = (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(2.0))) / 2  # β_N = 1
    assert weighted_bce(logits, only_neg).item() == pytest.approx(expected)
    huge = torch.tensor([[1e4, -1e4]])
    assert torch.isfinite(weighted_bce(huge, torch.tensor([[0.0, 1.0]])))


def test_bce_option_and_unknown():
    logits, labels = torch.randn(4, 3), (torch.rand(4, 3) < 0.5).float()
    torch.testing.assert_close(build_loss("bce")(logits, labels),
                               torch.nn.functional.binary_cross_entropy_with_logits(logits,
                                                                                    labels))
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss("focal")
