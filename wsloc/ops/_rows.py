"""The PyTorch path of LSE and SoftPool: pooling along the middle axis of [B, K, I].

Each pooled window is a line along K: whole maps are [N·C, H·W, 1]; windows come from
``F.unfold`` as [N·C, K, L], so reducing over K runs over contiguous rows. Lines are
processed in blocks of about 256K elements, so the several passes the stable formulas need
(max, shift, exp, sums) run on data in the CPU's cache, with in-place ops and no full-size
temporaries: this is what keeps the stable form as fast as the composed one-line formulas
on CPU. The backward is written out (exact gradients; it saves the input, the output and
one value per line), and gradcheck tests it.

This is the CPU path, the fallback when Triton cannot run, and the oracle of the kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsloc.ops._common import LSE, SOFT

BLOCK_ELEMENTS = 1 << 18
NEG_INF = float("-inf")


def _blocks(shape: torch.Size, compiling: bool):
    """(b, i) slices of [B, K, I] holding about BLOCK_ELEMENTS elements each."""
    b_all, k, i_all = shape
    if compiling:
        yield slice(None), slice(None)
        return
    if k * i_all <= BLOCK_ELEMENTS:
        step = max(1, BLOCK_ELEMENTS // (k * i_all))
        for b0 in range(0, b_all, step):
            yield slice(b0, b0 + step), slice(None)
    else:
        step = max(1, BLOCK_ELEMENTS // k)
        for b0 in range(b_all):
            for i0 in range(0, i_all, step):
                yield slice(b0, b0 + 1), slice(i0, i0 + step)


def _at(t: Tensor | float, b: slice, i: slice):
    """Slice a per-line tensor [B or 1, 1, I or 1] (or pass a float) like a block."""
    if not isinstance(t, Tensor):
        return t
    return t[b if t.shape[0] > 1 else slice(None), :, i if t.shape[2] > 1 else slice(None)]


def _workspace(z: Tensor, compiling: bool) -> tuple[Tensor, Tensor] | None:
    """Two block-sized buffers reused by every block (fresh ~1 MB temporaries would each be
    a new mmap with page faults on CPU). None while compiling: plain ops trace better."""
    if compiling:
        return None
    b_all, k, i_all = z.shape
    shape = ((min(b_all, max(1, BLOCK_ELEMENTS // (k * i_all))), k, i_all)
             if k * i_all <= BLOCK_ELEMENTS else (1, k, min(i_all, max(1, BLOCK_ELEMENTS // k))))
    return z.new_empty(shape), z.new_empty(shape)


def _buf(ws: tuple[Tensor, Tensor] | None, j: int, like: Tensor) -> Tensor | None:
    """Workspace ``j`` cut to the block's shape (None when there is no workspace)."""
    if ws is None:
        return None
    return ws[j][: like.shape[0], :, : like.shape[2]]


def _count(valid: Tensor | None, z: Tensor) -> Tensor | int:
    """|S| of each line: its real (unpadded) slots, known by position, never by value."""
    return z.shape[1] if valid is None else valid.sum(1, keepdim=True).to(z.dtype)


def _lse_lines(z: Tensor, r: Tensor | float, valid: Tensor | None, ws) -> Tensor:
    """LSE over K of a [b, K, i] block; slots where ``valid`` [1, K, i] is False are padding
    (they hold -inf, so they add nothing to Σ exp) and are not counted in |S|."""
    m = z.amax(1, keepdim=True)
    t = torch.sub(z, m, out=_buf(ws, 0, z)).mul_(r)  # r·(x − m) <= 0
    cnt = _count(valid, z)
    mean = torch.exp(t, out=_buf(ws, 1, z)).sum(1, keepdim=True) / cnt
    log_mean = torch.log(mean)
    # Where mean(exp t) > 1/2, log(Σe) − log|S| cancels to an absolute error of ~eps/r: for
    # r < 1 take log1p of the mean of expm1(t) there instead (for r >= 1, eps/r is below
    # float32's resolution anyway). Eager mode skips expm1 when no line needs it.
    if isinstance(r, Tensor):
        near_one = (mean > 0.5) & (r < 1.0)
    elif r < 1.0:
        near_one = mean > 0.5
    else:
        return m + log_mean / r
    if ws is None or bool(near_one.any()):
        em1 = torch.expm1(t, out=_buf(ws, 1, z))
        if valid is not None:  # a padded slot adds 0; a real -inf adds expm1(-inf) = -1
            em1 = em1.masked_fill(~valid, 0.0)
        log_mean = torch.where(near_one, torch.log1p(em1.sum(1, keepdim=True) / cnt), log_mean)
    return m + log_mean / r


