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

A third family, k-max (one program per map, held in registers as int32 keys that order
floats as torch.sort does), serves kmax_pool1d/2d and WILDCAT: the forward finds the k-th
largest key by radix selection (32 counting passes, no sort), selects the keys above it plus
the earliest ties at it, and either compacts the selection in spatial order (k-max) or
reduces it (WILDCAT: the mean of the k-max selection of x plus alpha times that of -x, both
from the one load of the map). It saves four int32 per map (the k-th key and the last tie
position taken, for x and for -x); the backward finds the selection again from them
elementwise, streaming the map block by block.

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
def _order_key(v, valid):
    """int32 keys that order float32 values as torch.sort does (NaN above +inf, -0.0 equal
    to 0.0): the float's bits, with the magnitude bits flipped for negatives. Positions that
    are not ``valid`` get a key below every value's, so they are never selected."""
    v = tl.where(v == 0.0, 0.0, v)
    bits = v.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = tl.where(v != v, 0x7FFFFFFF, key)
    return tl.where(valid, key, -0x7FFFFFFF)


@triton.jit
def _negated_key(key, v, valid):
    """The keys of -v from those of v (-1 - key reverses the order; NaN stays largest)."""
    return tl.where(valid, tl.where(v != v, 0x7FFFFFFF, -1 - key), -0x7FFFFFFF)


@triton.jit
def _kth_largest(key, k):
    """The k-th largest of an int32 block by radix selection: bit by bit from the top, one
    counting pass per bit (32 in all), no sort. Keeps count(key >= kth) >= k throughout."""
    kth = tl.where(tl.sum((key >= 0).to(tl.int32), axis=0) >= k, 0, -2147483648)
    for i in tl.static_range(31):
        cand = kth | (1 << (30 - i))
        kth = tl.where(tl.sum((key >= cand).to(tl.int32), axis=0) >= k, cand, kth)
    return kth


@triton.jit
def _take(key, ls, kth, k):
    """The k largest keys of a map: those above the k-th largest key ``kth`` and, of those
    equal to it, the earliest positions. Returns (mask, position of the last tie taken)."""
    gt = key > kth
    eq = key == kth
    need = k - tl.sum(gt.to(tl.int32), axis=0)
    tie = eq & (tl.cumsum(eq.to(tl.int32), axis=0) <= need)
    return gt | tie, tl.max(tl.where(tie, ls, -1), axis=0)


