"""Log-Sum-Exp pooling (ChestX-ray8, Wang et al. 2017; Pinheiro & Collobert 2015)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import (
    LSE,
    accumulation_view,
    check_r,
    check_tensor,
    kernel_ready,
    resolve_backend,
    to_5d,
    window_columns,
    window_geometry,
    window_validity,
)
from wsloc.ops._rows import LinePool

__all__ = ["lse_pool2d", "LSEPool2d"]


def _lse_torch(x: Tensor, r: Tensor | float, geometry) -> Tensor:
    """The PyTorch path: each window (or map) is a line of :class:`LinePool`. float16 and
    bfloat16 are accumulated in float32 and the result cast back, as the kernels do."""
    n, c = x.shape[:2]
    dtype = x.dtype
    x = accumulation_view(x)
    valid = None
    if geometry is None:
        z, out = x.reshape(n * c, -1, 1), ()  # [N·C, H·W, 1]
    else:  # [N·C, K, OH·OW]; padded slots hold -inf and are left out of S by position
        k, s, p, out = geometry
        z = window_columns(x, k, s, p, float("-inf"))
        if any(p):
            valid = window_validity(x.shape[2:], k, s, p, x.device)
    if isinstance(r, Tensor):  # one r per map: [N·C, 1, 1], or [1, 1, 1] when shared
        r = r.to(x.dtype)
        r = (r.reshape(1, -1).expand(n, c).reshape(-1, 1, 1) if r.numel() > 1
             else r.reshape(1, 1, 1))
    return LinePool.apply(z, r, LSE, valid).view(n, c, *out).to(dtype)


def lse_pool2d(
    x: Tensor,
    r: float | Tensor,
    kernel_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    *,
    backend: str = "auto",
) -> Tensor:
    """Log-Sum-Exp pooling over each window S (or the whole map).

    ``lse_r(x) = (1/r) · log((1/|S|) · Σ_{i∈S} exp(r · x_i))``, computed as
    ``m + (1/r) · log((1/|S|) · Σ exp(r · (x_i − m)))`` with ``m = max_S x``, so no finite
    input overflows. r → 0 tends to the mean, r → ∞ to the max; a window of equal values
    returns that value exactly. Padded positions are excluded from S (|S| counts only real
    elements). NaN in a window gives NaN for that window.

    Args:
        x: Tensor[N, C, H, W], float32/float16/bfloat16 (float64 on the torch backend).
        r: sharpness, a positive float, or a Tensor[C] (one r per channel; learnable: its
            gradient is computed).
        kernel_size: window (int or (kh, kw)); ``None`` pools the whole map.
        stride: window step, defaults to ``kernel_size``.
        padding: implicit padding on each side, at most half the window.
        backend: ``"auto"`` (Triton on CUDA, PyTorch otherwise), ``"triton"`` or ``"torch"``.

    Returns:
        Tensor[N, C] when ``kernel_size`` is None, else Tensor[N, C, OH, OW] with
        ``OH = (H + 2·ph − kh) // sh + 1``; same dtype as ``x``.
    """
    check_tensor(x, 4, "[N, C, H, W]")
    r = check_r(r, x.shape[1], x.device)
    if kernel_size is None:
        if stride is not None or padding != 0:
            raise ValueError(
                f"`stride` and `padding` need a `kernel_size`, got stride={stride!r}, "
                f"padding={padding!r} with kernel_size=None (global pooling)"
            )
        geometry = None
    else:
        geometry = window_geometry(x.shape[2:], kernel_size, stride, padding)
    if resolve_backend(backend, x, "lse_pool2d") == "torch":
        return _lse_torch(x, r, geometry)
    r_t = (r.float().reshape(-1) if isinstance(r, Tensor)
           else x.new_full((1,), r, dtype=torch.float32))
    if geometry is None:
        return _custom.global_pool(kernel_ready(x), r_t, LSE)[0]
    k, s, p, out = geometry
    y5, _ = _custom.window_pool(
        to_5d(x), r_t, None, LSE, [1, *k], [1, *s], [0, *p], [1, *out]
    )
    return y5.squeeze(2)


class LSEPool2d(nn.Module):
    """Module form of :func:`lse_pool2d`.

    Args:
        r: sharpness (float). With ``learn_r=True`` it is the starting value of a learned
            per-channel r, kept positive as ``exp(log_r)``; ``num_channels`` is then required.
        kernel_size, stride, padding, backend: as in :func:`lse_pool2d`.
    """

    def __init__(
        self,
        r: float = 10.0,
        kernel_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        *,
        learn_r: bool = False,
        num_channels: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_r(float(r), 1)
        self.kernel_size, self.stride, self.padding, self.backend = (
            kernel_size, stride, padding, backend)
        self.learn_r = learn_r
        if learn_r:
            if not isinstance(num_channels, int) or num_channels < 1:
                raise ValueError(
                    f"`num_channels` must be a positive int when learn_r=True, got {num_channels!r}"
                )
            self.log_r = nn.Parameter(torch.full((num_channels,), math.log(r)))
        else:
            self.r = float(r)

    def forward(self, x: Tensor) -> Tensor:
        r = self.log_r.exp() if self.learn_r else self.r
        return lse_pool2d(x, r, self.kernel_size, self.stride, self.padding, backend=self.backend)

    def extra_repr(self) -> str:
        r = f"learned r per channel ({self.log_r.numel()})" if self.learn_r else f"r={self.r}"
        geom = "global" if self.kernel_size is None else (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")
        return f"{r}, {geom}, backend={self.backend!r}"
