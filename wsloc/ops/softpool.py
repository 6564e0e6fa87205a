"""SoftPool (Stergiou et al., ICCV 2021), per channel, with its exact gradient."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import (
    SOFT,
    accumulation_view,
    check_tensor,
    kernel_ready,
    resolve_backend,
    to_5d,
    window_columns,
    window_geometry,
)
from wsloc.ops._rows import LinePool

__all__ = ["soft_pool1d", "soft_pool2d", "soft_pool3d", "SoftPool1d", "SoftPool2d", "SoftPool3d"]

_LAYOUTS = {1: "[N, C, L]", 2: "[N, C, H, W]", 3: "[N, C, D, H, W]"}


def _tiled_columns(x: Tensor, k: Sequence[int], out: Sequence[int]) -> Tensor:
    """:func:`window_columns` for windows that tile the map (stride = kernel, no padding):
    the same [N·C, prod(k), prod(out)], made by one permuted copy instead of ``F.unfold``
    (im2col is ~3× slower on CPU, and its backward, fold, likewise)."""
    nd = len(k)
    n, c = x.shape[:2]
    z = x[(slice(None), slice(None), *(slice(0, o * kk) for o, kk in zip(out, k)))]
    z = z.reshape(n * c, *(d for o, kk in zip(out, k) for d in (o, kk)))
    order = (0, *range(2, 2 * nd + 1, 2), *range(1, 2 * nd, 2))
    return z.permute(order).reshape(n * c, math.prod(k), math.prod(out))


def _softpool_torch(x: Tensor, geometry) -> Tensor:
    """The PyTorch path: each window (or map) is a line of :class:`LinePool`. float16 and
    bfloat16 are accumulated in float32 and the result cast back, as the kernels do."""
    n, c = x.shape[:2]
    dtype = x.dtype
    x = accumulation_view(x)
    if geometry is None:
        return LinePool.apply(x.reshape(n * c, -1, 1), 1.0, SOFT, None).view(n, c).to(dtype)
    k, s, p, out = geometry
    if k == s and x.numel():
        z = _tiled_columns(x, k, out)
    else:
        z = window_columns(x, k, s, p, 0.0)  # [N·C, K, prod(out)]
    return LinePool.apply(z, 1.0, SOFT, None).view(n, c, *out).to(dtype)


def _soft_pool(x: Tensor, nd: int, kernel_size, stride, backend: str) -> Tensor:
    name = f"soft_pool{nd}d"
    check_tensor(x, nd + 2, _LAYOUTS[nd])
    if kernel_size is None:
        if stride is not None:
            raise ValueError(f"`stride` needs a `kernel_size`, got stride={stride!r} with "
                             "kernel_size=None (global pooling)")
        geometry = None
    else:
        geometry = window_geometry(x.shape[2:], kernel_size, stride, 0)
    if resolve_backend(backend, x, name) == "torch":
        return _softpool_torch(x, geometry)
    one = x.new_ones(1, dtype=torch.float32)
    if geometry is None:
        return _custom.global_pool(kernel_ready(x), one, SOFT)[0]
    k, s, _, out = geometry
    lead = [1] * (3 - nd)
    y5, _ = _custom.window_pool(
        to_5d(x), one, None, SOFT, [*lead, *k], [*lead, *s], [0, 0, 0], [*lead, *out]
    )
    return y5.reshape(*y5.shape[:2], *out)


_DOC = """SoftPool over each window R (or the whole map), per channel.

    ``y = Σ_{i∈R} w_i · x_i`` with ``w = softmax_R(x)``, computed with the window max
    subtracted, so no finite input overflows (the official code overflows above x ≈ 88 in
    float32); a window of equal values returns that value. The gradient is exact:
    ``∂y/∂x_i = w_i · (1 + x_i − y)``. NaN in a window gives NaN for that window.

    Args:
        x: Tensor<layout>, float32/float16/bfloat16 (float64 on the torch backend).
        kernel_size: window (int or <nd>-tuple); ``None`` pools the whole map to [N, C].
        stride: window step, defaults to ``kernel_size`` (any stride works, including
            stride ≠ kernel).
        backend: ``"auto"`` (Triton on CUDA, PyTorch otherwise), ``"triton"`` or ``"torch"``.

    Returns:
        Tensor[N, C] when ``kernel_size`` is None, else the pooled map
        (``out = (in − k) // s + 1`` per dim), in ``x``'s dtype.
    """


def soft_pool1d(x: Tensor, kernel_size: int | Sequence[int] | None = None,
                stride: int | Sequence[int] | None = None, *, backend: str = "auto") -> Tensor:
    return _soft_pool(x, 1, kernel_size, stride, backend)


def soft_pool2d(x: Tensor, kernel_size: int | Sequence[int] | None = None,
                stride: int | Sequence[int] | None = None, *, backend: str = "auto") -> Tensor:
    return _soft_pool(x, 2, kernel_size, stride, backend)


def soft_pool3d(x: Tensor, kernel_size: int | Sequence[int] | None = None,
                stride: int | Sequence[int] | None = None, *, backend: str = "auto") -> Tensor:
    return _soft_pool(x, 3, kernel_size, stride, backend)


for _nd, _fn in ((1, soft_pool1d), (2, soft_pool2d), (3, soft_pool3d)):
    _fn.__doc__ = _DOC.replace("<layout>", _LAYOUTS[_nd]).replace("<nd>", str(_nd))


class _SoftPoolNd(nn.Module):
    _fn = staticmethod(soft_pool2d)

    def __init__(self, kernel_size=None, stride=None, *, backend: str = "auto") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.backend = kernel_size, stride, backend

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x, self.kernel_size, self.stride, backend=self.backend)

    def extra_repr(self) -> str:
        geom = "global" if self.kernel_size is None else (
            f"kernel_size={self.kernel_size}, stride={self.stride}")
        return f"{geom}, backend={self.backend!r}"


class SoftPool1d(_SoftPoolNd):
    """Module form of :func:`soft_pool1d`."""

    _fn = staticmethod(soft_pool1d)


class SoftPool2d(_SoftPoolNd):
    """Module form of :func:`soft_pool2d`."""

    _fn = staticmethod(soft_pool2d)


class SoftPool3d(_SoftPoolNd):
    """Module form of :func:`soft_pool3d`."""

    _fn = staticmethod(soft_pool3d)