@triton.jit
def _kmax_fwd_kernel(
    x_ptr, len_ptr, k_ptr, val_ptr, idx_ptr, y_ptr, stats_ptr,
    C, L, sxn, sxc, sxl, k, kmin, alpha, K_OUT,
    WILDCAT: tl.constexpr, HAS_MIN: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    ROW_K: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    n = row // C
    c = row % C
    ls = tl.arange(0, BLOCK)
    n_valid = L
    if HAS_LENGTHS:
        n_valid = tl.load(len_ptr + n).to(tl.int32)
    if ROW_K:
        k = tl.load(k_ptr + n).to(tl.int32)
    valid = ls < n_valid
    v = tl.load(x_ptr + n * sxn + c * sxc + ls.to(tl.int64) * sxl, mask=ls < L,
                other=0.0).to(tl.float32)
    key = _order_key(v, valid)
    kth = _kth_largest(key, k)
    take, last = _take(key, ls, kth, k)
    tl.store(stats_ptr + row * 4 + 0, kth)
    tl.store(stats_ptr + row * 4 + 1, last)
    if WILDCAT:  # y = mean of the k largest + alpha · mean of the kmin smallest
        y = tl.sum(tl.where(take, v, 0.0), axis=0) / k
        if HAS_MIN:  # the kmin largest of -x, from the same loaded map
            key_b = _negated_key(key, v, valid)
            kth_b = _kth_largest(key_b, kmin)
            take_b, last_b = _take(key_b, ls, kth_b, kmin)
            y += alpha * tl.sum(tl.where(take_b, v, 0.0), axis=0) / kmin
            tl.store(stats_ptr + row * 4 + 2, kth_b)
            tl.store(stats_ptr + row * 4 + 3, last_b)
        else:
            tl.store(stats_ptr + row * 4 + 2, kth)
            tl.store(stats_ptr + row * 4 + 3, last)
        tl.store(y_ptr + row, y.to(y_ptr.dtype.element_ty))
    else:  # the selected values and positions, compacted in spatial order
        slot = row * K_OUT + tl.cumsum(take.to(tl.int32), axis=0) - 1
        tl.store(val_ptr + slot, v.to(val_ptr.dtype.element_ty), mask=take)
        tl.store(idx_ptr + slot, ls.to(tl.int64), mask=take)
        if ROW_K:  # slots past this map's k are padding: value 0, index -1
            for j0 in range(0, K_OUT, BLOCK_K):
                js = j0 + tl.arange(0, BLOCK_K)
                pad = (js >= k) & (js < K_OUT)
                tl.store(val_ptr + row * K_OUT + js,
                         tl.zeros([BLOCK_K], tl.float32).to(val_ptr.dtype.element_ty), mask=pad)
                tl.store(idx_ptr + row * K_OUT + js, tl.full([BLOCK_K], -1, tl.int64), mask=pad)


@triton.jit
def _kmax_bwd_kernel(
    g_ptr, x_ptr, len_ptr, stats_ptr, dx_ptr,
    C, L, sxn, sxc, sxl, sdn, sdc, sdl, sgn, sgc, sgk, k, kmin, alpha,
    WILDCAT: tl.constexpr, HAS_MIN: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    n = row // C
    c = row % C
    n_valid = L
    if HAS_LENGTHS:
        n_valid = tl.load(len_ptr + n).to(tl.int32)
    kth = tl.load(stats_ptr + row * 4 + 0)
    last = tl.load(stats_ptr + row * 4 + 1)
    kth_b = tl.load(stats_ptr + row * 4 + 2)
    last_b = tl.load(stats_ptr + row * 4 + 3)
    g_row = g_ptr + n * sgn + c * sgc
    if WILDCAT:
        g = tl.load(g_row).to(tl.float32)
    base = tl.zeros([], tl.int32)  # selected positions before this block
    for l0 in range(0, L, BLOCK_L):
        ls = l0 + tl.arange(0, BLOCK_L)
        inb = ls < L
        valid = ls < n_valid
        v = tl.load(x_ptr + n * sxn + c * sxc + ls.to(tl.int64) * sxl, mask=inb,
                    other=0.0).to(tl.float32)
        key = _order_key(v, valid)
        take = (key > kth) | ((key == kth) & (ls <= last))  # the forward's selection
        if WILDCAT:
            w = take.to(tl.float32) / k
            if HAS_MIN:
                key_b = _negated_key(key, v, valid)
                take_b = (key_b > kth_b) | ((key_b == kth_b) & (ls <= last_b))
                w += alpha * take_b.to(tl.float32) / kmin
            dx = g * w
        else:  # the gradient of output slot j goes to the j-th selected position
            slot = base + tl.cumsum(take.to(tl.int32), axis=0) - 1
            dx = tl.load(g_row + slot.to(tl.int64) * sgk, mask=take, other=0.0).to(tl.float32)
            base += tl.sum(take.to(tl.int32), axis=0)
        tl.store(dx_ptr + n * sdn + c * sdc + ls.to(tl.int64) * sdl,
                 dx.to(dx_ptr.dtype.element_ty), mask=inb)


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


def _kmax_warps(block: int) -> int:
    return max(4, min(16, block // 512))


def _dummy(t: Tensor | None, like: Tensor) -> Tensor:
    return like if t is None else t


def kmax_forward(x: Tensor, lengths: Tensor | None, ks: Tensor | None,
                 k: int) -> tuple[Tensor, Tensor, Tensor]:
    """k-max of each map of ``x`` [N, C, *spatial] (spatial dims flattenable, L positions):
    ``(values [N, C, k], indices [N, C, k] int64, stats [N, C, 4] int32)``.

    Each map keeps its ``k`` (or ``ks[n]``) largest values in spatial order, padded with
    (0, -1) up to ``k`` slots; positions ``>= lengths[n]`` are never selected. ``stats``
    holds what the backward needs to find the selection again: the k-th largest key and the
    last tie position taken.
    """
    n, c = x.shape[:2]
    L = x[0, 0].numel()
    values = new_output((n, c, k), x)
    indices = new_output((n, c, k), x, torch.int64)
    stats = new_output((n, c, 4), x, torch.int32)
    block = triton.next_power_of_2(L)
    _kmax_fwd_kernel[(n * c,)](
        x, _dummy(lengths, stats), _dummy(ks, stats), values, indices, values, stats,
        c, L, x.stride(0), x.stride(1), flat_spatial_stride(x), k, 1, 0.0, k,
        WILDCAT=False, HAS_MIN=False, HAS_LENGTHS=lengths is not None, ROW_K=ks is not None,
        BLOCK=block, BLOCK_K=min(triton.next_power_of_2(k), 1024), num_warps=_kmax_warps(block),
    )
    return values, indices, stats


def _kmax_grad_launch(g: Tensor, x: Tensor, lengths: Tensor | None, stats: Tensor, k: int,
                      kmin: int, alpha: float, wildcat: bool) -> Tensor:
    n, c = x.shape[:2]
    L = x[0, 0].numel()
    dx = empty_like_layout(x, x.shape)
    _kmax_bwd_kernel[(n * c,)](
        g, x, _dummy(lengths, stats), stats, dx,
        c, L, x.stride(0), x.stride(1), flat_spatial_stride(x),
        dx.stride(0), dx.stride(1), flat_spatial_stride(dx), g.stride(0), g.stride(1),
        g.stride(2) if g.dim() == 3 else 0, k, max(kmin, 1), alpha,
        WILDCAT=wildcat, HAS_MIN=kmin > 0, HAS_LENGTHS=lengths is not None,
        BLOCK_L=min(triton.next_power_of_2(L), 1024),
    )
    return dx


def kmax_backward(g: Tensor, x: Tensor, lengths: Tensor | None, stats: Tensor) -> Tensor:
    """Gradient of :func:`kmax_forward`: output slot j's gradient goes to the map's j-th
    selected position, 0 elsewhere (laid out as ``x``)."""
    return _kmax_grad_launch(g, x, lengths, stats, 1, 0, 0.0, wildcat=False)


def wildcat_forward(x: Tensor, kmax: int, kmin: int, alpha: float) -> tuple[Tensor, Tensor]:
    """WILDCAT pooling of ``x`` [N, C, H, W] on the k-max kernel: ``(y [N, C], stats
    [N, C, 4] int32)``, the k-max selection of x and that of -x for the k-min term."""
    n, c = x.shape[:2]
    L = x[0, 0].numel()
    y = new_output((n, c), x)
    stats = new_output((n, c, 4), x, torch.int32)
    block = triton.next_power_of_2(L)
    _kmax_fwd_kernel[(n * c,)](
        x, stats, stats, y, stats, y, stats,
        c, L, x.stride(0), x.stride(1), flat_spatial_stride(x), kmax, max(kmin, 1), alpha, 1,
        WILDCAT=True, HAS_MIN=kmin > 0, HAS_LENGTHS=False, ROW_K=False,
        BLOCK=block, BLOCK_K=1, num_warps=_kmax_warps(block),
    )
    return y, stats


def wildcat_backward(g: Tensor, x: Tensor, stats: Tensor, kmax: int, kmin: int,
                     alpha: float) -> Tensor:
    """Gradient of :func:`wildcat_forward`: g/kmax at the k-max selection plus
    alpha·g/kmin at the k-min one."""
    return _kmax_grad_launch(g, x, None, stats, kmax, kmin, alpha, wildcat=True)


# ------------------------------------------------------------------------ sort pooling
#
# Sort pooling (wsloc.ops.sort): y = Σ_j w_j · sorted_desc(window)_j, ties in the order of a
# stable descending sort (equal values by position in the window, NaN first).
#
# - windowed: one program per block of output windows holds each window as a row of a
#   [BLOCK, KP] tile and ranks every slot by counting the slots that go before it (exact tie
#   rule, no sort). The backward gathers, for each input element, g · w[rank] over the
#   windows that hold it (its rank recounted in each: K compares), so it needs no atomics;
#   the weights' gradient is written per window and rank, and summed by torch. Saved for
#   backward: the input and the weights.
# - global: one program per map packs (order-preserving value bits, position) into int64
#   keys, so that tl.sort's bitonic network (not stable by itself) yields the stable order;
#   it saves the top-k positions (int32) and values (float32), all the backward needs.

_SORT_TILE = 2048


@triton.jit
def _sort_before(a, b, a_first):
    """Whether value ``a`` goes before ``b`` in the stable descending order: larger (NaN
    above everything), or equal (NaN equal to NaN) and ``a_first``."""
    a_nan = a != a
    b_nan = b != b
    greater = (a > b) | (a_nan & (b == b))
    same = (a == b) | (a_nan & b_nan)
    return greater | (same & a_first)


@triton.jit
def _sort_window_kernel(
    x_ptr, w_ptr, g_ptr, y_ptr, dw_ptr,
    total, C, OH, OW, RANKS,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, SH, SW, swc,
    KH: tl.constexpr, KW: tl.constexpr, KP: tl.constexpr, W_PER_CHANNEL: tl.constexpr,
    C_LAST: tl.constexpr, DW: tl.constexpr, BLOCK: tl.constexpr,
):
    """Forward (``y``), or with DW the weights' gradient terms ``g · sorted_j`` per window
    and rank (``dw`` [total, RANKS]; ``y``'s strides are then ``g``'s)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, c, _d, oh, ow = _unravel(offs, C, 1, OH, OW, C_LAST)
    ks = tl.arange(0, KP)
    m2 = mask[:, None] & (ks < KH * KW)[None, :]
    base = n * sxn + c * sxc + oh * SH * sxh + ow * SW * sxw
    slot = (ks // KW) * sxh + (ks % KW) * sxw
    v = tl.load(x_ptr + base[:, None] + slot[None, :], mask=m2, other=0.0).to(tl.float32)
    rank = tl.zeros([BLOCK, KP], dtype=tl.int32)
    for j in range(KH * KW):
        vj = tl.load(x_ptr + base + (j // KW) * sxh + (j % KW) * sxw, mask=mask,
                     other=0.0).to(tl.float32)
        rank += _sort_before(vj[:, None], v, j < ks[None, :]).to(tl.int32)
    sel = m2 & (rank < RANKS)
    y_off = n * syn + c * syc + oh * syh + ow * syw
    if DW:
        gv = tl.load(g_ptr + y_off, mask=mask, other=0.0).to(tl.float32)
        tl.store(dw_ptr + offs[:, None] * RANKS + rank, gv[:, None] * v, mask=sel)
    else:
        if W_PER_CHANNEL:
            wv = tl.load(w_ptr + c[:, None] * swc + rank, mask=sel, other=0.0)
        else:
            wv = tl.load(w_ptr + rank, mask=sel, other=0.0)
        y = tl.sum(tl.where(sel, wv * v, 0.0), axis=1)
        tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sort_window_dx_kernel(
    g_ptr, x_ptr, w_ptr, dx_ptr,
    total, C, H, W, OH, OW, RANKS,
    sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, sdn, sdc, sdh, sdw, SH, SW, swc,
    KH: tl.constexpr, KW: tl.constexpr, KP: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
    W_PER_CHANNEL: tl.constexpr, C_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n, c, _d, ih, iw = _unravel(offs, C, 1, H, W, C_LAST)
    x_base = n * sxn + c * sxc
    xi = tl.load(x_ptr + x_base + ih * sxh + iw * sxw, mask=mask, other=0.0).to(tl.float32)
    ks = tl.arange(0, KP)
    kvalid = ks < KH * KW
    slot = (ks // KW) * sxh + (ks % KW) * sxw
    acc = tl.zeros([BLOCK], tl.float32)
    # the last window starting at or before the element, then walking back
    oh_hi = ih // SH
    ow_hi = iw // SW
    for jh in range(NH):
        for jw in range(NW):
            oh = oh_hi - jh
            ow = ow_hi - jw
            h0 = oh * SH
            w0 = ow * SW
            ok = mask & (oh >= 0) & (oh < OH) & (ih - h0 < KH)
            ok = ok & (ow >= 0) & (ow < OW) & (iw - w0 < KW)
            here = (ih - h0) * KW + (iw - w0)  # the element's slot in this window
            m2 = ok[:, None] & kvalid[None, :]
            v = tl.load(x_ptr + (x_base + h0 * sxh + w0 * sxw)[:, None] + slot[None, :],
                        mask=m2, other=0.0).to(tl.float32)
            before = _sort_before(v, xi[:, None], ks[None, :] < here[:, None])
            rank = tl.sum((m2 & before).to(tl.int32), axis=1)
            sel = ok & (rank < RANKS)
            if W_PER_CHANNEL:
                wv = tl.load(w_ptr + c * swc + rank, mask=sel, other=0.0)
            else:
                wv = tl.load(w_ptr + rank, mask=sel, other=0.0)
            gv = tl.load(g_ptr + n * sgn + c * sgc + oh * sgh + ow * sgw, mask=sel,
                         other=0.0).to(tl.float32)
            acc += tl.where(sel, gv * wv, 0.0)
    tl.store(dx_ptr + n * sdn + c * sdc + ih * sdh + iw * sdw,
             acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sort_global_fwd_kernel(
    x_ptr, w_ptr, y_ptr, pos_ptr, val_ptr, C, L, RANKS, sxn, sxc, sxl, swc,
    W_PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    n = row // C
    c = row % C
    ls = tl.arange(0, BLOCK)
    msk = ls < L
    v = tl.load(x_ptr + n * sxn + c * sxc + ls.to(tl.int64) * sxl, mask=msk,
                other=0.0).to(tl.float32)
    key = _order_key(v, msk)  # as torch.sort orders them; padding below -inf
    # ties: the earlier position has the larger low word, so it comes first
    packed = (key.to(tl.int64) << 32) | (BLOCK - 1 - ls).to(tl.int64)
    top = tl.sort(packed, descending=True)  # (tl.topk would need Triton >= 3.4)
    hi64 = top >> 32  # arithmetic: the key back
    pos = BLOCK - 1 - (top - (hi64 << 32)).to(tl.int32)
    hi = hi64.to(tl.int32)
    vals = tl.where(hi < 0, hi ^ 0x7FFFFFFF, hi).to(tl.float32, bitcast=True)
    sel = ls < RANKS  # ls is now the rank
    if W_PER_CHANNEL:
        w = tl.load(w_ptr + c * swc + ls, mask=sel, other=0.0)
    else:
        w = tl.load(w_ptr + ls, mask=sel, other=0.0)
    y = tl.sum(tl.where(sel, w * vals, 0.0), axis=0)
    tl.store(y_ptr + row, y.to(y_ptr.dtype.element_ty))
    tl.store(pos_ptr + row * RANKS + ls, pos, mask=sel)
    tl.store(val_ptr + row * RANKS + ls, vals, mask=sel)


@triton.jit
def _sort_global_bwd_kernel(
    g_ptr, pos_ptr, w_ptr, dx_ptr, C, RANKS, sgn, sgc, sdn, sdc, sdl, swc,
    W_PER_CHANNEL: tl.constexpr, KP: tl.constexpr,
):
    """dx[pos_j] = g · w_j for the top ranks (dx is zero elsewhere: filled before)."""
    row = tl.program_id(0).to(tl.int64)
    n = row // C
    c = row % C
    js = tl.arange(0, KP)
    sel = js < RANKS
    p = tl.load(pos_ptr + row * RANKS + js, mask=sel, other=0).to(tl.int64)
    if W_PER_CHANNEL:
        w = tl.load(w_ptr + c * swc + js, mask=sel, other=0.0)
    else:
        w = tl.load(w_ptr + js, mask=sel, other=0.0)
    g = tl.load(g_ptr + n * sgn + c * sgc).to(tl.float32)
    tl.store(dx_ptr + n * sdn + c * sdc + p * sdl, (g * w).to(dx_ptr.dtype.element_ty),
             mask=sel)


def _sort_block(kp: int) -> int:
    return max(1, min(256, _SORT_TILE // kp))


def sort_window_forward(x: Tensor, w: Tensor, k, s, out) -> Tensor:
    """Sort pooling of the windows of ``x`` [N, C, H, W] (any strides) with weights ``w``
    [1 or C, k] float32: ``y`` [N, C, OH, OW], laid out as ``x``."""
    n, c = x.shape[:2]
    y = empty_like_layout(x, (n, c, *out))
    kp = triton.next_power_of_2(k[0] * k[1])
    block = _sort_block(kp)
    _sort_window_kernel[(triton.cdiv(y.numel(), block),)](
        x, w, y, y, y, y.numel(), c, out[0], out[1], w.shape[1],
        *x.stride(), *y.stride(), *s, w.stride(0),
        KH=k[0], KW=k[1], KP=kp, W_PER_CHANNEL=w.shape[0] > 1, C_LAST=_c_last(x),
        DW=False, BLOCK=block,
    )
    return y


def sort_window_backward(g: Tensor, x: Tensor, w: Tensor, k, s, need_dx: bool,
                         need_dw: bool) -> tuple[Tensor, Tensor]:
    """``(dx, dw)``: dx laid out as ``x`` (empty unless ``need_dx``), dw [1 or C, k] float32
    (empty unless ``need_dw``)."""
    n, c, h, wd = x.shape
    oh, ow = g.shape[2:]
    ranks = w.shape[1]
    kp = triton.next_power_of_2(k[0] * k[1])
    block = _sort_block(kp)
    c_last = _c_last(x)
    per_channel = w.shape[0] > 1
    dx = new_output(0, x)
    if need_dx:
        dx = empty_like_layout(x, x.shape)
        _sort_window_dx_kernel[(triton.cdiv(x.numel(), block),)](
            g, x, w, dx, x.numel(), c, h, wd, oh, ow, ranks,
            *x.stride(), *g.stride(), *dx.stride(), *s, w.stride(0),
            KH=k[0], KW=k[1], KP=kp, NH=triton.cdiv(k[0], s[0]), NW=triton.cdiv(k[1], s[1]),
            W_PER_CHANNEL=per_channel, C_LAST=c_last, BLOCK=block,
        )
    dw = new_output(0, w)
    if need_dw:
        terms = new_output((g.numel(), ranks), x, torch.float32)  # in the kernel's order
        _sort_window_kernel[(triton.cdiv(g.numel(), block),)](
            x, w, g, g, terms, g.numel(), c, oh, ow, ranks,
            *x.stride(), *g.stride(), *s, w.stride(0),
            KH=k[0], KW=k[1], KP=kp, W_PER_CHANNEL=per_channel, C_LAST=c_last,
            DW=True, BLOCK=block,
        )
        if not per_channel:
            dw = terms.sum(0, keepdim=True)
        elif c_last:  # rows ordered (n, oh, ow, c)
            dw = terms.view(-1, c, ranks).sum(0)
        else:  # rows ordered (n, c, oh, ow)
            dw = terms.view(n, c, -1, ranks).sum((0, 2))
    return dx, dw


def sort_global_forward(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Global sort pooling of ``x`` [N, C, H, W] (spatial dims flattenable) with weights
    ``w`` [1 or C, k] float32: ``(y [N, C], pos [N, C, k] int32, vals [N, C, k] float32)``,
    the positions (flat spatial index) and values of the top k ranks."""
    n, c = x.shape[:2]
    L = x[0, 0].numel()
    ranks = w.shape[1]
    y = new_output((n, c), x)
    pos = new_output((n, c, ranks), x, torch.int32)
    vals = new_output((n, c, ranks), x, torch.float32)
    block = max(2, triton.next_power_of_2(L))
    _sort_global_fwd_kernel[(n * c,)](
        x, w, y, pos, vals, c, L, ranks, x.stride(0), x.stride(1), flat_spatial_stride(x),
        w.stride(0), W_PER_CHANNEL=w.shape[0] > 1, BLOCK=block,
        num_warps=4 if block <= 2048 else min(16, block // 512),  # int64 keys: registers
    )
    return y, pos, vals


def sort_global_backward(g: Tensor, pos: Tensor, vals: Tensor, w: Tensor, shape,
                         channels_last: bool, need_dx: bool,
                         need_dw: bool) -> tuple[Tensor, Tensor]:
    """``(dx, dw)`` of the global sort pooling; dx [N, C, H, W] (channels_last when the
    input was), zero outside the top ranks."""
    n, c = shape[:2]
    ranks = w.shape[1]
    dx = new_output(0, g)
    if need_dx:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        dx = torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=fmt).zero_()
        _sort_global_bwd_kernel[(n * c,)](
            g, pos, w, dx, c, ranks, g.stride(0), g.stride(1), dx.stride(0), dx.stride(1),
            flat_spatial_stride(dx), w.stride(0), W_PER_CHANNEL=w.shape[0] > 1,
            KP=max(2, triton.next_power_of_2(ranks)),
        )
    dw = new_output(0, w)
    if need_dw:
        terms = g.float()[..., None] * vals  # [N, C, k]
        dw = terms.sum(0) if w.shape[0] > 1 else terms.sum((0, 1))[None]
    return dx, dw
