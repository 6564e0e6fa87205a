"""Sort pooling: each window sorted in descending order, combined with one weight per rank.

``y = Σ_j w_j · sorted_desc(window)_j``: weights (1, 0, …, 0) are max pooling, all 1/K
average pooling, 1/k on the first k ranks the mean of the top k; learned weights interpolate
between them per rank (and, with weights [C, k], per channel).

The PyTorch path avoids the sort a composed formula would run on every window:

- windows of up to :data:`NETWORK_MAX_WINDOW` elements run a sorting network (Batcher's
  odd–even merge sort, pruned to the ranks that carry a weight) of elementwise max/min over
  strided views of the input, one per window slot: no unfold copy, no sort. The backward
  counts each slot's rank in its window (K·(K−1)/2 comparisons) and writes ``g · w[rank]``
  straight into the gradient through the same views.
- the whole map, and larger windows, take ``torch.topk`` over the top k + 1 ranks (a full
  stable sort only when every rank is weighted); the backward scatters ``g · w_j`` to the
  k indices, after re-sorting stably the few rows where ties (or NaN) make topk's order
  differ from the stable rule.

Both work in pieces of at most :data:`SERIAL_ELEMENTS` elements per op: on data in the
core's cache, and below torch's intra-op grain, so each op runs on one thread and none waits
at a thread barrier (on a busy 2-core machine each barrier costs milliseconds). Both
backward passes are written out; what they save is the input (or the topk indices and
values) and the weights — never a permutation per window.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import (
    accumulation_view,
    check_tensor,
    empty_like_layout,
    kernel_ready,
    ntuple,
    resolve_backend,
    window_geometry,
)

__all__ = ["sort_pool2d", "SortPool2d"]

# Windows up to this many elements take the sorting network on the PyTorch path.
NETWORK_MAX_WINDOW = 16
# One Triton program holds a window (or a map) in registers: the windowed kernel takes up to
# TRITON_MAX_WINDOW elements per window, the global one maps of up to TRITON_MAX_POSITIONS;
# "auto" takes the PyTorch path beyond them.
TRITON_MAX_WINDOW = 256
TRITON_MAX_POSITIONS = 16384

_INITS = ("mean", "max")


# ------------------------------------------------------------------- sorting network


def batcher_network(n: int) -> list[tuple[int, int]]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd–even merge sort on ``n`` inputs.

    Applying each in order (position ``i`` takes the larger value, ``j`` the smaller) sorts
    any input in descending order; for ``n`` not a power of two the comparators that would
    touch positions ``>= n`` are left out.
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.cache
def _pruned_network(n: int, ranks: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """The comparators that the first ``ranks`` outputs depend on, as ``(i, j, max, min)``:
    whether the comparator's max (to ``i``) and min (to ``j``) are read later."""
    needed = set(range(ranks))
    ops = []
    for i, j in reversed(batcher_network(n)):
        hi, lo = i in needed, j in needed
        if hi or lo:
            ops.append((i, j, hi, lo))
            needed |= {i, j}
    return tuple(reversed(ops))


def _slots(t: Tensor, k: Sequence[int], s: Sequence[int], out: Sequence[int]) -> list[Tensor]:
    """The kh·kw slots of the windows of ``t`` [N, C, H, W] as strided views [N, C, OH, OW]
    (no copy): slot ``a·kw + b`` holds ``t[..., oh·sh + a, ow·sw + b]``."""
    sn, sc, sh, sw = t.stride()
    size = (t.shape[0], t.shape[1], *out)
    stride = (sn, sc, sh * s[0], sw * s[1])
    off = t.storage_offset()
    return [t.as_strided(size, stride, off + a * sh + b * sw)
            for a in range(k[0]) for b in range(k[1])]


def _network_sort(slots: list[Tensor], ranks: int) -> list[Tensor]:
    """The ``ranks`` largest values of each window, in descending order, from its slots.

    Elementwise max/min over whole slot tensors; buffers that die are reused (in-place ops),
    so a K = 4 window allocates about four slot-sized tensors in all."""
    v: list[Tensor | None] = list(slots)
    owned = [False] * len(v)
    spare: list[Tensor] = []

    def fresh() -> Tensor:
        return spare.pop() if spare else torch.empty_like(slots[0])

    for i, j, hi, lo in _pruned_network(len(slots), ranks):
        a, b = v[i], v[j]
        if hi and lo:
            top = torch.maximum(a, b, out=fresh())
            bottom = torch.minimum(a, b, out=b if owned[j] else fresh())
            if owned[i]:
                spare.append(a)
            v[i], v[j] = top, bottom
            owned[i] = owned[j] = True
        elif hi:
            v[i] = torch.maximum(a, b, out=a if owned[i] else fresh())
            if owned[j]:
                spare.append(b)
            v[j], owned[i], owned[j] = None, True, False
        else:
            v[j] = torch.minimum(a, b, out=b if owned[j] else fresh())
            if owned[i]:
                spare.append(a)
            v[i], owned[i], owned[j] = None, False, True
    return v[:ranks]


