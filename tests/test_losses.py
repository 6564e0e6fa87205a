import math

import pytest
import torch

from wsloc.losses import background_penalty, build_loss, weighted_bce


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


def _penalty_loop(maps):
    """The flat-background term cell by cell: each map's lower median (torch.median's), the
    squared depth of every cell below it, averaged over all cells of all maps."""
    total, cells = 0.0, 0
    for plane in maps.reshape(-1, maps.shape[-2] * maps.shape[-1]).tolist():
        median = sorted(plane)[(len(plane) - 1) // 2]
        total += sum((median - v) ** 2 for v in plane if v < median)
        cells += len(plane)
    return total / cells


def test_background_penalty_matches_the_loop():
    maps = torch.randn(3, 4, 6, 5, dtype=torch.float64) * 3
    assert background_penalty(maps).item() == pytest.approx(_penalty_loop(maps), rel=1e-12)
    flat = torch.full((1, 1, 4, 4), -2.0)
    flat[0, 0, 1, 2] = 9.0  # a peak on a flat background costs nothing
    assert background_penalty(flat).item() == 0.0


def test_background_penalty_lifts_only_the_cells_below_the_median():
    maps = torch.tensor([[[[0.0, 1.0, 2.0], [3.0, -4.0, 5.0], [6.0, 7.0, 8.0]]]],
                        requires_grad=True)
    background_penalty(maps).backward()
    grad = maps.grad.flatten().tolist()
    median = 3.0  # held fixed: the median cell itself gets no gradient
    expected = [-2 * (median - v) / 9 if v < median else 0.0
                for v in maps.detach().flatten().tolist()]
    assert grad == pytest.approx(expected)
