import math

import numpy as np
import pytest
import torch

from tests.conftest import KERNEL_DEVICES, TOL
from tests.ops import oracles
from wsloc.ops import LSEPool2d, lse_pool2d

# (shape, kernel_size, stride, padding); None = global
GEOMETRIES = [
    ((2, 3, 1, 1), None, None, 0),
    ((2, 3, 7, 7), None, None, 0),
    ((1, 2, 13, 17), None, None, 0),
    ((2, 3, 7, 7), 3, 2, 1),
    ((1, 2, 13, 17), (2, 3), (1, 2), 0),
    ((2, 2, 7, 9), 2, 3, 0),  # stride > kernel
    ((1, 3, 5, 6), (3, 2), 1, (1, 1)),
    ((1, 1, 1, 1), 1, None, 0),
]


def _oracle(x, r, k, s, p):
    rs = r.tolist() if isinstance(r, torch.Tensor) else [r] * x.shape[1]
    kk = None if k is None else ((k, k) if isinstance(k, int) else k)
    ss = None if s is None else ((s, s) if isinstance(s, int) else s)
    pp = (p, p) if isinstance(p, int) else p
    y = oracles.pool(x.double().numpy(), lambda v, c: oracles.lse(v, rs[c]), kk, ss or kk, pp)
    return torch.from_numpy(y.reshape(y.shape[:2]) if k is None else y)


