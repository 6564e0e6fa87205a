"""k-max pooling (Kalchbrenner et al., ACL 2014): over sequences, over 2-D maps, and the
DCNN's dynamic k-max pooling for variable-length batches.

One selection rule serves every op here and WILDCAT (wildcat.py builds on it): the k largest
values of a line, where NaN ranks above +inf (as in ``torch.sort``), -0.0 equals 0.0, and
of values tied at the k-th largest the earliest positions win. The Triton path is the k-max
kernel family of _kernels.py; the PyTorch path (:func:`select_lines`) is the CPU path, the
fallback and the kernels' oracle, and follows the same rule exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import (
    TRITON_MAX_POSITIONS,
    check_tensor,
    kernel_ready,
    resolve_backend,
    resolve_k,
)

__all__ = [
    "KMax", "DynamicKMax",
    "kmax_pool1d", "KMaxPool1d", "kmax_pool2d", "KMaxPool2d",
    "dynamic_k", "DynamicKMaxPool1d",
]


class KMax(NamedTuple):
    """What :func:`kmax_pool2d` (and :func:`kmax_pool1d` with ``return_indices=True``)
    returns, like ``torch.return_types.topk``."""

    values: Tensor
    """The selected values, in their spatial order."""
    indices: Tensor
    """Their positions (int64): flat row-major into H·W, or along the pooled dim; -1 in
    padding slots."""


class DynamicKMax(NamedTuple):
    """What :class:`DynamicKMaxPool1d` returns."""

    values: Tensor
    """Tensor[N, C, K], each sequence's k-max in order, then zeros."""
    indices: Tensor
    """Tensor[N, C, K] int64 positions, -1 in the padding."""
    lengths: Tensor
    """Tensor[N] int64: how many slots of each sequence are real (its k) — the lengths to
    hand to the next layer."""


# ----------------------------------------------------------------------- the PyTorch path


def _kth(top: Tensor, k: int | Tensor) -> Tensor:
    """The k-th column of ``top`` [..., >= k] (k an int, or a tensor [..., 1] per line)."""
    if isinstance(k, int):
        return top[..., k - 1:k]
    return top.gather(-1, (k - 1).expand(*top.shape[:-1], 1))


def _exact_take(z: Tensor, k: int | Tensor, valid: Tensor | None) -> Tensor:
    """Bool mask [..., L] of the k largest of each line of ``z`` by the tie rule.

    ``k``: an int, or an int64 tensor [..., 1] broadcastable over the lines (each in
    [1, the line's valid count]). ``valid``: None or a bool mask broadcastable to ``z``;
    invalid slots are never taken, whatever they hold.
    """
    width = k if isinstance(k, int) else int(k.max())
    filled = z if valid is None else z.masked_fill(~valid, float("-inf"))
    kth = _kth(filled.topk(width, dim=-1).values, k)  # NaN ranks largest in topk too
    z_nan, kth_nan = z.isnan(), kth.isnan()
    gt = (z > kth) | (z_nan & ~kth_nan)
    eq = (z == kth) | (z_nan & kth_nan)
    if valid is not None:
        gt, eq = gt & valid, eq & valid
    need = k - gt.sum(-1, keepdim=True)
    return gt | (eq & (eq.cumsum(-1) <= need))


def _compact(take: Tensor, width: int) -> Tensor:
    """Positions where ``take`` [..., L] is True, in order, as int64 [..., width] padded
    with -1 (each line holds at most ``width``)."""
    slot = (take.cumsum(-1) - 1).masked_fill_(~take, width)
    out = torch.full((*take.shape[:-1], width + 1), -1, dtype=torch.int64, device=take.device)
    positions = torch.arange(take.shape[-1], device=take.device).expand(take.shape)
    return out.scatter_(-1, slot, positions)[..., :width]


def _count(mask: Tensor, high: int) -> Tensor:
    """True entries per line of a bool ``mask``, in uint8 where ``high`` cannot wrap it (a
    bool sum would first copy to int64)."""
    return mask.view(torch.uint8).sum(-1, dtype=torch.uint8) if high < 255 else mask.sum(-1)


