import pytest
import torch

from tests.conftest import KERNEL_DEVICES
from tests.ops import oracles
from wsloc.ops import StochasticPool2d, stochastic_pool2d

BACKENDS = ["torch", pytest.param("triton", marks=KERNEL_DEVICES[0].marks)]
GEOMETRIES = [((7, 7), 2, None), ((13, 17), (3, 2), (2, 3)), ((6, 6), 3, 1), ((1, 1), 1, None)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial,k,s", GEOMETRIES)
def test_eval_is_the_expectation(backend, spatial, k, s):
    x = torch.rand(2, 3, *spatial)
    x[0, 0] = 0.0  # all-zero windows give 0
    kk = (k, k) if isinstance(k, int) else k
    ss = None if s is None else ((s, s) if isinstance(s, int) else s)
    expected = oracles.pool(x.numpy(), lambda v, c: oracles.stochastic_expectation(v), kk,
                            ss or kk)
    y = stochastic_pool2d(x, k, s, training=False, backend=backend)
    torch.testing.assert_close(y.double(), torch.from_numpy(expected), atol=1e-6, rtol=1e-5)


def test_eval_gradcheck():
    x = (torch.rand(1, 2, 5, 5, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: stochastic_pool2d(x, 2, 1, training=False, backend="torch"), (x,))
    x = (torch.rand(1, 2, 13, 17, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: stochastic_pool2d(x, (3, 2), (2, 3), training=False, backend="torch"), (x,))


def test_eval_all_zero_windows_pass_the_average_pooling_gradient():
    x = torch.rand(1, 1, 4, 4)
    x[..., :2, :2] = 0.0
    x.requires_grad_()
    y = stochastic_pool2d(x, 2, training=False, backend="torch")
    assert y[0, 0, 0, 0] == 0
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad[0, 0, :2, :2], g[0, 0, 0, 0].expand(2, 2) / 4)


@pytest.mark.parametrize("where", [(2, 5, 0, 0), (0, 63, 6, 6), (1, 0, 3, 2)])
def test_eval_checks_every_element_within_its_pass(where):
    # two blocks of planes (samples 0-1, then 2); (.., 6, 6) lies in no 2x2 window of 7x7
    x = torch.rand(3, 2000, 7, 7)
    x[where] = -0.5
    with pytest.raises(ValueError, match=r"non-negative inputs.*-0.5"):
        stochastic_pool2d(x, 2, training=False, backend="torch")


def test_eval_half_precision_accumulates_in_float32():
    x = torch.rand(2, 3, 13, 17)
    y = stochastic_pool2d(x.half(), 3, 2, training=False, backend="torch")
    assert y.dtype == torch.float16
    ref = stochastic_pool2d(x.half().float(), 3, 2, training=False, backend="torch")
    torch.testing.assert_close(y.float(), ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_follows_the_activation_ratios(backend):
    # one window of four values, sampled in 4000 independent windows at once
    values = torch.tensor([0.0, 1.0, 2.0, 5.0])
    x = values.reshape(1, 1, 2, 2).repeat(1, 4000, 1, 1)
    y = stochastic_pool2d(x, 2, training=True, backend=backend).flatten()
    freq = torch.stack([(y == v).float().mean() for v in values])
    p = values / values.sum()
    # 4000 draws: a binomial's standard deviation is at most 0.008
    assert (freq - p).abs().max() < 0.03, freq
    assert freq[0] == 0  # a zero activation is never picked


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_and_reproducible(backend):
    x = torch.rand(2, 3, 8, 8)
    torch.manual_seed(7)
    a = stochastic_pool2d(x, 2, backend=backend)
    torch.manual_seed(7)
    b = stochastic_pool2d(x, 2, backend=backend)
    c = stochastic_pool2d(x, 2, backend=backend)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every output is one of its window's inputs
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    assert ((windows == a[..., None]).any(-1)).all()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("spatial,k,s", GEOMETRIES)
@pytest.mark.parametrize("training", [True, False])
def test_triton_matches_reference(device, spatial, k, s, training):
    x = torch.rand(2, 3, *spatial, device=device)
    x[1, 2] = 0.0
    xt, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(3)
    yt = stochastic_pool2d(xt, k, s, training=training, backend="triton")
    torch.manual_seed(3)
    yr = stochastic_pool2d(xr, k, s, training=training, backend="torch")
    torch.testing.assert_close(yt, yr, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(yr)
    yt.backward(g)
    yr.backward(g)
    torch.testing.assert_close(xt.grad, xr.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_gradient_goes_to_the_sampled_element(backend):
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    y = stochastic_pool2d(x, 2, backend=backend)
    y.sum().backward()
    assert x.grad.sum() == 4 and ((x.grad == 0) | (x.grad == 1)).all()
    # the positions that got a gradient hold the sampled values
    assert torch.equal(x.detach()[x.grad == 1].sort().values, y.detach().flatten().sort().values)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_gives_nan_out(backend):
    x = torch.rand(1, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    for training in (True, False):
        y = stochastic_pool2d(x, 2, training=training, backend=backend)
        assert torch.isnan(y[0, 0, 0, 0]) and torch.isfinite(y.flatten()[1:]).all()


def test_errors_and_module():
    with pytest.raises(ValueError, match=r"non-negative inputs.*-1.0"):
        stochastic_pool2d(-torch.ones(1, 1, 4, 4), 2)
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        stochastic_pool2d(torch.ones(1, 1, 4, 4), 5)
    m = StochasticPool2d(2)
    x = torch.rand(1, 2, 4, 4)
    torch.testing.assert_close(m.eval()(x), stochastic_pool2d(x, 2, training=False))
    assert repr(m) == "StochasticPool2d(kernel_size=2, stride=None, backend='auto')"