@pytest.mark.parametrize("shape,k,s,p", GEOMETRIES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_reference_matches_loop_oracle(shape, k, s, p, per_channel):
    x = torch.randn(shape, dtype=torch.float64) * 3
    r = torch.linspace(0.5, 12.0, shape[1], dtype=torch.float64) if per_channel else 5.0
    y = lse_pool2d(x, r, k, s, p, backend="torch")
    torch.testing.assert_close(y, _oracle(x, r, k, s, p), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k,s,p", [(None, None, 0), (3, 2, 1), ((2, 3), (1, 2), 0)])
def test_reference_gradcheck_x_and_r(k, s, p):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    r = torch.tensor([0.7, 3.0, 9.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, r: lse_pool2d(x, r, k, s, p, backend="torch"),
                                    (x, r))


def test_reference_gradient_is_window_softmax():
    # dy/dx_i = exp(r (x_i - y)) / |S| for global pooling (an independent closed form)
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    y = lse_pool2d(x, 2.5, backend="torch")
    y.sum().backward()
    expected = torch.exp(2.5 * (x.detach() - y.detach()[..., None, None])) / 20
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("shape,k,s,p", GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_reference(device, shape, k, s, p, dtype):
    x = (torch.randn(shape) * 2).to(device=device, dtype=dtype)
    r = torch.linspace(1.0, 10.0, shape[1], device=device, requires_grad=True)
    r_ref = r.detach().double().requires_grad_()
    xt = x.clone().requires_grad_()
    xr = x.double().requires_grad_()
    yt = lse_pool2d(xt, r, k, s, p, backend="triton")
    yr = lse_pool2d(xr, r_ref, k, s, p, backend="torch")
    assert yt.dtype == dtype and yt.shape == yr.shape
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(yt.double(), yr, atol=atol * 10, rtol=rtol)
    g = torch.randn(yr.shape, dtype=torch.float64, device=device)
    yt.backward(g.to(dtype))
    yr.backward(g)
    torch.testing.assert_close(xt.grad.double(), xr.grad, atol=atol * 10, rtol=rtol * 10)
    torch.testing.assert_close(r.grad.double(), r_ref.grad, atol=atol * 100, rtol=rtol * 10)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("k", [None, 3])
def test_triton_layouts(device, k):
    """channels_last and strided (non-contiguous) inputs give the same values and grads."""
    base = torch.randn(2, 5, 9, 11, device=device)
    views = {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": torch.randn(2, 5, 18, 11, device=device)[:, :, ::2].contiguous()[:, :, :9]
        if False else torch.randn(2, 10, 9, 11, device=device)[:, ::2],
    }
    for name, x in views.items():
        xt = x.clone() if name != "strided" else x
        xt = xt.detach().requires_grad_()
        xr = x.detach().double().requires_grad_()
        yt = lse_pool2d(xt, 4.0, k, backend="triton")
        yr = lse_pool2d(xr, 4.0, k, backend="torch")
        torch.testing.assert_close(yt.double(), yr, atol=1e-5, rtol=1e-5, msg=name)
        g = torch.randn_like(yr)
        yt.backward(g.float())
        yr.backward(g)
        torch.testing.assert_close(xt.grad.double(), xr.grad, atol=1e-5, rtol=1e-5, msg=name)
    cl = views["channels_last"]
    assert lse_pool2d(cl, 4.0, 3, backend="triton").is_contiguous(
        memory_format=torch.channels_last)


BACKENDS = ["torch", pytest.param("triton", marks=KERNEL_DEVICES[0].marks)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [None, 3])
def test_numerics_extremes(backend, k):
    x = torch.full((1, 2, 6, 6), 1e4)
    # large values with a large r: exact, no overflow
    assert torch.equal(lse_pool2d(x, 100.0, k, backend=backend), torch.full_like(
        lse_pool2d(x, 100.0, k, backend="torch"), 1e4))
    # a window of equal values returns that value, for any r
    for value in (0.1, -3.7, 1e-20):
        xv = torch.full((1, 1, 6, 6), value)
        for r in (0.01, 1.0, 1e4):
            y = lse_pool2d(xv, r, k, backend=backend)
            assert torch.equal(y, torch.full_like(y, value)), (value, r)
    # huge spreads stay finite: the max dominates, nothing overflows
    z = torch.randn(1, 2, 6, 6) * 1e30
    y = lse_pool2d(z, 10.0, k, backend=backend)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_limits_mean_and_max(backend):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float32)
    # small r: lse_r = mean + (r/2)·var + O(r²) — float32 keeps that to ~1e-6
    small = lse_pool2d(x, 1e-4, backend=backend)
    expansion = x.mean((2, 3)) + 0.5e-4 * x.var((2, 3), unbiased=False)
    torch.testing.assert_close(small, expansion, atol=2e-6, rtol=0)
    large = lse_pool2d(x, 1e4, backend=backend)
    # |lse_r - max| <= log(|S|) / r
    assert ((large - x.amax((2, 3))).abs() <= math.log(64) / 1e4 + 1e-6).all()
    win_small = lse_pool2d(x, 1e-6, 2, backend=backend)
    torch.testing.assert_close(win_small, torch.nn.functional.avg_pool2d(x, 2), atol=1e-5,
                               rtol=0)
    win_large = lse_pool2d(x, 1e4, 2, backend=backend)
    torch.testing.assert_close(win_large, torch.nn.functional.max_pool2d(x, 2), atol=2e-4,
                               rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_gives_nan_out(backend):
    x = torch.randn(1, 2, 6, 6)
    x[0, 0, 1, 1] = float("nan")
    y = lse_pool2d(x, 5.0, backend=backend)
    assert torch.isnan(y[0, 0]) and torch.isfinite(y[0, 1])
    yw = lse_pool2d(x, 5.0, 2, backend=backend)
    assert torch.isnan(yw[0, 0, 0, 0])
    assert torch.isfinite(yw[0, 0]).sum() == 8 and torch.isfinite(yw[0, 1]).all()


def test_errors_name_the_argument():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"`x` must be 4-D"):
        lse_pool2d(torch.randn(3, 8, 8), 1.0)
    with pytest.raises(TypeError, match=r"floating-point.*torch.int64"):
        lse_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match=r"`r` must be positive.*-1.0"):
        lse_pool2d(x, -1.0)
    with pytest.raises(ValueError, match=r"`r` must be positive"):
        lse_pool2d(x, 0)
    with pytest.raises(ValueError, match=r"`r` must be positive"):
        lse_pool2d(x, torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \[C\] = \[3\].*\(4,\)"):
        lse_pool2d(x, torch.ones(4))
    with pytest.raises(TypeError, match=r"`r`"):
        lse_pool2d(x, "10")
    with pytest.raises(ValueError, match=r"`r` must be on the input's device cpu, got meta"):
        lse_pool2d(x, torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        lse_pool2d(x, 1.0, 9)
    with pytest.raises(ValueError, match=r"`padding` must be at most half"):
        lse_pool2d(x, 1.0, 3, 1, 2)
    with pytest.raises(ValueError, match=r"`kernel_size` must be >= 1"):
        lse_pool2d(x, 1.0, 0)
    with pytest.raises(ValueError, match=r"need a `kernel_size`"):
        lse_pool2d(x, 1.0, None, 2)
    with pytest.raises(ValueError, match=r"`backend` must be one of.*'cuda'"):
        lse_pool2d(x, 1.0, backend="cuda")


def test_triton_backend_refuses_plain_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend='triton' is not available.*CUDA tensor"):
        lse_pool2d(torch.randn(1, 1, 4, 4), 1.0, backend="triton")
    # auto quietly takes the reference
    y = lse_pool2d(torch.zeros(1, 1, 4, 4), 1.0)
    assert torch.equal(y, torch.zeros(1, 1))


def test_module_learns_r_per_channel():
    pool = LSEPool2d(r=10.0, learn_r=True, num_channels=3)
    x = torch.randn(4, 3, 5, 5)
    pool(x).sum().backward()
    assert pool.log_r.grad.shape == (3,) and torch.isfinite(pool.log_r.grad).all()
    assert (pool.log_r.grad != 0).all()
    torch.testing.assert_close(pool(x), lse_pool2d(x, 10.0), rtol=1e-5, atol=1e-6)
    assert "learned r per channel (3)" in repr(pool)
    assert "r=5.0, kernel_size=2" in repr(LSEPool2d(5.0, 2))
    with pytest.raises(ValueError, match="num_channels"):
        LSEPool2d(learn_r=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_traces_without_graph_breaks(backend):
    fn = torch.compile(lambda x: lse_pool2d(x, 5.0, 2, backend=backend).sum()
                       + lse_pool2d(x, 3.0, backend=backend).sum(),
                       fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = fn(x)
    out.backward()
    xr = x.detach().clone().requires_grad_()
    ref = lse_pool2d(xr, 5.0, 2, backend="torch").sum() + lse_pool2d(xr, 3.0,
                                                                     backend="torch").sum()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, xr.grad)


def test_oracle_sanity():
    # the oracle itself against the closed form for two values
    assert oracles.lse([0.0, math.log(3.0)], 1.0) == pytest.approx(math.log(2.0))
    assert np.isclose(oracles.softpool([0.0, 0.0]), 0.0)


@pytest.mark.parametrize("k,p", [(None, 0), (3, 1)])
def test_mixed_small_and_large_r_lines(k, p):
    """Channels with a tiny r take the expm1/log1p route, the others log(Σe): both at once."""
    x = torch.randn(3, 2, 6, 7, dtype=torch.float64)
    r = torch.tensor([1e-3, 20.0], dtype=torch.float64)
    y = lse_pool2d(x, r, k, None, p, backend="torch")
    torch.testing.assert_close(y, _oracle(x, r, k, None, p), rtol=1e-12, atol=1e-12)
    x32, r32 = x.float().requires_grad_(), r.float().requires_grad_()
    y32 = lse_pool2d(x32, r32, k, None, p, backend="torch")
    torch.testing.assert_close(y32.double(), y, rtol=0, atol=2e-6)
    xg, rg = x.clone().requires_grad_(), r.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: lse_pool2d(a, b, k, None, p, backend="torch"),
                                    (xg, rg))


def test_auto_never_picks_the_interpreter_for_cpu_tensors(monkeypatch):
    from wsloc.ops._common import resolve_backend

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", torch.zeros(1), "op") == "torch"


@pytest.mark.parametrize("r", [0.5, 1.0, 10.0])
def test_padding_is_known_by_position_not_by_value(r):
    # a genuine -inf inside a padded window still counts in |S| (it adds exp(-inf) = 0)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    x[0, 0, 0, 0] = float("-inf")
    x[0, 1, 1, 1] = float("-inf")
    y = lse_pool2d(x, r, 3, 1, 1, backend="torch")
    torch.testing.assert_close(y, _oracle(x, r, 3, 1, 1), rtol=1e-12, atol=1e-12)
    # the gradient is the window softmax over real slots: 0 at the -inf, finite elsewhere
    xr = x.clone().requires_grad_(True)
    lse_pool2d(xr, torch.tensor([r, r], dtype=torch.float64, requires_grad=True), 3, 1, 1,
               backend="torch").sum().backward()
    assert torch.isfinite(xr.grad).all() and xr.grad[0, 0, 0, 0] == 0


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-4), (torch.bfloat16, 2e-3)])
@pytest.mark.parametrize("k", [None, 2])
def test_half_precision_accumulates_in_float32(dtype, tol, k):
    # small r is where the input-dtype sum loses most (fp16 r=0.1: 1e-2 before the fix)
    x = (torch.randn(4, 8, 16, 16) * 2).to(dtype)
    for r in (0.1, 1.0):
        y = lse_pool2d(x, r, k, backend="torch")
        assert y.dtype == dtype
        ref = _oracle(x.double(), r, k, k, 0)
        # the float32 result rounded once to the output dtype: half an ulp of |y| plus tol
        bound = tol + ref.abs() * torch.finfo(dtype).eps
        assert ((y.double() - ref).abs() <= bound).all(), (y.double() - ref).abs().max()