def select_lines(z: Tensor, k: int, largest: bool = True, force: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
    """The ``k`` largest (or, ``largest=False``, the k largest of ``-z``) of each line of
    ``z`` [..., L]: ``(values, index, drop)``.

    ``index`` [..., m] holds candidate positions and ``values`` ``z`` there; ``drop``
    [..., m] marks the one candidate of each line that is not selected (None: all are). In
    eager mode one ``topk(k + 1, sorted=False)`` finds them, and the lines where the
    (k+1)-th value ties with the k-th (or that hold NaN among the candidates, or where
    ``force`` [...] is True) are redone by the exact rule; under ``torch.compile`` every
    line takes the exact rule. Positions are in no particular order.

    With ``largest=False``, NaN ranks largest in ``-z`` too, so it is selected first, but
    ``topk(largest=False)`` does not return it: the caller passes the lines holding NaN in
    ``force`` (WILDCAT knows them from its k-max term).
    """
    L = z.shape[-1]
    if k == L:
        index = torch.arange(L, device=z.device).expand(z.shape)
        return z, index, None
    if torch.compiler.is_compiling():
        index = _compact(_exact_take(z if largest else -z, k, None), k)
        return z.gather(-1, index), index, None
    values, index = z.topk(k + 1, dim=-1, largest=largest, sorted=False)
    edge = values.amin(-1, keepdim=True) if largest else values.amax(-1, keepdim=True)
    drop = values == edge  # the (k+1)-th, where it is unique (NaN: none)
    redo = _count(drop, k + 1) != 1
    if force is not None:
        redo |= force
    if bool(redo.any()):
        zr = z[redo]
        exact = _compact(_exact_take(zr if largest else -zr, k, None), k)
        index[redo] = torch.cat([exact, exact[:, :1]], -1)
        values[redo] = zr.gather(-1, index[redo])
        drop[redo] = torch.arange(k + 1, device=z.device) == k
    return values, index, drop


class _KMaxLines(torch.autograd.Function):
    """k-max of each line of ``z`` [..., L] (int k): values and positions in order. The
    values are read from :func:`select_lines`' candidates (small, in cache) through the
    permutation that orders the positions; the backward scatters the gradient to them."""

    @staticmethod
    def forward(ctx, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        values, index, drop = select_lines(z, k)
        if drop is None:  # every position (values is z), or the compiled exact rule
            values = z.clone() if values is z else values
            index = index.contiguous()
        else:
            index, order = index.masked_fill_(drop, z.shape[-1]).sort(-1)
            values = values.gather(-1, order[..., :k])
            index = index[..., :k]
        ctx.mark_non_differentiable(index)
        ctx.save_for_backward(index)
        ctx.shape = z.shape
        return values, index

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gv: Tensor, _gi):
        (index,) = ctx.saved_tensors
        return gv.new_zeros(ctx.shape).scatter_(-1, index, gv), None


def _kmax_lines(z: Tensor, k: int) -> KMax:
    """k-max of each line of ``z`` [..., L] (int k): values and positions in order."""
    return KMax(*_KMaxLines.apply(z, k))


# Samples of at least this many elements take the sample-by-sample route of the masked
# k-max (on CPU): one topk call per sample is then small overhead against the work.
SAMPLE_LOOP_ELEMENTS = 1 << 14


def _sample_candidates(z: Tensor, ks: list[int], ends: list[int], width: int
                       ) -> tuple[Tensor, Tensor]:
    """Sample by sample, ``topk(k_n + 1, sorted=False)`` of the sample's valid prefix (a
    view: no -inf-filled copy), written straight into [N, C, width + 1] buffers (values
    +inf, positions S past each sample's candidates). Returns ``(index, redo)``: per line
    the k_n selected positions, in no order and padded with S, and the lines whose
    (k_n+1)-th candidate ties (or that hold NaN), which the exact rule must redo."""
    size = z.shape[-1]
    values = z.new_full((*z.shape[:2], width + 1), float("inf"))
    index = torch.full(values.shape, size, dtype=torch.int64, device=z.device)
    whole = torch.zeros(z.shape[0], 1, 1, dtype=torch.bool, device=z.device)
    with torch.no_grad():  # out= takes no autograd; the values are gathered afterwards
        for n, (kn, end) in enumerate(zip(ks, ends)):
            if kn == end:  # every valid position
                index[n, :, :kn] = torch.arange(kn, device=z.device)
                whole[n] = True
            else:
                torch.topk(z[n, :, :end], kn + 1, dim=-1, sorted=False,
                           out=(values[n, :, :kn + 1], index[n, :, :kn + 1]))
        drop = (values == values.amin(-1, keepdim=True)) & ~whole
        redo = (_count(drop, width + 1) != 1) & ~whole.view(-1, 1)
    return index.masked_fill_(drop, size), redo


def _kmax_lines_masked(z: Tensor, k: int | Tensor, lengths: Tensor | None) -> KMax:
    """k-max of the lines of ``z`` [N, C, S] with a k (an int or int64 [N]) and a valid
    length (int64 [N] or None) per sample; padded to max k with values 0 and indices -1.

    Eager mode on CPU, samples of :data:`SAMPLE_LOOP_ELEMENTS` or more: one unsorted topk
    per sample (:func:`_sample_candidates`). Otherwise one sorted ``topk`` of the lines
    (padding filled with -inf) gives each line's k-th and (k+1)-th values. Lines where
    those tie (or that hold NaN, or -inf where padding could tie) are redone by the exact
    rule; then the positions are sorted and the values gathered in one differentiable step.
    """
    size = z.shape[-1]
    valid = None
    if lengths is not None:
        valid = torch.arange(size, device=z.device) < lengths.view(-1, 1, 1)
    kk = k if isinstance(k, int) else k.view(-1, 1, 1)
    width = k if isinstance(k, int) else int(k.max())
    if torch.compiler.is_compiling():
        index = _compact(_exact_take(z, kk, valid), width)
        index = index.masked_fill(index < 0, size)
    else:
        if z.device.type == "cpu" and z.shape[0] and z[0].numel() >= SAMPLE_LOOP_ELEMENTS:
            ks = [k] * z.shape[0] if isinstance(k, int) else k.tolist()
            ends = [size] * z.shape[0] if lengths is None else lengths.tolist()
            index, redo = _sample_candidates(z, ks, ends, width)
        else:
            filled = z if valid is None else z.masked_fill(~valid, float("-inf"))
            m = min(width + 1, size)
            top, index = filled.topk(m, dim=-1)
            kth = _kth(top, kk)
            if isinstance(kk, int):
                after = (top[..., kk:kk + 1] if kk < m
                         else torch.full_like(kth, float("-inf")))
            else:  # a line whose k is the whole line has no (k+1)-th: -inf
                after = top.gather(-1, kk.clamp_max(m - 1).expand_as(kth))
                after = after.masked_fill(kk >= m, float("-inf"))
            redo = ~((kth > after) & (kth > float("-inf"))).squeeze(-1)
            index = index.masked_fill_(torch.arange(m, device=z.device) >= kk, size)
        index = index.sort(-1).values[..., :width]
        if bool(redo.any()):
            kr = kk if isinstance(kk, int) else kk.expand(*z.shape[:2], 1)[redo]
            vr = None if valid is None else valid.expand(z.shape)[redo]
            exact = _compact(_exact_take(z[redo], kr, vr), width)
            index[redo] = exact.masked_fill_(exact < 0, size)
    pad = index == size
    values = z.gather(-1, index.clamp_max(size - 1)).masked_fill_(pad, 0.0)
    return KMax(values, index.masked_fill_(pad, -1))


# --------------------------------------------------------------------------- public ops


def _check_lengths(t: object, name: str, n: int, high: int, device: torch.device) -> Tensor:
    """An integer tensor [n] on ``device`` with every entry in [1, high]."""
    if not isinstance(t, Tensor):
        raise TypeError(f"`{name}` must be an int64 tensor [N], got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"`{name}` must be an integer tensor, got dtype {t.dtype}")
    if tuple(t.shape) != (n,):
        raise ValueError(f"`{name}` must have shape [N] = [{n}] (x.shape[0]), got shape "
                         f"{tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"`{name}` must be on the input's device {device}, got {t.device}")
    if n and not torch.compiler.is_compiling():
        low_v, high_v = int(t.min()), int(t.max())
        if low_v < 1 or high_v > high:
            bad = low_v if low_v < 1 else high_v
            raise ValueError(f"`{name}` must lie in [1, {high}], got {bad}")
    return t.long()


def kmax_pool1d(
    x: Tensor, k: int | Tensor, dim: int = -1, *, lengths: Tensor | None = None,
    return_indices: bool = False, backend: str = "auto",
) -> Tensor | KMax:
    """Keep the ``k`` largest values along ``dim``, in their original order.

    The rule (shared by every k-max op and WILDCAT): NaN ranks above +inf, as in
    ``torch.sort``, so a line holding NaN keeps it (NaN comes out only where NaN went in);
    -0.0 equals 0.0; of values tied at the k-th largest, the earliest positions are kept.
    Both backends select exactly the same positions.

    Variable-length batches: with ``lengths`` (one per sample, along dim 0), positions
    ``>= lengths[n]`` are never selected, whatever they hold; ``k`` may then also be a
    tensor with one k per sample. The output is as wide as the largest k; a sample's slots
    past its k hold 0 (indices -1). An empty ``x`` gives an empty output.

    Args:
        x: a floating tensor of any rank (at least 2-D with ``lengths``).
        k: how many to keep: an int in [1, x.shape[dim]], or an int64 tensor [N] with
            ``1 <= k[n] <= lengths[n]`` (or x.shape[dim]).
        dim: the pooled dimension (not 0 with ``lengths``).
        lengths: None, or an int64 tensor [N] (N = x.shape[0]) of valid lengths in
            [1, x.shape[dim]].
        return_indices: also return the positions (a :class:`KMax`).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``. The Triton kernel (the one of
            :func:`kmax_pool2d`; a sequence is a 1×S map) takes lines of up to 16384.

    Returns:
        ``x`` with ``x.shape[dim]`` replaced by k (the largest k), or ``KMax(values,
        indices)`` with ``indices`` the int64 positions along ``dim``. The gradient goes to
        the kept positions (one slot each); padding slots pass none back.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("`x` must have at least one dimension, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"`dim` must be in [{-x.dim()}, {x.dim() - 1}], got {dim!r}")
    dim = dim % x.dim()
    size = x.shape[dim]
    if lengths is not None:
        if dim == 0:
            raise ValueError("`dim` must not be 0 (the batch dim that `lengths` indexes), "
                             "got 0")
        lengths = _check_lengths(lengths, "lengths", x.shape[0], size, x.device)
    if isinstance(k, Tensor):
        if x.dim() < 2 or dim == 0:
            raise ValueError("a tensor `k` (one per sample) needs a batch dim 0 that is not "
                             f"pooled, got x of shape {tuple(x.shape)} and dim={dim}")
        k = _check_lengths(k, "k", x.shape[0], size, x.device)
        if (lengths is not None and x.shape[0] and not torch.compiler.is_compiling()
                and bool((k > lengths).any())):
            n = int((k > lengths).nonzero()[0, 0])
            raise ValueError(f"`k` must be at most `lengths` for every sample, got "
                             f"k[{n}] = {int(k[n])} > lengths[{n}] = {int(lengths[n])}")
    elif isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
        raise ValueError(f"`k` must be an int in [1, {size}] (x.shape[{dim}]), got {k!r}")
    elif (lengths is not None and x.shape[0] and not torch.compiler.is_compiling()
            and k > int(lengths.min())):
        raise ValueError(f"`k` must be at most every length, got k = {k} > min(lengths) = "
                         f"{int(lengths.min())}")
    be = resolve_backend(backend, x, "kmax_pool1d")
    if be == "triton" and size > TRITON_MAX_POSITIONS:
        if backend == "triton":
            raise ValueError(f"kmax_pool1d: backend='triton' takes lines of at most "
                             f"{TRITON_MAX_POSITIONS}, got x.shape[{dim}] = {size}")
        be = "torch"
    xm = x.movedim(dim, -1)
    batch = xm.shape[:-1]
    # as [N, C, S]: one line per (sample, rest of the batch dims)
    lines = (batch[0] if batch else 1, math.prod(batch[1:]), size)
    width = k if isinstance(k, int) else (int(k.max()) if k.numel() else 0)
    if x.numel() == 0 or width == 0:
        out = KMax(x.new_zeros((*batch, width)),
                   torch.full((*batch, width), -1, dtype=torch.int64, device=x.device))
    elif be == "triton":
        values, indices, _ = _custom.kmax_pool(xm.reshape(lines), lengths,
                                               k if isinstance(k, Tensor) else None, width)
        out = KMax(values.reshape(*batch, width), indices.reshape(*batch, width))
    elif lengths is None and isinstance(k, int):
        out = _kmax_lines(xm if xm.dim() > 1 else xm.unsqueeze(0), k)
        out = KMax(*(t.reshape(*batch, k) for t in out))
    else:
        out = _kmax_lines_masked(xm.reshape(lines), k, lengths)
        out = KMax(*(t.reshape(*batch, width) for t in out))
    out = KMax(out.values.movedim(-1, dim), out.indices.movedim(-1, dim))
    return out if return_indices else out.values


class KMaxPool1d(nn.Module):
    """Module form of :func:`kmax_pool1d`; ``forward(x, lengths=None)``."""

    def __init__(self, k: int, dim: int = -1, *, return_indices: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.k, self.dim, self.return_indices, self.backend = k, dim, return_indices, backend

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor | KMax:
        return kmax_pool1d(x, self.k, self.dim, lengths=lengths,
                           return_indices=self.return_indices, backend=self.backend)

    def extra_repr(self) -> str:
        extra = ", return_indices=True" if self.return_indices else ""
        if self.backend != "auto":
            extra += f", backend={self.backend!r}"
        return f"k={self.k}, dim={self.dim}{extra}"


def kmax_pool2d(x: Tensor, k: int | float, *, backend: str = "auto") -> KMax:
    """k-max pooling over each map: the ``k`` largest of a channel's H·W values, in their
    spatial (row-major) order, with their positions.

    The rule, shared with :func:`kmax_pool1d` and WILDCAT: NaN ranks above +inf (as in
    ``torch.sort``), so a map holding NaN keeps it — NaN comes out only where NaN went in;
    -0.0 equals 0.0; of values tied at the k-th largest, the earliest positions (row-major)
    win. Both backends select exactly the same positions. A map of equal values keeps its
    first k positions.

    Args:
        x: Tensor[N, C, H, W].
        k: an int count in [1, H·W], or a float fraction of H·W in (0, 1] (rounded, at
            least 1).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``. The Triton kernel holds each map
            in one program and takes maps of up to 16384 positions; ``"auto"`` uses torch
            beyond that.

    Returns:
        ``KMax(values, indices)``: ``values`` Tensor[N, C, k] in x's dtype and ``indices``
        int64 Tensor[N, C, k], increasing flat positions ``h·W + w`` (so
        ``x.flatten(2).gather(2, indices) == values``). The gradient of each value goes to
        its position; the rest of the map gets 0.
    """
    check_tensor(x, 4, "[N, C, H, W]")
    positions = x.shape[2] * x.shape[3]
    k = resolve_k(k, positions, "k", allow_zero=False)
    be = resolve_backend(backend, x, "kmax_pool2d")
    if be == "triton" and positions > TRITON_MAX_POSITIONS:
        if backend == "triton":
            raise ValueError(f"kmax_pool2d: backend='triton' takes maps of at most "
                             f"{TRITON_MAX_POSITIONS} positions, got H·W = {positions}")
        be = "torch"
    if be == "torch":
        return _kmax_lines(x.flatten(2), k)
    values, indices, _ = _custom.kmax_pool(kernel_ready(x), None, None, k)
    return KMax(values, indices)


class KMaxPool2d(nn.Module):
    """Module form of :func:`kmax_pool2d`; returns ``values`` alone unless
    ``return_indices``."""

    def __init__(self, k: int | float, *, return_indices: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.k, self.return_indices, self.backend = k, return_indices, backend

    def forward(self, x: Tensor) -> Tensor | KMax:
        out = kmax_pool2d(x, self.k, backend=self.backend)
        return out if self.return_indices else out.values

    def extra_repr(self) -> str:
        extra = ", return_indices=True" if self.return_indices else ""
        return f"k={self.k}{extra}, backend={self.backend!r}"


# ---------------------------------------------------------------------- dynamic k-max


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        rule = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be {rule}, got {value}")
    return value


def dynamic_k(layer: int, num_layers: int, length: int | Tensor, k_top: int) -> int | Tensor:
    """The DCNN's pooling parameter for a layer (Kalchbrenner et al., ACL 2014, eq. 4):
    ``k_l = max(k_top, ceil((L − l) / L · s))``.

    Computed in integers (``ceil`` exactly, no float rounding). The top layer (l = L) gets
    ``k_top``. The formula is returned as is: it can exceed a short sequence's length
    (:class:`DynamicKMaxPool1d` keeps at most the length).

    Args:
        layer: l, the 1-based index of the convolutional layer, in [1, num_layers].
        num_layers: L, the number of convolutional layers, >= 1.
        length: s, the sequence length: an int >= 1, or an integer tensor of lengths
            (any shape, each >= 1) for one k per sequence.
        k_top: the top layer's k, >= 1.

    Returns:
        An int, or an int64 tensor shaped as ``length``.
    """
    num_layers = _check_int(num_layers, "num_layers", 1)
    layer = _check_int(layer, "layer", 1, num_layers)
    k_top = _check_int(k_top, "k_top", 1)
    rest = num_layers - layer
    if isinstance(length, Tensor):
        if length.dtype == torch.bool or length.is_floating_point() or length.is_complex():
            raise TypeError(f"`length` must be an integer tensor, got dtype {length.dtype}")
        if length.numel() and not torch.compiler.is_compiling() and int(length.min()) < 1:
            raise ValueError(f"`length` must be >= 1, got {int(length.min())}")
        length = length.long()
        return torch.clamp_min((rest * length + num_layers - 1) // num_layers, k_top)
    length = _check_int(length, "length", 1)
    return max(k_top, (rest * length + num_layers - 1) // num_layers)


class DynamicKMaxPool1d(nn.Module):
    """Dynamic k-max pooling (the DCNN of Kalchbrenner et al., ACL 2014) for variable-length
    batches: layer l of L keeps ``k_l = max(k_top, ceil((L − l)/L · s))`` of a sequence of
    length s (:func:`dynamic_k`), each sequence its own k.

    ``forward(x, lengths=None)``: ``x`` Tensor[N, C, S], padded past each sequence's
    length; ``lengths`` int64 Tensor[N] in [1, S] (None: every sequence is S long). Padded
    positions are never selected, whatever they hold. A sequence keeps
    ``k_n = min(k_l(lengths[n]), lengths[n])`` values (one shorter than k_top keeps them
    all) by :func:`kmax_pool1d`'s rule, in order. The output is as wide as the longest
    sequence's k_l (so the top layer always gives k_top columns), zero-padded.

    Returns:
        :class:`DynamicKMax`: ``values`` Tensor[N, C, K], zeros past ``k_n``; ``indices``
        Tensor[N, C, K] int64, -1 past ``k_n``; ``lengths`` Tensor[N] int64, the ``k_n``
        (the next layer's lengths). The gradient goes to the selected positions.
    """

    def __init__(self, layer: int, num_layers: int, k_top: int, *,
                 backend: str = "auto") -> None:
        super().__init__()
        dynamic_k(layer, num_layers, 1, k_top)  # checks the arguments
        self.layer, self.num_layers, self.k_top, self.backend = layer, num_layers, k_top, backend

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> DynamicKMax:
        check_tensor(x, 3, "[N, C, S]")
        n, size = x.shape[0], x.shape[2]
        args = (self.layer, self.num_layers)
        if lengths is None:
            k = min(dynamic_k(*args, size, self.k_top), size)
            width = dynamic_k(*args, size, self.k_top)
            out = kmax_pool1d(x, k, return_indices=True, backend=self.backend)
            kept = torch.full((n,), k, dtype=torch.int64, device=x.device)
        else:
            lengths = _check_lengths(lengths, "lengths", n, size, x.device)
            kept = torch.minimum(dynamic_k(*args, lengths, self.k_top), lengths)
            width = dynamic_k(*args, int(lengths.max()), self.k_top)
            out = kmax_pool1d(x, kept, lengths=lengths, return_indices=True,
                              backend=self.backend)
        extra = width - out.values.shape[-1]
        values, indices = out
        if extra > 0:  # every sequence is shorter than k_top
            values = F.pad(values, (0, extra))
            indices = F.pad(indices, (0, extra), value=-1)
        return DynamicKMax(values, indices, kept)

    def extra_repr(self) -> str:
        return (f"layer={self.layer}, num_layers={self.num_layers}, k_top={self.k_top}, "
                f"backend={self.backend!r}")
