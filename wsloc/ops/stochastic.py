"""Stochastic pooling (Zeiler & Fergus, ICLR 2013)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import (
    STOCH_EVAL,
    STOCH_TRAIN,
    check_tensor,
    resolve_backend,
    to_5d,
    window_columns,
    window_geometry,
)

__all__ = ["stochastic_pool2d", "StochasticPool2d"]


def _stochastic_torch(x: Tensor, u: Tensor | None, k, s) -> Tensor:
    """The PyTorch path (and the kernels' oracle), on windows stacked position-first."""
    if u is None:  # eval: Σ p·a = Σa² / Σa = avg(a²) / avg(a); an all-zero window averages
        mean = F.avg_pool2d(x, k, s)
        safe = torch.where(mean == 0, torch.ones_like(mean), mean)
        return torch.where(mean == 0, mean, F.avg_pool2d(x * x, k, s) / safe)
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
    if not torch.compiler.is_compiling() and bool(x.amin() < 0):
        raise ValueError(
            f"stochastic_pool2d needs non-negative inputs (p_i = a_i / Σa), got min(x) = "
            f"{x.min().item()}"
        )
    u = torch.rand((x.shape[0], x.shape[1], *out), device=x.device) if training else None
    if resolve_backend(backend, x, "stochastic_pool2d") == "torch":
        return _stochastic_torch(x, u, k, s).reshape(x.shape[0], x.shape[1], *out)
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
