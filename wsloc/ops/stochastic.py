"""Stochastic pooling (Zeiler & Fergus, ICLR 2013)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import (
    STOCH_EVAL,
    STOCH_TRAIN,
    accumulation_view,
    check_tensor,
    resolve_backend,
    to_5d,
    window_columns,
    window_geometry,
)
from wsloc.ops._rows import BLOCK_ELEMENTS

__all__ = ["stochastic_pool2d", "StochasticPool2d"]


def _negative_error(x: Tensor) -> ValueError:
    return ValueError(
        f"stochastic_pool2d needs non-negative inputs (p_i = a_i / Σa), got min(x) = "
        f"{x.min().item()}"
    )


def _slots(t: Tensor, k, s, out):
    """Slot (a, b) of every window as a strided view [..., OH, OW] of ``t``, for each
    offset (a, b) in the window: summing them pools without an unfold copy."""
    (kh, kw), (sh, sw), (oh, ow) = k, s, out
    for a in range(kh):
        for b in range(kw):
            yield t[..., a: a + (oh - 1) * sh + 1: sh, b: b + (ow - 1) * sw + 1: sw]


def _sample_blocks(shape: torch.Size, compiling: bool):
    """(n, c) slices of [N, C, H, W] holding about BLOCK_ELEMENTS elements each."""
    n_all, c_all = shape[:2]
    plane = shape[2] * shape[3]
    if compiling:
        yield slice(None), slice(None)
        return
    planes = max(1, BLOCK_ELEMENTS // plane)
    if planes >= c_all:
        step = planes // c_all
        for n0 in range(0, n_all, step):
            yield slice(n0, n0 + step), slice(None)
    else:
        for n0 in range(n_all):
            for c0 in range(0, c_all, planes):
                yield slice(n0, n0 + 1), slice(c0, c0 + planes)


class _StochasticEval(torch.autograd.Function):
    """Eval-mode stochastic pooling on the PyTorch path: ``y = Σa² / Σa`` per window, with a
    hand-written backward ``dy/da_i = (2·a_i − y) / Σa`` (an all-zero window: 1/K, as average
    pooling's).

    The window sums add the K window slots as strided views (no unfold, no avg_pool). The
    input is processed in cache-sized blocks of planes, and the non-negativity check is the
    first pass over each block, so it reads the block into the cache for the sums instead of
    costing a pass of its own. Saves the input, Σa and y.
    """

    @staticmethod
    def forward(ctx, x: Tensor, k, s, out) -> Tensor:
        compiling = torch.compiler.is_compiling()
        total = x.new_empty((*x.shape[:2], *out))
        square = torch.empty_like(total)
        for n, c in _sample_blocks(x.shape, compiling):
            xb, tb, qb = x[n, c], total[n, c], square[n, c]
            if not compiling and bool(xb.amin() < 0):
                raise _negative_error(x)
            slots = _slots(xb, k, s, out)
            first = next(slots)
            tb.copy_(first)
            torch.mul(first, first, out=qb)
            for v in slots:
                tb.add_(v)
                qb.addcmul_(v, v)
        y = square.div_(total).masked_fill_(total == 0, 0.0)  # NaN in a window stays NaN
        ctx.save_for_backward(x, total, y)
        ctx.geometry = (k, s, out)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor):
        x, total, y = ctx.saved_tensors
        k, s, out = ctx.geometry
        zero = total == 0
        a = torch.div(gy, total).masked_fill_(zero, 0.0)
        b = torch.where(zero, gy / -(k[0] * k[1]), a * y)
        dx = torch.zeros_like(x)
        for dv, xv in zip(_slots(dx, k, s, out), _slots(x, k, s, out)):
            dv.addcmul_(xv, a, value=2.0).sub_(b)  # Σ over the windows holding a_i
        return dx, None, None, None


def _stochastic_torch(x: Tensor, u: Tensor | None, k, s, out=None) -> Tensor:
    """The PyTorch path (and the kernels' oracle). Eval checks x >= 0 itself (in its first
    pass over each block); training windows are stacked position-first."""
    if u is None:  # eval: Σ p·a = Σa² / Σa; an all-zero window gives 0
        return _StochasticEval.apply(accumulation_view(x), k, s, out).to(x.dtype)
    w = window_columns(x, k, s, (0, 0), 0.0).movedim(1, 0)  # [K, N·C, OH·OW]
    total = w.sum(0)
    # training: the first element whose running sum passes u·Σa (P = a_i / Σa)
    wd = w.detach()
    taken = wd.cumsum(0) > u.reshape(total.shape) * total.detach()
    positions = torch.arange(w.shape[0], device=x.device).view(-1, *([1] * (w.dim() - 1)))
    last_nz = torch.where(wd > 0, positions, -1).amax(0)
    fallback = torch.where(last_nz >= 0, last_nz, w.shape[0] - 1)
    sel = torch.where(taken.any(0), taken.to(torch.uint8).argmax(0), fallback)
    y = w.gather(0, sel.unsqueeze(0)).squeeze(0)
    return torch.where(torch.isnan(total), total, y)


def stochastic_pool2d(
    x: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    training: bool = True,
    *,
    backend: str = "auto",
) -> Tensor:
    """Stochastic pooling over each window R of a non-negative map.

    In training, one activation per window is sampled with ``p_i = a_i / Σ_R a`` and passed
    on (the gradient goes to it alone). In eval, the output is the expectation
    ``Σ_R p_i · a_i``. Sampling draws one uniform number per output from torch's RNG, so
    ``torch.manual_seed`` makes it reproducible, and both backends pick the same elements for
    the same seed. An all-zero window outputs 0 (in eval its gradient is that of average
    pooling). NaN in a window gives NaN.

    Args:
        x: Tensor[N, C, H, W] with ``x >= 0`` (e.g. after a ReLU).
        kernel_size: window (int or (kh, kw)).
        stride: window step, defaults to ``kernel_size``.
        training: sample (True) or take the expectation (False).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        Tensor[N, C, OH, OW], ``OH = (H − kh) // sh + 1``.
    """
    check_tensor(x, 4, "[N, C, H, W]")
    k, s, _, out = window_geometry(x.shape[2:], kernel_size, stride, 0)
    be = resolve_backend(backend, x, "stochastic_pool2d")
    # the eval PyTorch path checks x >= 0 within its own first pass
    checked_in_pass = not training and be == "torch"
    if not (checked_in_pass or torch.compiler.is_compiling()) and bool(x.amin() < 0):
        raise _negative_error(x)
    u = torch.rand((x.shape[0], x.shape[1], *out), device=x.device) if training else None
    if be == "torch":
        return _stochastic_torch(x, u, k, s, out).reshape(x.shape[0], x.shape[1], *out)
    one = x.new_ones(1, dtype=torch.float32)
    mode = STOCH_TRAIN if training else STOCH_EVAL
    y5, _ = _custom.window_pool(
        to_5d(x), one, None if u is None else u.reshape(-1), mode, [1, *k], [1, *s],
        [0, 0, 0], [1, *out],
    )
    return y5.squeeze(2)


class StochasticPool2d(nn.Module):
    """Module form of :func:`stochastic_pool2d`; samples in ``train()`` mode, takes the
    expectation in ``eval()`` mode."""

    def __init__(self, kernel_size: int | Sequence[int], stride=None, *,
                 backend: str = "auto") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.backend = kernel_size, stride, backend

    def forward(self, x: Tensor) -> Tensor:
        return stochastic_pool2d(x, self.kernel_size, self.stride, self.training,
                                 backend=self.backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, backend={self.backend!r}"