def _weighted_sum(vals: list[Tensor], w: list[float] | Tensor, out: Tensor) -> Tensor:
    """``Σ_j w_j · vals_j`` into ``out``; ``w`` a list of floats (shared weights) or a
    tensor [k, 1, C, 1, 1] (per channel)."""
    torch.mul(vals[0], w[0], out=out)
    for v, wj in zip(vals[1:], w[1:]):
        if isinstance(wj, float):
            out.add_(v, alpha=wj)
        else:
            out.addcmul_(v, wj)
    return out


def _slot_ranks(v: list[Tensor]) -> list[Tensor]:
    """Each slot's rank in its window under the stable descending order (uint8): the number
    of slots that go before it, an earlier slot going first on equal values. Assumes no NaN
    (the caller takes the exact path then). One comparison per pair of slots."""
    n = len(v)
    ranks = [torch.full(v[0].shape, n - 1 - j, dtype=torch.uint8, device=v[0].device)
             for j in range(n)]  # as if every later slot went first
    for a in range(n):
        for b in range(a + 1, n):
            first = torch.ge(v[a], v[b]).view(torch.uint8)  # a before b (bool as 0/1 bytes)
            ranks[b].add_(first)
            ranks[a].sub_(first)
    return ranks


# Torch runs an elementwise op or a reduction on one thread up to 32768 elements (its
# intra-op grain). The PyTorch path works in pieces of at most that many elements per op:
# its many small ops then run on data in the core's cache, and none waits at a thread
# barrier (on a busy 2-core machine a barrier costs a scheduler slice, milliseconds).
SERIAL_ELEMENTS = 32768
BACKWARD_PIECES = 4  # the windowed backward works in pieces of 4 · SERIAL_ELEMENTS


def _piece_elements(t: Tensor) -> int:
    """Elements per piece: SERIAL_ELEMENTS on CPU; on other devices (the fallback without
    Triton) one piece, as many small kernel launches would be slow there."""
    return SERIAL_ELEMENTS if t.device.type == "cpu" else 1 << 62