def _soft_lines(z: Tensor, ws) -> tuple[Tensor, Tensor]:
    """SoftPool over K: ``m + Σ e·(x − m) / Σ e``, and the log-normaliser ``m + log Σ e``."""
    m = z.amax(1, keepdim=True)
    d = torch.sub(z, m, out=_buf(ws, 0, z))
    e = torch.exp(d, out=_buf(ws, 1, z))
    s = e.sum(1, keepdim=True)
    return m + d.mul_(e).sum(1, keepdim=True) / s, m + torch.log(s)


class LinePool(torch.autograd.Function):
    """Pooling over the middle axis of ``z`` [B, K, I] with an exact, hand-written backward.

    ``r``: a float, or a tensor [B or 1, 1, I or 1] with one r per line (LSE); ``mode``: LSE
    or SOFT; ``valid``: None (no padding) or a bool tensor [1, K, I] that is False at padded
    slots (LSE; those slots hold -inf). Padding is known by position, so a genuine -inf in
    the input still counts in |S|. Returns [B, 1, I].
    """

    @staticmethod
    def forward(ctx, z: Tensor, r: Tensor | float, mode: int, valid: Tensor | None) -> Tensor:
        compiling = torch.compiler.is_compiling()
        y = z.new_empty(z.shape[0], 1, z.shape[2])
        aux = torch.empty_like(y) if mode == SOFT else None
        ws = _workspace(z, compiling)
        for b, i in _blocks(z.shape, compiling):
            if mode == LSE:
                y[b, :, i] = _lse_lines(z[b, :, i], _at(r, b, i), _cols(valid, i), ws)
            else:
                y[b, :, i], aux[b, :, i] = _soft_lines(z[b, :, i], ws)
        r_is_tensor = isinstance(r, Tensor)
        ctx.args = (mode, valid is not None, r_is_tensor, None if r_is_tensor else r)
        ctx.save_for_backward(z, y, aux if aux is not None else y, r if r_is_tensor else y,
                              valid if valid is not None else y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor):
        z, y, aux, r_t, valid = ctx.saved_tensors
        mode, padded, r_is_tensor, r_float = ctx.args
        valid = valid if padded else None
        r = r_t if r_is_tensor else r_float
        need_dr = mode == LSE and r_is_tensor and ctx.needs_input_grad[1]
        compiling = torch.compiler.is_compiling()
        dz = torch.empty_like(z)
        dr = torch.empty_like(y) if need_dr else None
        ws = _workspace(z, compiling)
        for b, i in _blocks(z.shape, compiling):
            zb, yb, gb = z[b, :, i], y[b, :, i], gy[b, :, i]
            out = None if compiling else dz[b, :, i]  # written in place, block by block
            if mode == LSE:
                rb = _at(r, b, i)
                cnt = _count(_cols(valid, i), zb)
                # dy/dx_i = exp(r (x_i − y)) / |S|
                dzb = torch.sub(zb, yb, out=out).mul_(rb).exp_().mul_(gb / cnt)
                if need_dr:  # dy/dr = Σ g p_i (x_i − y) / r
                    diff = torch.sub(zb, yb, out=_buf(ws, 0, zb))
                    # p_i = 0 at -inf (padded or real): (x − y)·p_i → 0, not -inf·0 = NaN
                    diff.masked_fill_(zb == NEG_INF, 0.0)
                    dr[b, :, i] = diff.mul_(dzb).sum(1, keepdim=True) / rb
            else:
                # dy/dx_i = w_i (1 + x_i − y), w_i = exp(x_i − log Σ e)
                w = torch.sub(zb, aux[b, :, i], out=_buf(ws, 0, zb)).exp_()
                dzb = torch.sub(zb, yb, out=out).add_(1.0).mul_(w).mul_(gb)
            if compiling:
                dz = dzb
        if need_dr and r_t.shape != dr.shape:  # r shared along I: sum its lines
            dr = dr.sum(2, keepdim=True) if r_t.shape[2] == 1 else dr
            dr = dr.sum(0, keepdim=True) if r_t.shape[0] == 1 else dr
        return dz, dr, None, None


def _cols(valid: Tensor | None, i: slice) -> Tensor | None:
    """The block's columns of a [1, K, I] validity mask."""
    return None if valid is None else valid[:, :, i]
