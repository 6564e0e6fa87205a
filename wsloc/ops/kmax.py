"""k-max pooling (Kalchbrenner et al., ACL 2014), built on torch.topk."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["kmax_pool1d", "KMaxPool1d"]


def kmax_pool1d(x: Tensor, k: int, dim: int = -1) -> Tensor:
    """Keep the ``k`` largest values along ``dim``, in their original order.

    Args:
        x: a floating tensor of any rank.
        k: how many to keep, in [1, x.shape[dim]].
        dim: the pooled dimension.

    Returns:
        ``x`` with ``x.shape[dim]`` replaced by ``k``. The gradient goes to the kept values.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("`x` must have at least one dimension, got a 0-d tensor")
    if not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"`dim` must be in [{-x.dim()}, {x.dim() - 1}], got {dim!r}")
    size = x.shape[dim]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
        raise ValueError(f"`k` must be an int in [1, {size}] (x.shape[{dim}]), got {k!r}")
    index = x.topk(k, dim=dim).indices.sort(dim=dim).values
    return torch.gather(x, dim, index)


class KMaxPool1d(nn.Module):
    """Module form of :func:`kmax_pool1d`."""

    def __init__(self, k: int, dim: int = -1) -> None:
        super().__init__()
        self.k, self.dim = k, dim

    def forward(self, x: Tensor) -> Tensor:
        return kmax_pool1d(x, self.k, self.dim)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}"
