"""Triton kernels and their launchers for the pooling ops.

Imported only when the Triton backend runs (Triton is heavy to import). Every kernel
accumulates in float32, masks every load and store, and indexes through explicit strides, so
contiguous, channels_last and strided inputs need no copy (global kernels need the spatial
dims to be flattenable, which contiguous and channels_last both are).

Two kernel families serve LSE, SoftPool and stochastic pooling (``MODE``):

- windowed: one program per block of outputs for the forward; the backward *gathers* for each
  input element the outputs whose windows hold it (as torch's avg_pool backward does), so it
  needs no atomics and is deterministic. 1-D and 2-D inputs run as 3-D with size-1 dims.
- global: one program per (sample, block of channels) streams the flattened map with an online
  max-rescaled sum, so the input is read once; the backward is elementwise.

Saved for backward: the output and, per mode, one float32 value per output (SoftPool: log of
its normaliser; stochastic eval: the window sum; stochastic training: the sampled index) —
never an exp() of the whole input.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from wsloc.ops._common import LSE, empty_like_layout, flat_spatial_stride, new_output

_WINDOW_BLOCK = 256


@triton.jit
def _expm1(t):
    """exp(t) - 1, accurate near 0 (a Taylor series there), for t <= 0 (-inf gives -1)."""
    poly = t * (1.0 + t * (0.5 + t * (1.0 / 6.0 + t * (1.0 / 24.0 + t * (1.0 / 120.0
                                                                        + t / 720.0)))))
    return tl.where(tl.abs(t) < 0.1, poly, tl.exp(t) - 1.0)


@triton.jit
def _log_mean_exp(s, s1, cnt):
    """log(s / cnt) given s = Σ exp(t) and s1 = Σ expm1(t): log1p of the mean of expm1 while
    it is accurate (small r, where log(s) - log(cnt) would cancel), else log(s / cnt)."""
    u = s1 / cnt
    w = 1.0 + u
    log1p = tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))
    return tl.where(u > -0.5, log1p, tl.log(s / cnt))


@triton.jit
def _unravel(offs, C, D, H, W, C_LAST: tl.constexpr):
    """Flat indices → (n, c, d, h, w), channels fastest when C_LAST (coalesced loads on
    channels_last data), else w fastest."""
    if C_LAST:
        c = offs % C
        rest = offs // C
        w = rest % W
        rest = rest // W
        h = rest % H
        rest = rest // H
        d = rest % D
        n = rest // D
    else:
        w = offs % W
        rest = offs // W
        h = rest % H
        rest = rest // H
        d = rest % D
        rest = rest // D
        c = rest % C
        n = rest // C
    return n, c, d, h, w


@triton.jit
def _window_fwd_kernel(
    x_ptr, r_ptr, u_ptr, y_ptr, aux_ptr,
    total, C, D, H, W, OD, OH, OW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    SD, SH, SW, PD, PH, PW,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    MODE: tl.constexpr, R_PER_CHANNEL: tl.constexpr, C_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, c, od, oh, ow = _unravel(offs, C, OD, OH, OW, C_LAST)
    x_base = x_ptr + n * sxn + c * sxc
    d0 = od * SD - PD
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    y_off = n * syn + c * syc + od * syd + oh * syh + ow * syw

    if MODE == 0:  # LSE
        if R_PER_CHANNEL:
            r = tl.load(r_ptr + c, mask=mask, other=1.0).to(tl.float32)
        else:
            r = tl.load(r_ptr).to(tl.float32)
    else:
        r = 1.0

    if MODE <= 1:  # LSE and SoftPool: max pass, then the shifted exp-sum pass
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        for kd in tl.static_range(KD):
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    i_d = d0 + kd
                    i_h = h0 + kh
                    i_w = w0 + kw
                    ok = mask & (i_d >= 0) & (i_d < D) & (i_h >= 0) & (i_h < H)
                    ok = ok & (i_w >= 0) & (i_w < W)
                    v = tl.load(x_base + i_d * sxd + i_h * sxh + i_w * sxw, mask=ok,
                                other=float("-inf")).to(tl.float32)
                    m = tl.maximum(m, v)
        s = tl.zeros([BLOCK], tl.float32)
        t = tl.zeros([BLOCK], tl.float32)  # SoftPool: Σ e·(x − m); LSE: Σ expm1(r·(x − m))
        cnt = tl.zeros([BLOCK], tl.float32)
        for kd in tl.static_range(KD):
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    i_d = d0 + kd
                    i_h = h0 + kh
                    i_w = w0 + kw
                    ok = mask & (i_d >= 0) & (i_d < D) & (i_h >= 0) & (i_h < H)
                    ok = ok & (i_w >= 0) & (i_w < W)
                    v = tl.load(x_base + i_d * sxd + i_h * sxh + i_w * sxw, mask=ok,
                                other=0.0).to(tl.float32)
                    e = tl.where(ok, tl.exp(r * (v - m)), 0.0)
                    s += e
                    cnt += ok.to(tl.float32)
                    if MODE == 1:
                        t += tl.where(ok, e * (v - m), 0.0)
                    else:
                        t += tl.where(ok, _expm1(r * (v - m)), 0.0)
        if MODE == 0:
            y = m + _log_mean_exp(s, t, cnt) / r
        else:
            y = m + t / s
            tl.store(aux_ptr + y_off, m + tl.log(s), mask=mask)
    else:  # stochastic pooling, inputs >= 0
        s = tl.zeros([BLOCK], tl.float32)
        q = tl.zeros([BLOCK], tl.float32)
        for kd in tl.static_range(KD):
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    v = tl.load(x_base + (d0 + kd) * sxd + (h0 + kh) * sxh + (w0 + kw) * sxw,
                                mask=mask, other=0.0).to(tl.float32)
                    s += v
                    q += v * v
        if MODE == 2:
            y = tl.where(s == 0.0, 0.0, q / s)
            tl.store(aux_ptr + y_off, s, mask=mask)
        else:
            u_off = (((n * C + c) * OD + od) * OH + oh) * OW + ow
            target = tl.load(u_ptr + u_off, mask=mask, other=0.0) * s
            cum = tl.zeros([BLOCK], tl.float32)
            sel = tl.full([BLOCK], -1, tl.int32)
            val = tl.zeros([BLOCK], tl.float32)
            last_nz = tl.full([BLOCK], KD * KH * KW - 1, tl.int32)
            last_v = tl.zeros([BLOCK], tl.float32)
            for kd in tl.static_range(KD):
                for kh in tl.static_range(KH):
                    for kw in tl.static_range(KW):
                        v = tl.load(
                            x_base + (d0 + kd) * sxd + (h0 + kh) * sxh + (w0 + kw) * sxw,
                            mask=mask, other=0.0).to(tl.float32)
                        cum += v
                        take = (sel < 0) & (cum > target)
                        sel = tl.where(take, (kd * KH + kh) * KW + kw, sel)
                        val = tl.where(take, v, val)
                        nz = v > 0.0
                        last_nz = tl.where(nz, (kd * KH + kh) * KW + kw, last_nz)
                        last_v = tl.where(nz, v, last_v)
            # u*s rounding to s (or an all-zero window) leaves nothing taken: fall back to the
            # last positive element (or the last one).
            val = tl.where(sel < 0, last_v, val)
            sel = tl.where(sel < 0, last_nz, sel)
            y = tl.where(s == s, val, s)  # NaN in, NaN out
            tl.store(aux_ptr + y_off, sel.to(tl.float32), mask=mask)
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _window_bwd_kernel(
    g_ptr, x_ptr, y_ptr, aux_ptr, r_ptr, dx_ptr, dr_ptr,
    total, C, D, H, W, OD, OH, OW,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    sgn, sgc, sgd, sgh, sgw,
    SD, SH, SW, PD, PH, PW,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    ND: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
    MODE: tl.constexpr, R_PER_CHANNEL: tl.constexpr, C_LAST: tl.constexpr,
    NEED_DR: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, c, i_d, ih, iw = _unravel(offs, C, D, H, W, C_LAST)
    x_off = n * sxn + c * sxc + i_d * sxd + ih * sxh + iw * sxw
    xv = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
    if MODE == 0:
        if R_PER_CHANNEL:
            r = tl.load(r_ptr + c, mask=mask, other=1.0).to(tl.float32)
        else:
            r = tl.load(r_ptr).to(tl.float32)
    acc = tl.zeros([BLOCK], tl.float32)
    acc_r = tl.zeros([BLOCK], tl.float32)
    # the last window starting at or before the element, then walking back
    od_hi = (i_d + PD) // SD
    oh_hi = (ih + PH) // SH
    ow_hi = (iw + PW) // SW
    for jd in tl.static_range(ND):
        for jh in tl.static_range(NH):
            for jw in tl.static_range(NW):
                od = od_hi - jd
                oh = oh_hi - jh
                ow = ow_hi - jw
                d0 = od * SD - PD
                h0 = oh * SH - PH
                w0 = ow * SW - PW
                ok = mask & (od >= 0) & (od < OD) & (i_d - d0 < KD)
                ok = ok & (oh >= 0) & (oh < OH) & (ih - h0 < KH)
                ok = ok & (ow >= 0) & (ow < OW) & (iw - w0 < KW)
                y_off = n * syn + c * syc + od * syd + oh * syh + ow * syw
                g_off = n * sgn + c * sgc + od * sgd + oh * sgh + ow * sgw
                gv = tl.load(g_ptr + g_off, mask=ok, other=0.0).to(tl.float32)
                if MODE == 3:
                    sel = tl.load(aux_ptr + y_off, mask=ok, other=-1.0).to(tl.int32)
                    local = ((i_d - d0) * KH + (ih - h0)) * KW + (iw - w0)
                    contrib = tl.where(sel == local, gv, 0.0)
                else:
                    yv = tl.load(y_ptr + y_off, mask=ok, other=0.0).to(tl.float32)
                    if MODE == 0:
                        cnt_d = tl.minimum(d0 + KD, D) - tl.maximum(d0, 0)
                        cnt_h = tl.minimum(h0 + KH, H) - tl.maximum(h0, 0)
                        cnt_w = tl.minimum(w0 + KW, W) - tl.maximum(w0, 0)
                        cnt = (cnt_d * cnt_h * cnt_w).to(tl.float32)
                        p = tl.exp(r * (xv - yv)) / cnt
                        contrib = gv * p
                        if NEED_DR:
                            acc_r += tl.where(ok, contrib * (xv - yv), 0.0)
                    elif MODE == 1:
                        lz = tl.load(aux_ptr + y_off, mask=ok, other=0.0)
                        contrib = gv * tl.exp(xv - lz) * (1.0 + xv - yv)
                    else:
                        s = tl.load(aux_ptr + y_off, mask=ok, other=1.0)
                        contrib = tl.where(s == 0.0, gv / (KD * KH * KW), gv * (2.0 * xv - yv) / s)
                acc += tl.where(ok, contrib, 0.0)
    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_DR:
        tl.store(dr_ptr + offs, acc_r, mask=mask)


@triton.jit
def _global_fwd_kernel(
    x_ptr, r_ptr, y_ptr, aux_ptr,
    C, L, sxn, sxc, sxl,
    MODE: tl.constexpr, R_PER_CHANNEL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    if MODE == 0:
        if R_PER_CHANNEL:
            r = tl.load(r_ptr + cs, mask=cmask, other=1.0).to(tl.float32)
        else:
            r = tl.load(r_ptr + cs * 0).to(tl.float32)
    else:
        r = tl.full([BLOCK_C], 1.0, tl.float32)
    base = x_ptr + n * sxn + cs[:, None].to(tl.int64) * sxc
    m = tl.full([BLOCK_C], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_C], tl.float32)
    t = tl.zeros([BLOCK_C], tl.float32)  # SoftPool: Σ e·(x − m); LSE: Σ expm1(r·(x − m))
    for l0 in range(0, L, BLOCK_L):
        ls = l0 + tl.arange(0, BLOCK_L)
        msk = cmask[:, None] & (ls[None, :] < L)
        v = tl.load(base + ls[None, :].to(tl.int64) * sxl, mask=msk,
                    other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(v, axis=1))
        alpha = tl.exp(r * (m - m_new))  # 0 on the first block, where m = -inf
        e = tl.exp(r[:, None] * (v - m_new[:, None]))  # masked elements: exp(-inf) = 0
        if MODE == 1:
            shift = tl.where(s > 0.0, (m - m_new) * s, 0.0)
            t = alpha * (t + shift) + tl.sum(tl.where(msk, e * (v - m_new[:, None]), 0.0), axis=1)
        else:
            # Σ expm1 under the new max: α·t + expm1(r·(m − m_new))·(elements so far)
            seen = tl.minimum(l0, L).to(tl.float32)
            t = tl.where(s > 0.0, alpha * t + _expm1(r * (m - m_new)) * seen, 0.0)
            t += tl.sum(tl.where(msk, _expm1(r[:, None] * (v - m_new[:, None])), 0.0), axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        m = m_new
    if MODE == 0:
        y = m + _log_mean_exp(s, t, L.to(tl.float32)) / r
    else:
        y = m + t / s
        tl.store(aux_ptr + n * C + cs, m + tl.log(s), mask=cmask)
    tl.store(y_ptr + n * C + cs, y.to(y_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _global_bwd_kernel(
    g_ptr, x_ptr, y_ptr, aux_ptr, r_ptr, dx_ptr, dr_ptr,
    C, L, sxn, sxc, sxl, sgn, sgc,
    MODE: tl.constexpr, R_PER_CHANNEL: tl.constexpr, NEED_DR: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ls = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    cmask = cs < C
    msk = cmask[:, None] & (ls[None, :] < L)
    off = n * sxn + cs[:, None].to(tl.int64) * sxc + ls[None, :].to(tl.int64) * sxl
    v = tl.load(x_ptr + off, mask=msk, other=0.0).to(tl.float32)
    yv = tl.load(y_ptr + n * C + cs, mask=cmask, other=0.0).to(tl.float32)[:, None]
    gv = tl.load(g_ptr + n * sgn + cs * sgc, mask=cmask, other=0.0).to(tl.float32)[:, None]
    if MODE == 0:
        if R_PER_CHANNEL:
            r = tl.load(r_ptr + cs, mask=cmask, other=1.0).to(tl.float32)
        else:
            r = tl.load(r_ptr + cs * 0).to(tl.float32)
        dx = gv * tl.exp(r[:, None] * (v - yv)) / L.to(tl.float32)
        if NEED_DR:
            dr_off = (n * C + cs[:, None]) * L + ls[None, :]
            tl.store(dr_ptr + dr_off, dx * (v - yv), mask=msk)
    else:
        lz = tl.load(aux_ptr + n * C + cs, mask=cmask, other=0.0)[:, None]
        dx = gv * tl.exp(v - lz) * (1.0 + v - yv)
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _wildcat_fwd_kernel(
    x_ptr, y_ptr, stats_ptr, C, L, sxn, sxc, sxl, kmax, kmin, alpha,
    HAS_MIN: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    n = row // C
    c = row % C
    ls = tl.arange(0, BLOCK)
    msk = ls < L
    v = tl.load(x_ptr + n * sxn + c * sxc + ls.to(tl.int64) * sxl, mask=msk,
                other=float("-inf")).to(tl.float32)
    srt = tl.sort(v, descending=True)  # padding (-inf) sorts to the end
    top = tl.sum(tl.where(ls < kmax, srt, 0.0), axis=0) / kmax
    t_top = tl.sum(tl.where(ls == kmax - 1, srt, 0.0), axis=0)
    n_gt = tl.sum((msk & (v > t_top)).to(tl.float32), axis=0)
    n_eq = tl.sum((msk & (v == t_top)).to(tl.float32), axis=0)
    y = top
    t_bot = 0.0
    n_lt = 0.0
    n_eqb = 1.0
    if HAS_MIN:
        bot = tl.sum(tl.where((ls >= L - kmin) & msk, srt, 0.0), axis=0) / kmin
        t_bot = tl.sum(tl.where(ls == L - kmin, srt, 0.0), axis=0)
        n_lt = tl.sum((msk & (v < t_bot)).to(tl.float32), axis=0)
        n_eqb = tl.sum((msk & (v == t_bot)).to(tl.float32), axis=0)
        y = y + alpha * bot
    n_nan = tl.sum((msk & (v != v)).to(tl.float32), axis=0)
    y = tl.where(n_nan > 0, float("nan"), y)
    tl.store(y_ptr + row, y.to(y_ptr.dtype.element_ty))
    tl.store(stats_ptr + row * 6 + 0, t_top)
    tl.store(stats_ptr + row * 6 + 1, n_gt)
    tl.store(stats_ptr + row * 6 + 2, n_eq)
    tl.store(stats_ptr + row * 6 + 3, t_bot)
    tl.store(stats_ptr + row * 6 + 4, n_lt)
    tl.store(stats_ptr + row * 6 + 5, n_eqb)


@triton.jit
def _wildcat_bwd_kernel(
    g_ptr, x_ptr, stats_ptr, dx_ptr, C, L, sxn, sxc, sxl, sgn, sgc, kmax, kmin, alpha,
    HAS_MIN: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    n = row // C
    c = row % C
    ls = tl.arange(0, BLOCK)
    msk = ls < L
    off = n * sxn + c * sxc + ls.to(tl.int64) * sxl
    v = tl.load(x_ptr + off, mask=msk, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + n * sgn + c * sgc).to(tl.float32)
    t_top = tl.load(stats_ptr + row * 6 + 0)
    n_gt = tl.load(stats_ptr + row * 6 + 1)
    n_eq = tl.load(stats_ptr + row * 6 + 2)
    # ties at the k-th value share the remaining weight equally (a symmetric subgradient)
    w = tl.where(v > t_top, 1.0, tl.where(v == t_top, (kmax - n_gt) / n_eq, 0.0)) / kmax
    if HAS_MIN:
        t_bot = tl.load(stats_ptr + row * 6 + 3)
        n_lt = tl.load(stats_ptr + row * 6 + 4)
        n_eqb = tl.load(stats_ptr + row * 6 + 5)
        wb = tl.where(v < t_bot, 1.0, tl.where(v == t_bot, (kmin - n_lt) / n_eqb, 0.0)) / kmin
        w = w + alpha * wb
    tl.store(dx_ptr + off, (g * w).to(dx_ptr.dtype.element_ty), mask=msk)


# --------------------------------------------------------------------------- launchers


def _c_last(x5: Tensor) -> bool:
    return x5.size(1) > 1 and x5.stride(1) == 1


def _per_channel(dr: Tensor, c_last: bool) -> Tensor:
    """Sum the per-element r terms (stored in the kernel's iteration order) per channel."""
    c = dr.size(-1) if c_last else dr.size(1)
    return dr.reshape(-1, c).sum(0) if c_last else dr.transpose(0, 1).reshape(c, -1).sum(1)


def window_forward(x5: Tensor, r: Tensor, u: Tensor | None, mode: int, k, s, p,
                   out_size) -> tuple[Tensor, Tensor]:
    """Windowed pooling of ``x5`` [N, C, D, H, W]: returns ``(y5, aux5)``, laid out as ``x5``.

    ``aux5`` is empty for LSE (backward needs only the output).
    """
    n, c, d, h, w = x5.shape
    od, oh, ow = out_size
    y5 = empty_like_layout(x5, (n, c, od, oh, ow))
    aux5 = (empty_like_layout(x5, y5.shape, torch.float32) if mode != LSE
            else new_output(0, y5, torch.float32))
    total = y5.numel()
    _window_fwd_kernel[(triton.cdiv(total, _WINDOW_BLOCK),)](
        x5, r, u if u is not None else y5, y5, aux5 if mode != LSE else y5,
        total, c, d, h, w, od, oh, ow,
        *x5.stride(), *y5.stride(), *s, *p,
        KD=k[0], KH=k[1], KW=k[2], MODE=mode, R_PER_CHANNEL=r.numel() > 1,
        C_LAST=_c_last(x5), BLOCK=_WINDOW_BLOCK,
    )
    return y5, aux5


def window_backward(g5: Tensor, x5: Tensor, y5: Tensor, aux5: Tensor, r: Tensor, mode: int,
                    k, s, p, need_dr: bool) -> tuple[Tensor, Tensor]:
    """Gradient of the windowed pooling: ``(dx5, dr)`` with ``dr`` [C] the per-channel
    sum of g·p·(x − y) (LSE with ``need_dr``; empty otherwise)."""
    if empty_like_layout(x5, x5.shape).stride() != x5.stride():
        x5 = x5.contiguous()  # a strided view: dx is written with x's strides
    n, c, d, h, w = x5.shape
    od, oh, ow = y5.shape[2:]
    total = x5.numel()
    dx5 = empty_like_layout(x5, x5.shape)
    c_last = _c_last(x5)
    dr = new_output(((n, d, h, w, c) if c_last else (n, c, d, h, w)) if need_dr else 0, x5,
                    torch.float32)
    nwin = [-(-kk // ss) for kk, ss in zip(k, s)]
    _window_bwd_kernel[(triton.cdiv(total, _WINDOW_BLOCK),)](
        g5, x5, y5, aux5 if mode != LSE else y5, r, dx5, dr if need_dr else dx5,
        total, c, d, h, w, od, oh, ow,
        *x5.stride(), *y5.stride(), *g5.stride(), *s, *p,
        KD=k[0], KH=k[1], KW=k[2], ND=nwin[0], NH=nwin[1], NW=nwin[2],
        MODE=mode, R_PER_CHANNEL=r.numel() > 1, C_LAST=c_last,
        NEED_DR=need_dr, BLOCK=_WINDOW_BLOCK,
    )
    return dx5, (_per_channel(dr, c_last) if need_dr else dr)


def _global_blocks(C: int, L: int, sxl: int) -> tuple[int, int]:
    if sxl == 1:  # contiguous rows: wide along the map
        block_l = min(triton.next_power_of_2(L), 1024)
        block_c = max(1, min(triton.next_power_of_2(C), 2048 // block_l))
    else:  # channels_last: wide along the channels
        block_c = min(triton.next_power_of_2(C), 64)
        block_l = max(1, min(triton.next_power_of_2(L), 2048 // block_c))
    return block_c, block_l


def global_forward(x: Tensor, r: Tensor, mode: int) -> tuple[Tensor, Tensor]:
    """Global pooling of ``x`` [N, C, *spatial] (spatial dims flattenable): ``(y, aux)``,
    ``y`` [N, C] in x's dtype, ``aux`` [N, C] float32 (empty for LSE)."""
    n, c = x.shape[:2]
    L = x[0, 0].numel()
    sxl = flat_spatial_stride(x)
    y = new_output((n, c), x)
    aux = new_output((n, c) if mode != LSE else 0, x, torch.float32)
    block_c, block_l = _global_blocks(c, L, sxl)
    _global_fwd_kernel[(n, triton.cdiv(c, block_c))](
        x, r, y, aux if mode != LSE else y, c, L, x.stride(0), x.stride(1), sxl,
        MODE=mode, R_PER_CHANNEL=r.numel() > 1, BLOCK_C=block_c, BLOCK_L=block_l,
    )
    return y, aux


def global_backward(g: Tensor, x: Tensor, y: Tensor, aux: Tensor, r: Tensor, mode: int,
                    need_dr: bool) -> tuple[Tensor, Tensor]:
    """Gradient of the global pooling: ``(dx, dr)`` as in :func:`window_backward`."""
    n, c = x.shape[:2]
    L = x[0, 0].numel()
    sxl = flat_spatial_stride(x)
    dx = empty_like_layout(x, x.shape)  # x is dense here, so dx shares its strides
    dr = new_output((n, c, L) if need_dr else 0, x, torch.float32)
    block_c, block_l = _global_blocks(c, L, sxl)
    _global_bwd_kernel[(n, triton.cdiv(c, block_c), triton.cdiv(L, block_l))](
        g, x, y, aux if mode != LSE else y, r, dx, dr if need_dr else dx,
        c, L, x.stride(0), x.stride(1), sxl, g.stride(0), g.stride(1),
        MODE=mode, R_PER_CHANNEL=r.numel() > 1, NEED_DR=need_dr,
        BLOCK_C=block_c, BLOCK_L=block_l,
    )
    return dx, (dr.sum((0, 2)) if need_dr else dr)


def wildcat_forward(x: Tensor, kmax: int, kmin: int, alpha: float) -> tuple[Tensor, Tensor]:
    """WILDCAT pooling of ``x`` [N, C, H, W]: ``(y [N, C], stats [N, C, 6])``."""
    n, c = x.shape[:2]
    L = x[0, 0].numel()
    y = new_output((n, c), x)
    stats = new_output((n, c, 6), x, torch.float32)
    _wildcat_fwd_kernel[(n * c,)](
        x, y, stats, c, L, x.stride(0), x.stride(1), flat_spatial_stride(x),
        kmax, max(kmin, 1), alpha, HAS_MIN=kmin > 0, BLOCK=triton.next_power_of_2(L),
    )
    return y, stats


def wildcat_backward(g: Tensor, x: Tensor, stats: Tensor, kmax: int, kmin: int,
                     alpha: float) -> Tensor:
    n, c = x.shape[:2]
    L = x[0, 0].numel()
    dx = empty_like_layout(x, x.shape)
    _wildcat_bwd_kernel[(n * c,)](
        g, x, stats, dx, c, L, x.stride(0), x.stride(1), flat_spatial_stride(x),
        g.stride(0), g.stride(1), kmax, max(kmin, 1), alpha,
        HAS_MIN=kmin > 0, BLOCK=triton.next_power_of_2(L),
    )
    return dx
