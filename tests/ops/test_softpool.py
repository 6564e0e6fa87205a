import pytest
import torch

from tests.conftest import KERNEL_DEVICES, TOL
from tests.ops import oracles
from wsloc.ops import SoftPool2d, soft_pool1d, soft_pool2d, soft_pool3d

FNS = {1: soft_pool1d, 2: soft_pool2d, 3: soft_pool3d}

# (spatial shape, kernel, stride); None = global
CASES = [
    ((9,), None, None),
    ((9,), 3, 2),
    ((10,), 2, 3),
    ((1, 1), None, None),
    ((7, 7), None, None),
    ((13, 17), (2, 3), (1, 2)),
    ((7, 7), 3, 1),  # overlapping windows
    ((8, 9), 2, 3),  # stride > kernel
    ((13, 17), 3, None),
    ((4, 5, 6), None, None),
    ((5, 6, 7), (2, 3, 2), (1, 2, 3)),
]


def _tuple(v, nd):
    return None if v is None else ((v,) * nd if isinstance(v, int) else v)


def _oracle(x, k, s):
    nd = x.dim() - 2
    y = oracles.pool(x.double().numpy(), lambda v, c: oracles.softpool(v), _tuple(k, nd),
                     _tuple(s, nd) or _tuple(k, nd))
    return torch.from_numpy(y.reshape(y.shape[:2]) if k is None else y)


@pytest.mark.parametrize("spatial,k,s", CASES)
def test_reference_matches_loop_oracle(spatial, k, s):
    x = torch.randn(2, 3, *spatial, dtype=torch.float64) * 2
    y = FNS[len(spatial)](x, k, s, backend="torch")
    torch.testing.assert_close(y, _oracle(x, k, s), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spatial,k,s", [((6, 7), None, None), ((7, 7), 3, 2), ((9,), 2, 1)])
def test_reference_gradcheck(spatial, k, s):
    x = torch.randn(2, 2, *spatial, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: FNS[len(spatial)](x, k, s, backend="torch"), (x,))


def test_exact_gradient_formula():
    """dy/dx_i = w_i (1 + x_i - y), the paper's exact gradient (its CUDA code drops the
    (1 + x_i - y) term)."""
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    y = soft_pool2d(x, backend="torch")
    y.backward()
    w = torch.softmax(x.detach().flatten(), 0).reshape(3, 4)
    torch.testing.assert_close(x.grad[0, 0], w * (1 + x.detach()[0, 0] - y.detach()[0, 0]))


def test_per_channel_not_channel_summed():
    # the official CPU path sums exp over channels; per channel, a constant channel pools to
    # itself whatever the other channels hold
    x = torch.randn(1, 2, 4, 4)
    x[0, 1] = 2.0
    x[0, 0] *= 50
    y = soft_pool2d(x, 2, backend="torch")
    assert torch.equal(y[0, 1], torch.full((2, 2), 2.0))


BACKENDS = ["torch", pytest.param("triton", marks=KERNEL_DEVICES[0].marks)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [None, 2])
def test_no_overflow_above_88(backend, k):
    # exp(89) overflows float32: the official code returns inf/NaN here
    for value in (89.0, 1e3, 3e38):
        x = torch.full((1, 1, 4, 4), value)
        x[0, 0, 0, 0] = value / 2
        y = soft_pool2d(x, k, backend=backend)
        assert torch.isfinite(y).all(), value
        ref = soft_pool2d(x.double(), k, backend="torch")
        torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=0)
    xg = torch.full((1, 1, 4, 4), 100.0, requires_grad=True)
    soft_pool2d(xg, k, backend=backend).sum().backward()
    assert torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_values_and_nan(backend):
    for value in (0.1, -7.3, 1e4):
        x = torch.full((1, 2, 6, 6), value)
        for k in (None, 2, 3):
            y = soft_pool2d(x, k, backend=backend)
            assert torch.equal(y, torch.full_like(y, value)), (value, k)
    x = torch.randn(1, 2, 6, 6)
    x[0, 1, 5, 5] = float("nan")
    y = soft_pool2d(x, 3, backend=backend)
    assert torch.isnan(y[0, 1, 1, 1]) and torch.isfinite(y[0, 0]).all()
    assert torch.isfinite(y[0, 1]).sum() == 3
    assert torch.isnan(soft_pool2d(x, backend=backend)[0, 1])


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("spatial,k,s", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_reference(device, spatial, k, s, dtype):
    fn = FNS[len(spatial)]
    x = (torch.randn(2, 3, *spatial) * 2).to(device=device, dtype=dtype)
    xt = x.clone().requires_grad_()
    xr = x.double().requires_grad_()
    yt = fn(xt, k, s, backend="triton")
    yr = fn(xr, k, s, backend="torch")
    assert yt.dtype == dtype and yt.shape == yr.shape
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(yt.double(), yr, atol=atol * 10, rtol=rtol)
    g = torch.randn_like(yr)
    yt.backward(g.to(dtype))
    yr.backward(g)
    torch.testing.assert_close(xt.grad.double(), xr.grad, atol=atol * 10, rtol=rtol * 10)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("k,s", [(None, None), (2, None), (3, 2)])
def test_triton_channels_last_and_strided(device, k, s):
    base = torch.randn(2, 6, 9, 11, device=device)
    for x in (base.contiguous(memory_format=torch.channels_last), base[:, ::2],
              base.transpose(2, 3)):
        xt = x.detach().requires_grad_()
        xr = x.detach().double().requires_grad_()
        yt = soft_pool2d(xt, k, s, backend="triton")
        yr = soft_pool2d(xr, k, s, backend="torch")
        torch.testing.assert_close(yt.double(), yr, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(yr)
        yt.backward(g.float())
        yr.backward(g)
        torch.testing.assert_close(xt.grad.double(), xr.grad, atol=1e-5, rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match=r"`x` must be 3-D \[N, C, L\]"):
        soft_pool1d(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"`x` must be 5-D"):
        soft_pool3d(torch.randn(2, 3, 4, 4))
    with pytest.raises(TypeError, match=r"floating-point"):
        soft_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        soft_pool2d(torch.randn(1, 1, 4, 4), 5)
    with pytest.raises(TypeError, match=r"`kernel_size` must be an int or a sequence of 2"):
        soft_pool2d(torch.randn(1, 1, 4, 4), (2, 2, 2))
    with pytest.raises(ValueError, match=r"`stride` must be >= 1"):
        soft_pool2d(torch.randn(1, 1, 4, 4), 2, 0)
    with pytest.raises(ValueError, match=r"`stride` needs a `kernel_size`"):
        soft_pool2d(torch.randn(1, 1, 4, 4), None, 2)


def test_module():
    pool = SoftPool2d(2)
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(pool(x), soft_pool2d(x, 2))
    assert repr(pool) == "SoftPool2d(kernel_size=2, stride=None, backend='auto')"


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-4), (torch.bfloat16, 2e-3)])
@pytest.mark.parametrize("k", [None, 2])
def test_half_precision_accumulates_in_float32(dtype, tol, k):
    x = (torch.randn(4, 8, 16, 16) * 2).to(dtype)
    y = soft_pool2d(x, k, backend="torch")
    assert y.dtype == dtype
    kk = None if k is None else (k, k)
    ref = torch.from_numpy(oracles.pool(x.double().numpy(), lambda v, c: oracles.softpool(v),
                                        kk, kk))
    ref = ref.reshape(y.shape)
    bound = tol + ref.abs() * torch.finfo(dtype).eps
    assert ((y.double() - ref).abs() <= bound).all(), (y.double() - ref).abs().max()
