"""wsloc.ops: pooling for weakly-supervised localization, one API for all of it.

Custom ops (Triton kernels on CUDA, a pure-PyTorch reference on CPU and as fallback, picked
by ``backend="auto" | "triton" | "torch"``): :func:`lse_pool2d`, :func:`soft_pool1d`/2d/3d,
:func:`wildcat_pool2d`, :func:`stochastic_pool2d`, :func:`sort_pool2d`,
:func:`kmax_pool1d`/:func:`kmax_pool2d` and the DCNN's :class:`DynamicKMaxPool1d` (with
:func:`dynamic_k`; k-max and WILDCAT share one selection and one kernel); and torch's own
max/avg/adaptive/global pooling and unpooling, re-exported.
"""

from wsloc.ops.kmax import (
    DynamicKMax,
    DynamicKMaxPool1d,
    KMax,
    KMaxPool1d,
    KMaxPool2d,
    dynamic_k,
    kmax_pool1d,
    kmax_pool2d,
)
from wsloc.ops.lse import LSEPool2d, lse_pool2d
from wsloc.ops.native import *  # noqa: F403
from wsloc.ops.native import __all__ as _native_all
from wsloc.ops.softpool import (
    SoftPool1d,
    SoftPool2d,
    SoftPool3d,
    soft_pool1d,
    soft_pool2d,
    soft_pool3d,
)
from wsloc.ops.sort import SortPool2d, sort_pool2d
from wsloc.ops.stochastic import StochasticPool2d, stochastic_pool2d
from wsloc.ops.wildcat import WildcatPool2d, wildcat_pool2d

__all__ = [
    "lse_pool2d", "LSEPool2d",
    "soft_pool1d", "soft_pool2d", "soft_pool3d", "SoftPool1d", "SoftPool2d", "SoftPool3d",
    "wildcat_pool2d", "WildcatPool2d",
    "stochastic_pool2d", "StochasticPool2d",
    "sort_pool2d", "SortPool2d",
    "kmax_pool1d", "KMaxPool1d", "kmax_pool2d", "KMaxPool2d", "KMax",
    "dynamic_k", "DynamicKMaxPool1d", "DynamicKMax",
    *_native_all,
]
