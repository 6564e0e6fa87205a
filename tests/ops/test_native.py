import torch
import torch.nn.functional as F

import wsloc.ops as ops


def test_torch_pooling_is_reexported_not_rewritten():
    assert ops.max_pool2d is F.max_pool2d and ops.avg_pool2d is F.avg_pool2d
    assert ops.max_unpool2d is F.max_unpool2d and ops.MaxUnpool2d is torch.nn.MaxUnpool2d
    assert ops.adaptive_avg_pool2d is F.adaptive_avg_pool2d


def test_global_pools_and_unpool_roundtrip():
    x = torch.randn(2, 3, 4, 6)
    torch.testing.assert_close(ops.global_avg_pool2d(x), F.adaptive_avg_pool2d(x, 1).flatten(1))
    torch.testing.assert_close(ops.global_max_pool2d(x), F.adaptive_max_pool2d(x, 1).flatten(1))
    torch.testing.assert_close(ops.GlobalAvgPool2d()(x), x.mean((2, 3)))
    x = x.abs() + 0.1  # unpooling fills with zeros, so the maxima must be positive
    y, idx = ops.max_pool2d(x, 2, return_indices=True)
    back = ops.max_unpool2d(y, idx, 2)
    assert torch.equal(ops.max_pool2d(back, 2), y)


def test_public_names():
    for name in ops.__all__:
        assert hasattr(ops, name), name
    assert {"lse_pool2d", "soft_pool3d", "wildcat_pool2d", "stochastic_pool2d",
            "kmax_pool1d"} <= set(ops.__all__)
