"""WILDCAT spatial pooling (Durand et al., CVPR 2017): k-max plus alpha times k-min.

Built on k-max pooling's selection (kmax.py): the k-max term is the mean of
``kmax_pool2d(x, kmax)``'s values and the k-min term that of ``-kmax_pool2d(-x, kmin)``'s,
by the same rule and, on CUDA, the same kernel (one load of each map serves both terms).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import (
    TRITON_MAX_POSITIONS,
    check_tensor,
    kernel_ready,
    resolve_backend,
    resolve_k,
)
from wsloc.ops.kmax import select_lines

__all__ = ["wildcat_pool2d", "WildcatPool2d"]


def _masked_mean(values: Tensor, drop: Tensor | None, k: int, acc: torch.dtype) -> Tensor:
    if drop is not None:
        values = torch.where(drop, 0.0, values)
    return values.sum(-1, dtype=acc) / k


class _WildcatLines(torch.autograd.Function):
    """WILDCAT over the lines of ``z`` [..., L] (the PyTorch path): the selections of
    :func:`~wsloc.ops.kmax.select_lines`, sums in float32 for float16/bfloat16, and a
    backward that scatters g/kmax and alpha·g/kmin onto the selected positions. Without a
    gradient to compute, two unsorted ``topk`` give the value (ties do not change it)."""

    @staticmethod
    def forward(ctx, z: Tensor, kmax: int, kmin: int, alpha: float) -> Tensor:
        acc = torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype
        if not ctx.needs_input_grad[0]:
            # no gradient: the value does not depend on which of tied positions is taken
            y = z.topk(kmax, dim=-1, sorted=False).values.sum(-1, dtype=acc) / kmax
            if kmin:
                bottom = z.topk(kmin, dim=-1, largest=False, sorted=False).values
                y = y + alpha * bottom.sum(-1, dtype=acc) / kmin
            return y.to(z.dtype)
        values, index, drop = select_lines(z, kmax)
        y = _masked_mean(values, drop, kmax, acc)
        saved = [index, drop]
        if kmin:
            # a line holding NaN has it among its top candidates (NaN ranks largest); its
            # k-min, the k-max of -z, takes NaN first, which topk(largest=False) would not
            nan_lines = values.isnan().any(-1)
            values, index, drop = select_lines(z, kmin, largest=False, force=nan_lines)
            y = y + alpha * _masked_mean(values, drop, kmin, acc)
            saved += [index, drop]
        ctx.save_for_backward(*saved)
        ctx.args = (z.shape, z.dtype, kmax, kmin, alpha)
        return y.to(z.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor):
        shape, dtype, kmax, kmin, alpha = ctx.args
        saved = ctx.saved_tensors
        g = gy.unsqueeze(-1).to(dtype)
        dz = torch.zeros(shape, dtype=dtype, device=gy.device)
        terms = [(*saved[:2], 1.0 / kmax)] + ([(*saved[2:], alpha / kmin)] if kmin else [])
        for index, drop, w in terms:
            src = (g * w).expand(index.shape)
            dz.scatter_add_(-1, index, src if drop is None else torch.where(drop, 0.0, src))
        return dz, None, None, None


def wildcat_pool2d(
    x: Tensor, kmax: int | float, kmin: int | float = 0, alpha: float = 1.0, *,
    backend: str = "auto",
) -> Tensor:
    """WILDCAT global pooling: mean of the ``kmax`` highest plus ``alpha`` times the mean of
    the ``kmin`` lowest values of each map.

    ``y = mean(kmax_pool2d(x, kmax).values) + alpha · mean(-kmax_pool2d(-x, kmin).values)``:
    the positions are selected by k-max pooling's rule (:func:`~wsloc.ops.kmax_pool2d`), on
    both backends alike.

    Args:
        x: Tensor[N, C, H, W].
        kmax: an int count in [1, H·W], or a float fraction of H·W in (0, 1]
            (rounded, at least 1).
        kmin: as ``kmax``, and 0 (or 0.0) drops the k-min term.
        alpha: weight of the k-min term.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``. The Triton kernel holds each map
            in one program and takes maps of up to 16384 positions; ``"auto"`` uses torch
            beyond that.

    Returns:
        Tensor[N, C]. The gradient goes to the selected positions (1/kmax each, alpha/kmin
        for the lowest; a position in both gets both). Ties at the k-th value go to the
        earliest positions (row-major), on both backends: a map of equal values passes its
        gradient to its first kmax (and first kmin) positions. NaN ranks above +inf, as in
        ``torch.sort``, so it is selected by both terms (the k-min term is the k-max of
        -x): a map holding NaN gives NaN.
    """
    check_tensor(x, 4, "[N, C, H, W]")
    positions = x.shape[2] * x.shape[3]
    kmax = resolve_k(kmax, positions, "kmax", allow_zero=False)
    kmin = resolve_k(kmin, positions, "kmin", allow_zero=True)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"`alpha` must be a float, got {alpha!r}")
    be = resolve_backend(backend, x, "wildcat_pool2d")
    if be == "triton" and positions > TRITON_MAX_POSITIONS:
        if backend == "triton":
            raise ValueError(f"wildcat_pool2d: backend='triton' takes maps of at most "
                             f"{TRITON_MAX_POSITIONS} positions, got H·W = {positions}")
        be = "torch"
    if be == "torch":
        return _WildcatLines.apply(x.flatten(2), kmax, kmin, float(alpha))
    return _custom.wildcat_pool(kernel_ready(x), kmax, kmin, float(alpha))[0]


class WildcatPool2d(nn.Module):
    """Module form of :func:`wildcat_pool2d`."""

    def __init__(self, kmax: int | float = 1, kmin: int | float = 0, alpha: float = 1.0, *,
                 backend: str = "auto") -> None:
        super().__init__()
        self.kmax, self.kmin, self.alpha, self.backend = kmax, kmin, alpha, backend

    def forward(self, x: Tensor) -> Tensor:
        return wildcat_pool2d(x, self.kmax, self.kmin, self.alpha, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kmax={self.kmax}, kmin={self.kmin}, alpha={self.alpha}, backend={self.backend!r}"
