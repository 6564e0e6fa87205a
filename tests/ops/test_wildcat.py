import pytest
import torch

from tests.conftest import KERNEL_DEVICES, TOL
from tests.ops import oracles
from wsloc.ops import WildcatPool2d, kmax_pool2d, wildcat_pool2d

BACKENDS = ["torch", pytest.param("triton", marks=KERNEL_DEVICES[0].marks)]

CASES = [((1, 1), 1, 0, 1.0), ((7, 7), 5, 3, 0.7), ((13, 17), 0.1, 0.2, 0.5),
         ((8, 8), 64, 64, 1.0), ((5, 6), 1, 1, -0.3), ((16, 16), 0.5, 0.0, 1.0)]


def _count(k, positions):
    return k if isinstance(k, int) else (0 if k == 0 else max(1, round(k * positions)))


@pytest.mark.parametrize("spatial,kmax,kmin,alpha", CASES)
def test_reference_matches_loop_oracle(spatial, kmax, kmin, alpha):
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    positions = spatial[0] * spatial[1]
    a, b = _count(kmax, positions), _count(kmin, positions)
    expected = oracles.pool(x.numpy(), lambda v, c: oracles.wildcat(v, a, b, alpha))
    y = wildcat_pool2d(x, kmax, kmin, alpha, backend="torch")
    torch.testing.assert_close(y, torch.from_numpy(expected.reshape(2, 3)))


def test_gradcheck():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: wildcat_pool2d(x, 4, 3, 0.6, backend="torch"), (x,))


def test_limits_are_max_mean_and_min():
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(wildcat_pool2d(x, 1), x.amax((2, 3)))
    torch.testing.assert_close(wildcat_pool2d(x, 25), x.mean((2, 3)))
    torch.testing.assert_close(wildcat_pool2d(x, 1, 1, 1.0), x.amax((2, 3)) + x.amin((2, 3)))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("spatial,kmax,kmin,alpha", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_reference(device, spatial, kmax, kmin, alpha, dtype):
    x = torch.randn(2, 3, *spatial).to(device=device, dtype=dtype)
    xt = x.clone().requires_grad_()
    xr = x.double().requires_grad_()
    yt = wildcat_pool2d(xt, kmax, kmin, alpha, backend="triton")
    yr = wildcat_pool2d(xr, kmax, kmin, alpha, backend="torch")
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(yt.double(), yr, atol=atol * 10, rtol=rtol)
    g = torch.randn_like(yr)
    yt.backward(g.to(dtype))
    yr.backward(g)
    # low precision creates ties: both backends give them to the same (earliest) positions
    torch.testing.assert_close(xt.grad.double(), xr.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_earliest_positions(backend):
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    y = wildcat_pool2d(x, 3, 2, 0.5, backend=backend)
    y.sum().backward()
    # every position ties: k-max takes positions 0-2 (1/3 each), k-min 0-1 (0.5/2 each)
    expected = torch.zeros(16)
    expected[:3] += 1 / 3
    expected[:2] += 0.25
    torch.testing.assert_close(x.grad.flatten(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kmax,kmin,alpha", [(5, 3, 0.7), (1, 20, -0.5), (20, 20, 1.0)])
def test_built_on_kmax_of_x_and_of_minus_x(backend, kmax, kmin, alpha):
    # ties and NaN included: WILDCAT selects exactly what k-max pooling of x and -x selects
    x = torch.randint(0, 3, (2, 3, 4, 5)).float()
    x[1, 0, 2, 1] = float("nan")
    xw, xk = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = wildcat_pool2d(xw, kmax, kmin, alpha, backend=backend)
    top = kmax_pool2d(xk, kmax, backend=backend).values.mean(-1)
    bottom = -kmax_pool2d(-xk, kmin, backend=backend).values.mean(-1)
    composed = top + alpha * bottom
    torch.testing.assert_close(y, composed, equal_nan=True)
    nan = torch.zeros(2, 3, dtype=torch.bool)
    nan[1, 0] = True
    assert torch.equal(y.isnan(), nan)
    g = torch.randn(2, 3)
    y.backward(g)
    composed.backward(g)
    torch.testing.assert_close(xw.grad, xk.grad)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_triton_channels_last_and_nan(device):
    x = torch.randn(2, 4, 6, 6, device=device)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(wildcat_pool2d(cl, 4, 2, backend="triton"),
                               wildcat_pool2d(x, 4, 2, backend="torch"))
    x[0, 1, 2, 2] = float("nan")
    y = wildcat_pool2d(x, 4, 2, backend="triton")
    assert torch.isnan(y[0, 1]) and torch.isfinite(y[1]).all() and torch.isfinite(y[0, 0])


def test_errors():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"`kmax` must be in \[1, H·W = 16\], got 17"):
        wildcat_pool2d(x, 17)
    with pytest.raises(ValueError, match=r"`kmax` must be in \[1, H·W = 16\], got 0"):
        wildcat_pool2d(x, 0)
    with pytest.raises(ValueError, match=r"`kmin` as a fraction must lie in \(0, 1\]"):
        wildcat_pool2d(x, 1, 1.5)
    with pytest.raises(TypeError, match=r"`kmax` must be an int count or a float"):
        wildcat_pool2d(x, "3")
    with pytest.raises(ValueError, match=r"`x` must be 4-D"):
        wildcat_pool2d(x[0], 1)


def test_module():
    m = WildcatPool2d(kmax=0.25, kmin=0.25, alpha=0.7)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(m(x), wildcat_pool2d(x, 4, 4, 0.7))
    assert "kmax=0.25, kmin=0.25, alpha=0.7" in repr(m)
