"""The Triton path's autograd layer: custom ops registered with ``torch.library``.

Each op has a fake (meta) implementation so ``torch.compile`` traces it without a graph
break, and ``register_autograd`` ties forward to backward. The kernels module is imported
inside the op bodies, so registering these ops does not import Triton.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsloc.ops._common import LSE, empty_like_layout

# ----------------------------------------------------------------------------- windowed


@torch.library.custom_op("wsloc::window_pool", mutates_args=())
def window_pool(
    x5: Tensor, r: Tensor, u: Tensor | None, mode: int,
    kernel: list[int], stride: list[int], padding: list[int], out_size: list[int],
) -> tuple[Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.window_forward(x5, r, u, mode, kernel, stride, padding, out_size)


@window_pool.register_fake
def _(x5, r, u, mode, kernel, stride, padding, out_size):
    y5 = empty_like_layout(x5, (*x5.shape[:2], *out_size))
    aux = empty_like_layout(x5, y5.shape, torch.float32) if mode != LSE else x5.new_empty(
        0, dtype=torch.float32)
    return y5, aux


@torch.library.custom_op("wsloc::window_pool_backward", mutates_args=())
def window_pool_backward(
    g5: Tensor, x5: Tensor, y5: Tensor, aux5: Tensor, r: Tensor, mode: int,
    kernel: list[int], stride: list[int], padding: list[int], need_dr: bool,
) -> tuple[Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.window_backward(g5, x5, y5, aux5, r, mode, kernel, stride, padding, need_dr)


@window_pool_backward.register_fake
def _(g5, x5, y5, aux5, r, mode, kernel, stride, padding, need_dr):
    dr = x5.new_empty(x5.shape[1] if need_dr else 0, dtype=torch.float32)
    return empty_like_layout(x5, x5.shape), dr


def _window_setup(ctx, inputs, output):
    x5, r, _u, mode, kernel, stride, padding, _out = inputs
    y5, aux5 = output
    ctx.save_for_backward(x5, r, y5, aux5)
    ctx.geometry = (mode, kernel, stride, padding)


def _window_grad(ctx, gy, _gaux):
    x5, r, y5, aux5 = ctx.saved_tensors
    mode, kernel, stride, padding = ctx.geometry
    need_dr = mode == LSE and ctx.needs_input_grad[1]
    dx, dr = window_pool_backward(gy, x5, y5, aux5, r, mode, kernel, stride, padding, need_dr)
    return dx, _r_grad(dr, r) if need_dr else None, None, None, None, None, None, None


window_pool.register_autograd(_window_grad, setup_context=_window_setup)

# ------------------------------------------------------------------------------ global


@torch.library.custom_op("wsloc::global_pool", mutates_args=())
def global_pool(x: Tensor, r: Tensor, mode: int) -> tuple[Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.global_forward(x, r, mode)


@global_pool.register_fake
def _(x, r, mode):
    n, c = x.shape[:2]
    return x.new_empty((n, c)), x.new_empty((n, c) if mode != LSE else 0, dtype=torch.float32)


@torch.library.custom_op("wsloc::global_pool_backward", mutates_args=())
def global_pool_backward(
    g: Tensor, x: Tensor, y: Tensor, aux: Tensor, r: Tensor, mode: int, need_dr: bool
) -> tuple[Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.global_backward(g, x, y, aux, r, mode, need_dr)


@global_pool_backward.register_fake
def _(g, x, y, aux, r, mode, need_dr):
    return torch.empty_like(x), x.new_empty(x.shape[1] if need_dr else 0, dtype=torch.float32)


def _global_setup(ctx, inputs, output):
    x, r, mode = inputs
    y, aux = output
    ctx.save_for_backward(x, r, y, aux)
    ctx.mode = mode


def _global_grad(ctx, gy, _gaux):
    x, r, y, aux = ctx.saved_tensors
    need_dr = ctx.mode == LSE and ctx.needs_input_grad[1]
    dx, dr = global_pool_backward(gy, x, y, aux, r, ctx.mode, need_dr)
    return dx, _r_grad(dr, r) if need_dr else None, None


global_pool.register_autograd(_global_grad, setup_context=_global_setup)


def _r_grad(dr: Tensor, r: Tensor) -> Tensor:
    """dy/dr = Σ g·p·(x − y) / r per channel; summed over channels for a shared r."""
    per_channel = dr / r.float()
    return (per_channel if r.numel() > 1 else per_channel.sum().reshape(r.shape)).to(r.dtype)


# ------------------------------------------------------------------------- k-max, WILDCAT
# Both run on the one k-max kernel family (see _kernels.py); stats: [N, C, 4] int32.


@torch.library.custom_op("wsloc::kmax_pool", mutates_args=())
def kmax_pool(x: Tensor, lengths: Tensor | None, ks: Tensor | None,
              k: int) -> tuple[Tensor, Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.kmax_forward(x, lengths, ks, k)


@kmax_pool.register_fake
def _(x, lengths, ks, k):
    n, c = x.shape[:2]
    return (x.new_empty((n, c, k)), x.new_empty((n, c, k), dtype=torch.int64),
            x.new_empty((n, c, 4), dtype=torch.int32))


@torch.library.custom_op("wsloc::kmax_pool_backward", mutates_args=())
def kmax_pool_backward(g: Tensor, x: Tensor, lengths: Tensor | None, stats: Tensor) -> Tensor:
    from wsloc.ops import _kernels

    return _kernels.kmax_backward(g, x, lengths, stats)


@kmax_pool_backward.register_fake
def _(g, x, lengths, stats):
    return empty_like_layout(x, x.shape)


def _kmax_setup(ctx, inputs, output):
    x, lengths, _ks, _k = inputs
    ctx.save_for_backward(x, lengths, output[2])


def _kmax_grad(ctx, gv, _gi, _gs):
    x, lengths, stats = ctx.saved_tensors
    return kmax_pool_backward(gv, x, lengths, stats), None, None, None


kmax_pool.register_autograd(_kmax_grad, setup_context=_kmax_setup)


@torch.library.custom_op("wsloc::wildcat_pool", mutates_args=())
def wildcat_pool(x: Tensor, kmax: int, kmin: int, alpha: float) -> tuple[Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.wildcat_forward(x, kmax, kmin, alpha)


@wildcat_pool.register_fake
def _(x, kmax, kmin, alpha):
    n, c = x.shape[:2]
    return x.new_empty((n, c)), x.new_empty((n, c, 4), dtype=torch.int32)


@torch.library.custom_op("wsloc::wildcat_pool_backward", mutates_args=())
def wildcat_pool_backward(
    g: Tensor, x: Tensor, stats: Tensor, kmax: int, kmin: int, alpha: float
) -> Tensor:
    from wsloc.ops import _kernels

    return _kernels.wildcat_backward(g, x, stats, kmax, kmin, alpha)


@wildcat_pool_backward.register_fake
def _(g, x, stats, kmax, kmin, alpha):
    return empty_like_layout(x, x.shape)


def _wildcat_setup(ctx, inputs, output):
    x, kmax, kmin, alpha = inputs
    ctx.save_for_backward(x, output[1])
    ctx.args = (kmax, kmin, alpha)


def _wildcat_grad(ctx, gy, _gstats):
    x, stats = ctx.saved_tensors
    return wildcat_pool_backward(gy, x, stats, *ctx.args), None, None, None


wildcat_pool.register_autograd(_wildcat_grad, setup_context=_wildcat_setup)

# ------------------------------------------------------------------------ sort pooling


@torch.library.custom_op("wsloc::sort_window_pool", mutates_args=())
def sort_window_pool(
    x: Tensor, w: Tensor, kernel: list[int], stride: list[int], out_size: list[int]
) -> Tensor:
    from wsloc.ops import _kernels

    return _kernels.sort_window_forward(x, w, kernel, stride, out_size)


@sort_window_pool.register_fake
def _(x, w, kernel, stride, out_size):
    return empty_like_layout(x, (*x.shape[:2], *out_size))


@torch.library.custom_op("wsloc::sort_window_pool_backward", mutates_args=())
def sort_window_pool_backward(
    g: Tensor, x: Tensor, w: Tensor, kernel: list[int], stride: list[int], need_dx: bool,
    need_dw: bool,
) -> tuple[Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.sort_window_backward(g, x, w, kernel, stride, need_dx, need_dw)


@sort_window_pool_backward.register_fake
def _(g, x, w, kernel, stride, need_dx, need_dw):
    dx = empty_like_layout(x, x.shape) if need_dx else x.new_empty(0)
    return dx, w.new_empty(w.shape if need_dw else (0,))


def _sort_window_setup(ctx, inputs, output):
    x, w, kernel, stride, _out = inputs
    ctx.save_for_backward(x, w)
    ctx.geometry = (kernel, stride)


def _sort_window_grad(ctx, gy):
    x, w = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[:2]
    dx, dw = sort_window_pool_backward(gy, x, w, *ctx.geometry, need_dx, need_dw)
    return dx if need_dx else None, dw if need_dw else None, None, None, None


sort_window_pool.register_autograd(_sort_window_grad, setup_context=_sort_window_setup)


@torch.library.custom_op("wsloc::sort_global_pool", mutates_args=())
def sort_global_pool(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.sort_global_forward(x, w)


@sort_global_pool.register_fake
def _(x, w):
    n, c = x.shape[:2]
    k = w.shape[1]
    return (x.new_empty((n, c)), x.new_empty((n, c, k), dtype=torch.int32),
            x.new_empty((n, c, k), dtype=torch.float32))


@torch.library.custom_op("wsloc::sort_global_pool_backward", mutates_args=())
def sort_global_pool_backward(
    g: Tensor, pos: Tensor, vals: Tensor, w: Tensor, shape: list[int], channels_last: bool,
    need_dx: bool, need_dw: bool,
) -> tuple[Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.sort_global_backward(g, pos, vals, w, shape, channels_last, need_dx,
                                         need_dw)


@sort_global_pool_backward.register_fake
def _(g, pos, vals, w, shape, channels_last, need_dx, need_dw):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dx = (torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=fmt) if need_dx
          else g.new_empty(0))
    return dx, w.new_empty(w.shape if need_dw else (0,))


def _sort_global_setup(ctx, inputs, output):
    x, w = inputs
    _y, pos, vals = output
    ctx.save_for_backward(pos, vals, w)  # not x: the top ranks' positions and values suffice
    ctx.layout = (list(x.shape), x.shape[1] > 1 and x.stride(1) == 1)


def _sort_global_grad(ctx, gy, _gpos, _gvals):
    pos, vals, w = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[:2]
    dx, dw = sort_global_pool_backward(gy, pos, vals, w, *ctx.layout, need_dx, need_dw)
    return dx if need_dx else None, dw if need_dw else None


sort_global_pool.register_autograd(_sort_global_grad, setup_context=_sort_global_setup)