def _pieces(shape: Sequence[int], out: Sequence[int], size: int):
    """Pieces of the output [N, C, OH, OW] of at most ``size`` elements each: (n slice,
    c slice, first row, end row)."""
    n, c = shape[:2]
    oh, ow = out
    per_map = oh * ow
    if per_map * c <= size:
        step_n, step_c, rows = max(1, size // (per_map * c)), c, oh
    elif per_map <= size:
        pieces = -(-per_map * c // size)
        step_n, step_c, rows = 1, -(-c // pieces), oh
    else:
        step_n, step_c, rows = 1, 1, max(1, size // ow)
    for n0 in range(0, n, step_n):
        for c0 in range(0, c, step_c):
            for h0 in range(0, oh, rows):
                yield slice(n0, n0 + step_n), slice(c0, c0 + step_c), h0, min(h0 + rows, oh)


def _piece_slots(t: Tensor, piece, k, s, out) -> list[Tensor]:
    """The window slots (views) of ``t`` (the input, or its gradient) for one piece."""
    ns, cs, h0, h1 = piece
    part = t[ns, cs, h0 * s[0]: (h1 - 1) * s[0] + k[0]]
    return _slots(part, k, s, (h1 - h0, out[1]))


def _rank_columns(w: Tensor, cs: slice) -> list[float] | Tensor:
    """Weights as :func:`_weighted_sum` takes them, for the channels ``cs``."""
    if w.dim() == 1:
        return w.tolist()
    wc = w[cs]
    return wc.t().reshape(wc.shape[1], 1, wc.shape[0], 1, 1)


class _WindowSort(torch.autograd.Function):
    """Sort pooling of small windows by the sorting network, with a written-out backward.

    ``x`` [N, C, H, W] (float32/float64), ``w`` [k] or [C, k] in x's dtype. Saves ``x`` and
    ``w`` only; the backward recounts the ranks and, for ∂y/∂w_j = sorted_j, re-runs the
    network (both piece by piece, on data in cache)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, k, s, out) -> Tensor:
        n, c = x.shape[:2]
        ranks = w.shape[-1]
        y = empty_like_layout(x, (n, c, *out))
        check_nan = any(ctx.needs_input_grad)
        total = x.new_zeros(())
        shared = w.tolist() if w.dim() == 1 else None
        for piece in _pieces(x.shape, out, _piece_elements(x)):
            ns, cs, h0, h1 = piece
            vals = _network_sort(_piece_slots(x, piece, k, s, out), ranks)
            yp = _weighted_sum(vals, shared or _rank_columns(w, cs), y[ns, cs, h0:h1])
            if check_nan:
                total.add_(yp.sum())
        ctx.geometry = (k, s, out)
        # NaN anywhere in y (NaN in, NaN out; a false alarm only costs time)
        ctx.has_nan = check_nan and bool(total.isnan())
        ctx.save_for_backward(x, w)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        k, s, out = ctx.geometry
        need_dx, need_dw = ctx.needs_input_grad[:2]
        if ctx.has_nan:  # NaN (in x or w, or from ∞·0): the exact topk/sort path
            return (*_exact_grads(x, w, g, (k, s, (0, 0), out), need_dx, need_dw),
                    None, None, None)
        window, ranks = k[0] * k[1], w.shape[-1]
        per_channel = w.dim() == 2
        dx = dw = None
        if need_dx:
            wpad = F.pad(w, (0, window - ranks))  # [K] or [C, K]: zero past rank k
            exact_cover = tuple(k) == tuple(s) and all(
                o * kk == size for o, kk, size in zip(out, k, x.shape[2:]))
            overlap = any(kk > ss for kk, ss in zip(k, s))
            dx = torch.empty_like(x) if exact_cover else torch.zeros_like(x)
        if need_dw:
            dw = torch.zeros_like(w)
        # the backward's ops are heavier than the forward's: in pieces of 4 × as many
        # elements, each op runs on both cores of a quiet 2-core machine (1.7× faster there
        # than in single-thread pieces; on a busy machine the barrier costs come back)
        for piece in _pieces(x.shape, out, BACKWARD_PIECES * _piece_elements(x)):
            ns, cs, h0, h1 = piece
            slots = _piece_slots(x, piece, k, s, out)
            gp = g[ns, cs, h0:h1]
            if need_dx:  # each slot gets g · w[rank], summed over the windows holding it
                if per_channel:  # index c·K + rank of the [c, K] weights
                    wp = wpad[cs].reshape(-1)
                    offset = torch.arange(0, wp.numel(), window, device=x.device)
                    offset = offset.view(1, -1, 1, 1)
                else:
                    wp = wpad
                dslots = _piece_slots(dx, piece, k, s, out)
                for dslot, rank in zip(dslots, _slot_ranks(slots)):
                    # int32 indices: index_select takes them, and the cast is cheaper
                    index = torch.add(rank, offset) if per_channel else rank.int()
                    # index_select, not take: take's threads are slow on a busy machine
                    wr = wp.index_select(0, index.view(-1)).view(index.shape)
                    if overlap:
                        dslot.addcmul_(wr, gp)
                    else:
                        torch.mul(wr, gp, out=dslot)
            if need_dw:  # ∂y/∂w_j = sorted_j
                vals = _network_sort(slots, ranks)
                if per_channel:
                    dw[cs] += torch.stack([(v * gp).sum((0, 2, 3)) for v in vals], -1)
                elif gp.is_contiguous() and all(v.is_contiguous() for v in vals):
                    flat = gp.reshape(-1)  # one dot per rank: no product temporaries
                    dw += torch.stack([torch.dot(v.reshape(-1), flat) for v in vals])
                else:
                    dw += torch.stack([(v * gp).sum() for v in vals])
        return dx, dw, None, None, None


# --------------------------------------------------------------------- topk / sort rows


def _rows(x: Tensor, geometry) -> Tensor:
    """The lines to pool as [N, C, P, L]: the whole map (P = 1, L = H·W), or each window
    (P = OH·OW, L = kh·kw; a copy, whose backward sums overlapping windows)."""
    n, c = x.shape[:2]
    if geometry is None:
        return x.reshape(n, c, 1, -1)
    k, s, _, out = geometry
    win = x.unfold(2, k[0], s[0]).unfold(3, k[1], s[1])  # [N, C, OH, OW, kh, kw], a view
    return win.reshape(n, c, out[0] * out[1], k[0] * k[1])


def _rank_weights(w: Tensor) -> Tensor:
    """Weights shaped to broadcast against [N, C, P, k]."""
    return w if w.dim() == 1 else w[:, None, :]


def _row_pieces(rows: int, length: int, size: int):
    """Row ranges of about ``size`` elements of a [rows, length] tensor."""
    step = max(1, size // length)
    for r0 in range(0, rows, step):
        yield slice(r0, min(r0 + step, rows))


class _RowSort(torch.autograd.Function):
    """Sort pooling along the last axis of ``z`` [N, C, P, L] → [N, C, P].

    ``torch.topk`` of k + 1 ranks (a stable sort when k = L), piece by piece; the backward
    re-sorts stably the rows where ties or NaN could make topk's indices differ from the
    stable rule, then scatters ``g · w_j`` to the k indices. Saves the indices and values
    of the top ranks (and ``z`` for those re-sorts)."""

    @staticmethod
    def forward(ctx, z: Tensor, w: Tensor) -> Tensor:
        n, c, p, length = z.shape
        ranks = w.shape[-1]
        exact = ranks >= length
        kept = length if exact else ranks + 1
        z2 = z.reshape(-1, length)
        vals = z.new_empty(z2.shape[0], kept)
        idx = torch.empty(vals.shape, dtype=torch.long, device=z.device)
        y = z.new_empty(z2.shape[0])
        per_row = _row_weights(w, c, p)
        for rs in _row_pieces(*z2.shape, _piece_elements(z)):
            if exact:
                torch.sort(z2[rs], dim=-1, descending=True, stable=True,
                           out=(vals[rs], idx[rs]))
            else:
                torch.topk(z2[rs], kept, dim=-1, out=(vals[rs], idx[rs]))
            torch.sum(vals[rs, :ranks] * per_row(rs), -1, out=y[rs])
        ctx.exact = exact
        ctx.save_for_backward(z, w, vals, idx)
        return y.view(n, c, p)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        z, w, vals, idx = ctx.saved_tensors
        n, c, p, length = z.shape
        ranks = w.shape[-1]
        need_dz, need_dw = ctx.needs_input_grad[:2]
        z2 = z.reshape(-1, length)
        g2 = g.reshape(-1, 1)
        per_row = _row_weights(w, c, p)
        dz = torch.empty(z2.shape, dtype=z.dtype, device=z.device) if need_dz else None
        dw = torch.zeros_like(w) if need_dw else None
        for rs in _row_pieces(*z2.shape, _piece_elements(z)):
            top, gr = vals[rs, :ranks], g2[rs]
            if need_dz:
                index = idx[rs, :ranks]
                if not ctx.exact:
                    # ties among (or next to) the top ranks, or NaN: topk's order is not
                    # the stable one there; sort those rows stably
                    unsure = ~(vals[rs].diff(dim=-1) < 0)
                    if bool(unsure.any()):
                        bad = unsure.any(-1).nonzero().squeeze(1)
                        index = index.clone()
                        index[bad] = z2[rs][bad].sort(dim=-1, descending=True,
                                                      stable=True).indices[:, :ranks]
                dz[rs].zero_().scatter_(-1, index, gr * per_row(rs))
            if need_dw:
                terms = top * gr
                if w.dim() == 1:
                    dw += terms.sum(0)
                else:
                    dw.index_add_(0, _row_channels(rs, c, p, z.device), terms)
        return (dz.view(z.shape) if need_dz else None), dw


def _row_channels(rs: slice, c: int, p: int, device) -> Tensor:
    """The channel of each row ``rs`` of [N·C·P, L]."""
    return torch.arange(rs.start, rs.stop, device=device).div_(p, rounding_mode="floor") % c


def _row_weights(w: Tensor, c: int, p: int):
    """For rows ``rs`` of [N·C·P, L], their weights: [k] (shared) or [rows, k]."""
    if w.dim() == 1:
        return lambda rs: w
    return lambda rs: w.index_select(0, _row_channels(rs, c, p, w.device))


def _exact_grads(x: Tensor, w: Tensor, g: Tensor, geometry, need_dx: bool, need_dw: bool):
    """Gradients through the topk/sort path (used by the network path when NaN is about)."""
    with torch.enable_grad():
        xd = x.detach().requires_grad_(need_dx)
        wd = w.detach().requires_grad_(need_dw)
        y = _RowSort.apply(_rows(xd, geometry), wd).view(g.shape)
        inputs = [t for t, need in ((xd, need_dx), (wd, need_dw)) if need]
        grads = iter(torch.autograd.grad(y, inputs, g))
    return (next(grads) if need_dx else None), (next(grads) if need_dw else None)


def sort_pool_formula(x: Tensor, w: Tensor, geometry) -> Tensor:
    """The definition, composed from torch ops (autograd through a stable sort): what
    ``torch.compile`` traces, and the tests' second reference."""
    z = _rows(x, geometry)
    top = z.sort(dim=-1, descending=True, stable=True).values[..., : w.shape[-1]]
    return (top * _rank_weights(w)).sum(-1)


def _sort_torch(x: Tensor, w: Tensor, geometry) -> Tensor:
    """The PyTorch path. float16 and bfloat16 are computed in float32 (as the kernels do)
    and the result cast back; the weights are cast to that dtype."""
    n, c = x.shape[:2]
    dtype = x.dtype
    x = accumulation_view(x)
    w = w.to(x.dtype)
    out = () if geometry is None else geometry[3]
    if torch.compiler.is_compiling():
        y = sort_pool_formula(x, w, geometry)
    elif geometry is not None and geometry[0][0] * geometry[0][1] <= NETWORK_MAX_WINDOW:
        k, s, _, out = geometry
        y = _WindowSort.apply(x, w, k, s, out)
    else:
        y = _RowSort.apply(_rows(x, geometry), w)
    return y.reshape(n, c, *out).to(dtype)


# ------------------------------------------------------------------------------- API


def check_weights(weights: object, channels: int, positions: int, what: str,
                  device: torch.device | None = None) -> Tensor:
    """Check rank weights: a floating tensor [k] or [C, k] with 1 <= k <= ``positions``."""
    if not isinstance(weights, Tensor):
        raise TypeError(f"`weights` must be a torch.Tensor of shape [k] or [C, k], got "
                        f"{type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"`weights` must be a floating-point tensor, got dtype {weights.dtype}")
    if weights.dim() not in (1, 2):
        raise ValueError(f"`weights` must be 1-D [k] (shared) or 2-D [C, k] (per channel), "
                         f"got shape {tuple(weights.shape)}")
    if weights.dim() == 2 and weights.shape[0] != channels:
        raise ValueError(f"`weights` of shape [C, k] must have C = {channels} rows (the "
                         f"channels of `x`), got shape {tuple(weights.shape)}")
    ranks = weights.shape[-1]
    if not 1 <= ranks <= positions:
        raise ValueError(f"`weights` must weight between 1 and {what} = {positions} ranks, got "
                         f"k = {ranks} (shape {tuple(weights.shape)})")
    if device is not None and weights.device != device:
        raise ValueError(f"`weights` must be on the input's device {device}, got "
                         f"{weights.device}")
    return weights


def sort_pool2d(
    x: Tensor,
    weights: Tensor,
    kernel_size: int | Sequence[int] | None,
    stride: int | Sequence[int] | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """Sort pooling: each window sorted in descending order, one weight per rank.

    ``y = Σ_{j<k} w_j · sorted_desc(S)_j`` over each window S of K = kh·kw elements (or the
    whole map, K = H·W). ``weights = (1, 0, …, 0)`` is max pooling, ``1/K`` everywhere
    average pooling, ``1/k`` on k < K ranks the mean of the k largest. Weights with fewer
    than K ranks weight only the top k; the rest get weight 0 (and are left out: a
    ``-inf`` there adds nothing).

    Ties follow a stable descending sort, as ``torch.sort(descending=True, stable=True)``:
    equal values keep their order in the window (row-major; the first position takes the
    higher rank), and NaN ranks above everything. The gradient is exact for that order:
    ``∂y/∂x_{π(j)} = w_j`` for the permutation π, and ``∂y/∂w_j = sorted_j`` (summed over
    positions, and over channels for shared weights). NaN in a window gives NaN for that
    window only; infinities follow IEEE arithmetic (``0·∞`` and ``∞ − ∞`` are NaN). A 1×1
    window (or map) gives ``w_0 · x``; there is no padding; an empty ``x`` is an error.

    Args:
        x: Tensor[N, C, H, W], float32/float16/bfloat16 (float64 on the torch backend).
        weights: Tensor[k] (shared by all channels) or Tensor[C, k] (one row per channel),
            floating, on x's device, with 1 <= k <= K; any real values (negative too:
            (1, −1) is the gap between the two largest); learnable (its gradient is
            computed, in its own dtype). It is cast to the dtype the op computes in (x's;
            float32 for half inputs, and on the Triton path).
        kernel_size: window (int or (kh, kw)); ``None`` pools the whole map to [N, C].
        stride: window step, defaults to ``kernel_size``.
        backend: ``"auto"`` (Triton on CUDA, PyTorch otherwise), ``"triton"`` or ``"torch"``.
            The kernels take windows of up to 256 elements and maps of up to 16384
            positions; ``"auto"`` takes the PyTorch path beyond them.

    Returns:
        Tensor[N, C] when ``kernel_size`` is None, else Tensor[N, C, OH, OW] with
        ``OH = (H − kh) // sh + 1``; in x's dtype.
    """
    check_tensor(x, 4, "[N, C, H, W]")
    if kernel_size is None:
        if stride is not None:
            raise ValueError(f"`stride` needs a `kernel_size`, got stride={stride!r} with "
                             "kernel_size=None (global pooling)")
        geometry = None
        positions, what, limit = x.shape[2] * x.shape[3], "H·W", TRITON_MAX_POSITIONS
    else:
        geometry = window_geometry(x.shape[2:], kernel_size, stride, 0)
        positions, what, limit = geometry[0][0] * geometry[0][1], "kh·kw", TRITON_MAX_WINDOW
    w = check_weights(weights, x.shape[1], positions, what, x.device)
    be = resolve_backend(backend, x, "sort_pool2d")
    if be == "triton" and positions > limit:
        if backend == "triton":
            raise ValueError(f"sort_pool2d: backend='triton' takes at most {what} = {limit}, "
                             f"got {positions}")
        be = "torch"
    if be == "torch":
        return _sort_torch(x, w, geometry)
    w32 = w.float().reshape(-1 if w.dim() == 2 else 1, w.shape[-1]).contiguous()
    if geometry is None:
        return _custom.sort_global_pool(kernel_ready(x), w32)[0]
    k, s, _, out = geometry
    return _custom.sort_window_pool(x, w32, list(k), list(s), list(out))


class SortPool2d(nn.Module):
    """Module form of :func:`sort_pool2d`, with the rank weights learned.

    Args:
        kernel_size, stride, backend: as in :func:`sort_pool2d` (``kernel_size=None``:
            global pooling to [N, C]).
        ranks: how many top ranks carry a weight; defaults to kh·kw for windows and must be
            given for global pooling (H·W is not known in advance).
        num_channels: learn one row of weights per channel ([C, ranks]); ``None`` shares one
            row ([ranks]).
        init: ``"mean"`` (1/ranks each: the mean of the top ranks, average pooling when
            ranks = kh·kw) or ``"max"`` ((1, 0, …, 0): max pooling).
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int] | None,
        stride: int | Sequence[int] | None = None,
        *,
        ranks: int | None = None,
        num_channels: int | None = None,
        init: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if kernel_size is not None:
            window = ntuple(kernel_size, 2, "kernel_size")
            ranks = window[0] * window[1] if ranks is None else ranks
        elif ranks is None:
            raise ValueError("`ranks` must be given for global pooling (kernel_size=None): "
                             "the number of top ranks that carry a weight")
        if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
            raise ValueError(f"`ranks` must be a positive int, got {ranks!r}")
        if num_channels is not None and (isinstance(num_channels, bool)
                                         or not isinstance(num_channels, int)
                                         or num_channels < 1):
            raise ValueError(f"`num_channels` must be a positive int or None, got "
                             f"{num_channels!r}")
        if init not in _INITS:
            raise ValueError(f"`init` must be one of {', '.join(map(repr, _INITS))}, got "
                             f"{init!r}")
        row = (torch.full((ranks,), 1.0 / ranks) if init == "mean"
               else F.one_hot(torch.tensor(0), ranks).float())
        self.weight = nn.Parameter(row if num_channels is None
                                   else row.repeat(num_channels, 1))
        self.kernel_size, self.stride, self.backend = kernel_size, stride, backend

    def forward(self, x: Tensor) -> Tensor:
        return sort_pool2d(x, self.weight, self.kernel_size, self.stride, backend=self.backend)

    def extra_repr(self) -> str:
        geom = ("global" if self.kernel_size is None
                else f"kernel_size={self.kernel_size}, stride={self.stride}")
        shared = ("shared" if self.weight.dim() == 1
                  else f"per channel ({self.weight.shape[0]})")
        return (f"{geom}, ranks={self.weight.shape[-1]}, weights {shared}, "
                f"backend={self.backend!r}")
