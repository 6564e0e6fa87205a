"""Stochastic pooling (Zeiler & Fergus, ICLR 2013)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import (
    STOCH_EVAL,
    STOCH_TRAIN,
    check_tensor,
    resolve_backend,
    to_5d,
    unfold_windows,
    window_geometry,
)

__all__ = ["stochastic_pool2d", "StochasticPool2d"]


def _stochastic_reference(x: Tensor, u: Tensor | None, k, s) -> Tensor:
    w = unfold_windows(x, k, s, (0, 0), 0.0)  # [N, C, OH, OW, K]
    total = w.sum(-1)
    if u is None:  # eval: Σ p·a with p = a / Σa; an all-zero window acts as an average
        safe = torch.where(total == 0, torch.ones_like(total), total)
        weighted = (w * w).sum(-1) / safe
        return torch.where(total == 0, w.mean(-1), weighted)
    # training: the first element whose running sum passes u·Σa (P = a_i / Σa)
    cum = w.detach().cumsum(-1)
    taken = cum > (u * total.detach())[..., None]
    k_all = w.shape[-1]
    positions = torch.arange(k_all, device=x.device)
    last_nz = torch.where(w.detach() > 0, positions, -1).amax(-1)
    fallback = torch.where(last_nz >= 0, last_nz, k_all - 1)
    sel = torch.where(taken.any(-1), taken.to(torch.uint8).argmax(-1), fallback)
    y = w.gather(-1, sel[..., None]).squeeze(-1)
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
    if not torch.compiler.is_compiling() and bool((x < 0).any()):
        raise ValueError(
            f"stochastic_pool2d needs non-negative inputs (p_i = a_i / Σa), got min(x) = "
            f"{x.min().item()}"
        )
    u = torch.rand((x.shape[0], x.shape[1], *out), device=x.device) if training else None
    if resolve_backend(backend, x, "stochastic_pool2d") == "torch":
        return _stochastic_reference(x, u, k, s)
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
