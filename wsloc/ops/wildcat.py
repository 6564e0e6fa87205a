"""WILDCAT spatial pooling (Durand et al., CVPR 2017): k-max plus alpha times k-min."""

from __future__ import annotations

from torch import Tensor, nn

from wsloc.ops import _custom
from wsloc.ops._common import check_tensor, kernel_ready, resolve_backend

__all__ = ["wildcat_pool2d", "WildcatPool2d"]

# One Triton program sorts a whole map in registers; larger maps take the torch path.
TRITON_MAX_POSITIONS = 16384


def resolve_k(k: int | float, positions: int, name: str, allow_zero: bool) -> int:
    """A count (int) or a fraction of ``positions`` (float in (0, 1]) → a count."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"`{name}` must be an int count or a float fraction, got {k!r}")
    if isinstance(k, float):
        if not 0.0 <= k <= 1.0 or (k == 0.0 and not allow_zero):
            raise ValueError(f"`{name}` as a fraction must lie in (0, 1], got {k}")
        return 0 if k == 0.0 else max(1, round(k * positions))
    low = 0 if allow_zero else 1
    if not low <= k <= positions:
        raise ValueError(
            f"`{name}` must be in [{low}, H·W = {positions}], got {k}"
        )
    return k


def _wildcat_reference(x: Tensor, kmax: int, kmin: int, alpha: float) -> Tensor:
    z = x.flatten(2)
    y = z.topk(kmax, dim=-1).values.mean(-1)
    if kmin > 0:
        y = y + alpha * z.topk(kmin, dim=-1, largest=False).values.mean(-1)
    return y


def wildcat_pool2d(
    x: Tensor, kmax: int | float, kmin: int | float = 0, alpha: float = 1.0, *,
    backend: str = "auto",
) -> Tensor:
    """WILDCAT global pooling: mean of the ``kmax`` highest plus ``alpha`` times the mean of
    the ``kmin`` lowest values of each map.

    Args:
        x: Tensor[N, C, H, W].
        kmax: an int count in [1, H·W], or a float fraction of H·W in (0, 1]
            (rounded, at least 1).
        kmin: as ``kmax``, and 0 (or 0.0) drops the k-min term.
        alpha: weight of the k-min term.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``. The Triton kernel sorts each map
            in one program and takes maps of up to 16384 positions; ``"auto"`` uses torch
            beyond that.

    Returns:
        Tensor[N, C]. The gradient goes to the selected positions (1/kmax each, alpha/kmin
        for the lowest); ties at the k-th value share it equally on the Triton path, while
        torch.topk picks one of them. NaN in a map gives NaN.
    """
    check_tensor(x, 4, "[N, C, H, W]")
    positions = x.shape[2] * x.shape[3]
    kmax = resolve_k(kmax, positions, "kmax", allow_zero=False)
    kmin = resolve_k(kmin, positions, "kmin", allow_zero=True)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"`alpha` must be a float, got {alpha!r}")
    be = resolve_backend(backend, x, "wildcat_pool2d")
    if be == "triton" and positions > TRITON_MAX_POSITIONS:
        if backend == "triton":
            raise ValueError(f"wildcat_pool2d: backend='triton' takes maps of at most "
                             f"{TRITON_MAX_POSITIONS} positions, got H·W = {positions}")
        be = "torch"
    if be == "torch":
        return _wildcat_reference(x, kmax, kmin, float(alpha))
    return _custom.wildcat_pool(kernel_ready(x), kmax, kmin, float(alpha))[0]


class WildcatPool2d(nn.Module):
    """Module form of :func:`wildcat_pool2d`."""

    def __init__(self, kmax: int | float = 1, kmin: int | float = 0, alpha: float = 1.0, *,
                 backend: str = "auto") -> None:
        super().__init__()
        self.kmax, self.kmin, self.alpha, self.backend = kmax, kmin, alpha, backend

    def forward(self, x: Tensor) -> Tensor:
        return wildcat_pool2d(x, self.kmax, self.kmin, self.alpha, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kmax={self.kmax}, kmin={self.kmin}, alpha={self.alpha}, backend={self.backend!r}"
