"""Shared test set-up.

Without a GPU, Triton kernels run under its interpreter on CPU tensors: TRITON_INTERPRET=1
must be set before Triton is first imported, so it is set here, before any test module loads.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from wsloc.ops import _common  # noqa: E402

TRITON_ON_CPU = _common.triton_installed() and os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _nan_filled_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element a kernel forgets to write fails."""
    monkeypatch.setattr(_common, "FILL_OUTPUTS_WITH_NAN", True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The devices the Triton kernels are checked on: CPU under the interpreter, and CUDA.
KERNEL_DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not TRITON_ON_CPU,
                                                 reason="Triton interpreter not active")),
    pytest.param("cuda", marks=pytest.mark.gpu),
]

# Per-dtype tolerances (atol, rtol) for kernel vs. float32/float64 reference.
TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
