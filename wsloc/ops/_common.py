"""Argument checks, backend choice and layout helpers shared by the pooling ops."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

BACKENDS = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Mode ids shared by the Triton kernels and the custom ops (see _kernels.py).
LSE, SOFT, STOCH_EVAL, STOCH_TRAIN = 0, 1, 2, 3

# One Triton program holds (and sorts) a whole map in registers in the k-max kernels (k-max
# and WILDCAT); larger maps take the torch path.
TRITON_MAX_POSITIONS = 16384


def check_tensor(x: object, ndim: int, layout: str, name: str = "x") -> Tensor:
    """Check that ``x`` is a floating tensor of rank ``ndim`` (``layout`` names the axes)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"`{name}` must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
    return x


def ntuple(value: int | Sequence[int], n: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """Turn an int or a sequence of ``n`` ints into a tuple, checking each is ``>= minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int or a sequence of {n} ints, got {value!r}")
    if isinstance(value, int):
        out = (value,) * n
    elif isinstance(value, Sequence) and len(value) == n and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        out = tuple(value)
    else:
        raise TypeError(f"`{name}` must be an int or a sequence of {n} ints, got {value!r}")
    if any(v < minimum for v in out):
        raise ValueError(f"`{name}` must be >= {minimum} in every dimension, got {value!r}")
    return out


def window_geometry(
    spatial: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
    padding: int | Sequence[int] = 0,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Validate a pooling window and return ``(kernel, stride, padding, output_size)``.

    Padding follows torch's rule (at most half the window), so that every window holds at
    least one real element; padded positions are excluded from the window.
    """
    n = len(spatial)
    k = ntuple(kernel_size, n, "kernel_size")
    s = k if stride is None else ntuple(stride, n, "stride")
    p = ntuple(padding, n, "padding", minimum=0)
    for kk, pp in zip(k, p):
        if pp > kk // 2:
            raise ValueError(
                f"`padding` must be at most half of `kernel_size`, got padding={p} for "
                f"kernel_size={k}"
            )
    for size, kk, pp in zip(spatial, k, p):
        if kk > size + 2 * pp:
            raise ValueError(
                f"`kernel_size` {k} is larger than the padded input {tuple(spatial)} "
                f"(padding {p})"
            )
    out = tuple((size + 2 * pp - kk) // ss + 1 for size, kk, ss, pp in zip(spatial, k, s, p))
    return k, s, p, out


def resolve_k(k: int | float, positions: int, name: str, allow_zero: bool,
              what: str = "H·W") -> int:
    """A count (int) or a fraction of ``positions`` (float in (0, 1]) → a count.

    A fraction is rounded to the nearest count and is at least 1 (0.0 gives 0 where
    ``allow_zero``). ``what`` names ``positions`` in the error message.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"`{name}` must be an int count or a float fraction, got {k!r}")
    if isinstance(k, float):
        if not 0.0 <= k <= 1.0 or (k == 0.0 and not allow_zero):
            raise ValueError(f"`{name}` as a fraction must lie in (0, 1], got {k}")
        return 0 if k == 0.0 else max(1, round(k * positions))
    low = 0 if allow_zero else 1
    if not low <= k <= positions:
        raise ValueError(f"`{name}` must be in [{low}, {what} = {positions}], got {k}")
    return k


def check_r(r: float | Tensor, channels: int, device: torch.device | None = None
            ) -> Tensor | float:
    """Check the LSE sharpness: a positive number or a tensor of shape [C] (or one element)
    on ``device``."""
    if isinstance(r, bool):
        raise TypeError(f"`r` must be a positive float or a tensor of shape [C], got {r!r}")
    if isinstance(r, (int, float)):
        if not r > 0 or math.isinf(r):
            raise ValueError(f"`r` must be positive and finite, got {r}")
        return float(r)
    if not isinstance(r, Tensor):
        raise TypeError(
            f"`r` must be a positive float or a tensor of shape [C], got {type(r).__name__}"
        )
    if not r.is_floating_point():
        raise TypeError(f"`r` must be a floating-point tensor, got dtype {r.dtype}")
    if device is not None and r.device != device:
        raise ValueError(f"`r` must be on the input's device {device}, got {r.device}")
    if r.numel() != 1 and tuple(r.shape) != (channels,):
        raise ValueError(
            f"`r` must be a scalar or have shape [C] = [{channels}], got shape {tuple(r.shape)}"
        )
    # A value check costs a device sync; it is skipped while torch.compile traces.
    if not torch.compiler.is_compiling() and bool((r <= 0).any()):
        raise ValueError(f"`r` must be positive, got min(r) = {r.min().item()}")
    return r


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # finds, does not import


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend: str, x: Tensor, op: str) -> str:
    """Pick ``"triton"`` or ``"torch"`` for ``x``.

    ``"auto"`` takes Triton for CUDA tensors of a supported dtype when Triton is installed,
    and the PyTorch path otherwise. ``"triton"`` raises when it cannot run; on CPU tensors it
    runs under Triton's interpreter when TRITON_INTERPRET=1 (how the tests check kernels
    without a GPU).
    """
    if backend not in BACKENDS:
        valid = ", ".join(map(repr, BACKENDS))
        raise ValueError(f"`backend` must be one of {valid}, got {backend!r}")
    if backend == "torch":
        return "torch"
    reason = None
    if not triton_installed():
        reason = "Triton is not installed"
    elif not (x.is_cuda or (x.device.type == "cpu" and triton_interpreting())):
        reason = f"it needs a CUDA tensor (or TRITON_INTERPRET=1 on CPU), got device {x.device}"
    elif x.dtype not in KERNEL_DTYPES:
        reason = f"its kernels take float32, float16 or bfloat16, got {x.dtype}"
    if reason is None and (x.is_cuda or backend == "triton"):
        return "triton"  # on CPU (the interpreter) only when asked for by name
    if backend == "triton":
        raise ValueError(f"{op}: backend='triton' is not available: {reason}")
    return "torch"


# Tests set this to fill every kernel output with NaN first, so an unwritten element fails.
FILL_OUTPUTS_WITH_NAN = False


def new_output(shape: Sequence[int] | int, like: Tensor,
               dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised contiguous tensor on ``like``'s device (NaN-filled under tests;
    integer tensors are filled with their dtype's minimum then)."""
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if not (FILL_OUTPUTS_WITH_NAN and out.numel()):
        return out
    return out.fill_(float("nan") if out.is_floating_point() else torch.iinfo(out.dtype).min)


def empty_like_layout(x: Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    """An empty tensor of ``shape`` whose dimensions are laid out in memory as ``x``'s are.

    Keeps channels_last inputs channels_last. Dimensions are ordered by ``x``'s strides.
    """
    nd = x.dim()
    perm = sorted(range(nd), key=lambda d: -x.stride(d))
    inverse = [0] * nd
    for i, d in enumerate(perm):
        inverse[d] = i
    return new_output([shape[d] for d in perm], x, dtype).permute(inverse)


def to_5d(x: Tensor) -> Tensor:
    """View [N, C, *spatial] (1 to 3 spatial dims) as [N, C, D, H, W] without copying."""
    while x.dim() < 5:
        x = x.unsqueeze(2)
    return x


def flat_spatial_stride(x: Tensor) -> int | None:
    """The stride that walks the flattened spatial dims of [N, C, *spatial], or None.

    Contiguous and channels_last tensors both qualify; other layouts must be copied first.
    """
    step = None
    expected = None
    for d in range(x.dim() - 1, 1, -1):
        if x.size(d) == 1:
            continue
        if step is None:
            step = x.stride(d)
            expected = step * x.size(d)
        elif x.stride(d) != expected:
            return None
        else:
            expected = expected * x.size(d)
    return 1 if step is None else step


def window_columns(x: Tensor, k: Sequence[int], s: Sequence[int], p: Sequence[int],
                   fill: float) -> Tensor:
    """All pooling windows of [N, C, *spatial] as [N·C, prod(k), prod(out)] (one copy).

    The window axis is the middle one, so reducing over it runs over contiguous rows.
    1-D and 2-D inputs go through ``F.unfold`` (whose backward is one ``fold``); 3-D ones
    through strided slices. Padded positions hold ``fill`` (``-inf`` keeps them out of a
    log-sum-exp).
    """
    n, c = x.shape[:2]
    nd = len(k)
    if any(p):
        pad: list[int] = []
        for pp in reversed(p):
            pad += [pp, pp]
        x = torch.nn.functional.pad(x, pad, value=fill)
    if nd <= 2:
        if nd == 1:
            x, k, s = x.unsqueeze(2), (1, *k), (1, *s)
        cols = torch.nn.functional.unfold(x, tuple(k), stride=tuple(s))  # [N, C·K, L]
        return cols.view(n * c, math.prod(k), -1)
    out = [(x.shape[2 + i] - k[i]) // s[i] + 1 for i in range(nd)]
    slices = []
    for offset in itertools.product(*(range(kk) for kk in k)):
        index = [slice(None), slice(None)]
        index += [slice(o, o + (m - 1) * ss + 1, ss) for o, m, ss in zip(offset, out, s)]
        slices.append(x[tuple(index)].reshape(n * c, -1))
    return torch.stack(slices, 1)


def window_validity(spatial: Sequence[int], k: Sequence[int], s: Sequence[int],
                    p: Sequence[int], device: torch.device) -> Tensor:
    """Which slots of :func:`window_columns`' output are real input, as a bool tensor
    [1, prod(k), prod(out)] (False where a window reaches into the padding). Padding is
    known by position, so a genuine ``-inf`` in the input is still counted."""
    ones = torch.ones((1, 1, *spatial), device=device)
    return window_columns(ones, k, s, p, 0.0) > 0


def accumulation_view(x: Tensor) -> Tensor:
    """``x`` in float32 when it is float16/bfloat16 (the PyTorch path accumulates in float32,
    as the kernels do), else ``x`` itself. Differentiable: the gradient is cast back."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kernel_ready(x: Tensor) -> Tensor:
    """``x`` itself when it is dense with flattenable spatial dims (contiguous or
    channels_last), else a contiguous copy: what the global kernels index."""
    if flat_spatial_stride(x) is not None and empty_like_layout(x, x.shape).stride() == x.stride():
        return x
    return x.contiguous()
