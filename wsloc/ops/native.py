"""Torch's own pooling, re-exported so that all pooling in wsloc has one API.

These run torch's native kernels; wsloc does not rewrite them. Global average and max
pooling are added as functions returning [N, C] and modules, to match :func:`lse_pool2d`.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
    MaxUnpool1d,
    MaxUnpool2d,
    MaxUnpool3d,
)
from torch.nn.functional import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    max_unpool1d,
    max_unpool2d,
    max_unpool3d,
)

from wsloc.ops._common import check_tensor

__all__ = [
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_unpool1d", "max_unpool2d",
    "max_unpool3d", "global_avg_pool2d", "global_max_pool2d",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d",
    "GlobalAvgPool2d", "GlobalMaxPool2d",
]


def global_avg_pool2d(x: Tensor) -> Tensor:
    """Mean over H and W: Tensor[N, C, H, W] → Tensor[N, C]."""
    return check_tensor(x, 4, "[N, C, H, W]").mean((2, 3))


def global_max_pool2d(x: Tensor) -> Tensor:
    """Max over H and W: Tensor[N, C, H, W] → Tensor[N, C] (gradient split among ties)."""
    return check_tensor(x, 4, "[N, C, H, W]").amax((2, 3))


class GlobalAvgPool2d(nn.Module):
    """Module form of :func:`global_avg_pool2d`."""

    def forward(self, x: Tensor) -> Tensor:
        return global_avg_pool2d(x)


class GlobalMaxPool2d(nn.Module):
    """Module form of :func:`global_max_pool2d`."""

    def forward(self, x: Tensor) -> Tensor:
        return global_max_pool2d(x)
