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


# ----------------------------------------------------------------------------- WILDCAT


@torch.library.custom_op("wsloc::wildcat_pool", mutates_args=())
def wildcat_pool(x: Tensor, kmax: int, kmin: int, alpha: float) -> tuple[Tensor, Tensor]:
    from wsloc.ops import _kernels

    return _kernels.wildcat_forward(x, kmax, kmin, alpha)


@wildcat_pool.register_fake
def _(x, kmax, kmin, alpha):
    n, c = x.shape[:2]
    return x.new_empty((n, c)), x.new_empty((n, c, 6), dtype=torch.float32)


@torch.library.custom_op("wsloc::wildcat_pool_backward", mutates_args=())
def wildcat_pool_backward(
    g: Tensor, x: Tensor, stats: Tensor, kmax: int, kmin: int, alpha: float
) -> Tensor:
    from wsloc.ops import _kernels

    return _kernels.wildcat_backward(g, x, stats, kmax, kmin, alpha)


@wildcat_pool_backward.register_fake
def _(g, x, stats, kmax, kmin, alpha):
    return torch.empty_like(x)


def _wildcat_setup(ctx, inputs, output):
    x, kmax, kmin, alpha = inputs
    ctx.save_for_backward(x, output[1])
    ctx.args = (kmax, kmin, alpha)


def _wildcat_grad(ctx, gy, _gstats):
    x, stats = ctx.saved_tensors
    return wildcat_pool_backward(gy, x, stats, *ctx.args), None, None, None


wildcat_pool.register_autograd(_wildcat_grad, setup_context=_wildcat_setup)
