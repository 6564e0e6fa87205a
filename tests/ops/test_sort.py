import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import KERNEL_DEVICES, TOL, TRITON_ON_CPU
from tests.ops import oracles
from wsloc.ops import SortPool2d, sort_pool2d
from wsloc.ops import sort as sort_module
from wsloc.ops._common import window_geometry
from wsloc.ops.sort import batcher_network, sort_pool_formula

# (shape, kernel_size, stride); None = global. Windows of up to 16 elements take the sorting
# network on the torch path, larger ones (5x4) and whole maps take topk / sort.
GEOMETRIES = [
    ((2, 3, 1, 1), None, None),
    ((2, 3, 7, 7), None, None),
    ((1, 2, 13, 17), None, None),
    ((2, 3, 1, 1), 1, None),
    ((2, 3, 8, 8), 2, None),
    ((2, 3, 7, 7), 3, 2),  # overlapping windows
    ((1, 2, 13, 17), (2, 3), (1, 2)),
    ((2, 2, 7, 9), 2, 3),  # stride > kernel: some elements in no window
    ((1, 2, 9, 11), (5, 4), (2, 3)),  # 20 elements: the topk path on torch
]

BACKENDS = ["torch", pytest.param("triton", marks=KERNEL_DEVICES[0].marks)]


def _positions(shape, k):
    if k is None:
        return shape[2] * shape[3]
    kk = (k, k) if isinstance(k, int) else k
    return kk[0] * kk[1]


def _weights(shape, k, per_channel, ranks=None, dtype=torch.float64):
    ranks = ranks or _positions(shape, k)
    size = (shape[1], ranks) if per_channel else (ranks,)
    return torch.randn(size, dtype=dtype)


def _geometry(shape, k, s):
    return None if k is None else window_geometry(shape[2:], k, s, 0)


def _formula(x, w, k, s):
    """The definition through autograd (stable torch.sort): the second reference."""
    geo = _geometry(x.shape, k, s)
    y = sort_pool_formula(x, w, geo)
    return y.reshape(x.shape[0], x.shape[1], *(() if geo is None else geo[3]))


def _pairs(k, s):
    kk = None if k is None else ((k, k) if isinstance(k, int) else k)
    ss = None if s is None else ((s, s) if isinstance(s, int) else s)
    return kk, ss or kk


def _oracle(x, w, k, s):
    kk, ss = _pairs(k, s)
    wn = w.detach().numpy()
    y = oracles.pool(x.detach().double().numpy(),
                     lambda v, c: oracles.sort_pool(v, wn if wn.ndim == 1 else wn[c]), kk, ss)
    return torch.from_numpy(y.reshape(y.shape[:2]) if k is None else y)


def _oracle_grads(x, w, g, k, s):
    kk, ss = _pairs(k, s)
    dx, dw = oracles.sort_pool_grads(x.detach().numpy(), w.detach().numpy(), g.numpy(), kk, ss)
    return torch.from_numpy(dx), torch.from_numpy(dw)


def test_batcher_network_sorts_every_zero_one_input():
    # the 0-1 principle: a comparator network that sorts all 0/1 inputs sorts everything
    for n in range(1, 13):
        bits = np.array(list(itertools.product([0, 1], repeat=n)))
        for i, j in batcher_network(n):
            hi, lo = np.maximum(bits[:, i], bits[:, j]), np.minimum(bits[:, i], bits[:, j])
            bits[:, i], bits[:, j] = hi, lo
        assert (np.diff(bits, axis=1) <= 0).all(), n


def test_pruned_network_keeps_the_top_ranks():
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for ranks in (1, 2, 5, 9):
        w = torch.randn(ranks, dtype=torch.float64)
        torch.testing.assert_close(sort_pool2d(x, w, 3, backend="torch"),
                                   _formula(x, w, 3, None))


@pytest.mark.parametrize("shape,k,s", GEOMETRIES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_reference_matches_loop_oracle(shape, k, s, per_channel):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ranks = max(1, (_positions(shape, k) + 1) // 2)  # only the top half weighted
    for w in (_weights(shape, k, per_channel), _weights(shape, k, per_channel, ranks)):
        w.requires_grad_()
        y = sort_pool2d(x, w, k, s, backend="torch")
        torch.testing.assert_close(y, _oracle(x, w, k, s), rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y)
        dx, dw = torch.autograd.grad(y, (x, w), g)
        ox, ow = _oracle_grads(x, w, g, k, s)
        torch.testing.assert_close(dx, ox, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dw, ow, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,ranks", [(None, None, 5), (None, None, 42), (3, 2, None),
                                       ((2, 3), (1, 2), 4), ((5, 4), (2, 3), 7)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_reference_gradcheck_x_and_weights(k, s, ranks, per_channel):
    # distinct values (0.1 apart), so that the sort is differentiable at x
    x = (torch.randperm(2 * 3 * 6 * 7, dtype=torch.float64) * 0.1).reshape(2, 3, 6, 7)
    x.requires_grad_()
    w = _weights(x.shape, k, per_channel, ranks).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: sort_pool2d(a, b, k, s, backend="torch"),
                                    (x, w))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,s", [(2, None), (3, 2), ((2, 3), (1, 1)), (None, None)])
def test_limits_are_max_and_average_pooling(backend, k, s):
    x = torch.randn(2, 3, 9, 8)
    kk = x.shape[2:] if k is None else k
    K = _positions(x.shape, k)
    one_hot = F.one_hot(torch.tensor(0), K).float()
    mean = torch.full((K,), 1.0 / K)
    y_max = F.max_pool2d(x, kk, s)
    y_avg = F.avg_pool2d(x, kk, s)
    if k is None:
        y_max, y_avg = y_max.flatten(1), y_avg.flatten(1)
    torch.testing.assert_close(sort_pool2d(x, one_hot, k, s, backend=backend), y_max)
    torch.testing.assert_close(sort_pool2d(x, one_hot[:1], k, s, backend=backend), y_max)
    torch.testing.assert_close(sort_pool2d(x, mean, k, s, backend=backend), y_avg)
    # the mean of the top 3 ranks is WILDCAT's / k-max's top-k mean
    top3 = torch.full((3,), 1.0 / 3)
    cols = sort_module._rows(x, None if k is None else window_geometry(x.shape[2:], k, s, 0))
    expected = cols.topk(3, dim=-1).values.mean(-1).reshape(y_max.shape)
    torch.testing.assert_close(sort_pool2d(x, top3, k, s, backend=backend), expected)


TIE_CASES = [((2, 3, 6, 6), 2, None), ((2, 3, 7, 7), 3, 2), ((1, 2, 7, 9), (2, 3), (1, 2)),
             ((2, 3, 5, 5), None, None), ((1, 2, 9, 11), (5, 4), (2, 3))]


@pytest.mark.parametrize("shape,k,s", TIE_CASES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_ties_follow_the_stable_rule_on_torch(shape, k, s, per_channel):
    # integers in a small range: nearly every window has ties
    x = torch.randint(0, 3, shape).double().requires_grad_()
    positions = _positions(shape, k)
    for ranks in (positions, max(1, positions // 3)):
        w = _weights(shape, k, per_channel, ranks).requires_grad_()
        y = sort_pool2d(x, w, k, s, backend="torch")
        g = torch.randn_like(y)
        dx, dw = torch.autograd.grad(y, (x, w), g)
        ox, ow = _oracle_grads(x, w, g, k, s)
        torch.testing.assert_close(dx, ox, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dw, ow, rtol=1e-12, atol=1e-12)
        fx, fw = torch.autograd.grad(_formula(x, w, k, s), (x, w), g)
        torch.testing.assert_close(dx, fx, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dw, fw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s", [(2, None), (3, 2), ((2, 3), (1, 2)), (2, 3), (None, None),
                                 ((5, 4), (2, 3))])
@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_path_works_in_pieces(monkeypatch, k, s, per_channel):
    """Pieces split over the batch, the channels and output rows give the same values and
    gradients (ties included) as the whole tensor at once."""
    x = torch.randint(0, 4, (3, 5, 11, 13)).double().requires_grad_()
    ranks = max(1, _positions(x.shape, k) // 2)
    w = _weights(x.shape, k, per_channel, ranks).requires_grad_()
    y0 = _formula(x, w, k, s)
    g = torch.randn_like(y0)
    fx, fw = torch.autograd.grad(y0, (x, w), g)
    for serial in (7, 60, 200):  # rows of a map; some channels; several samples
        monkeypatch.setattr(sort_module, "SERIAL_ELEMENTS", serial)
        y = sort_pool2d(x, w, k, s, backend="torch")
        torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
        dx, dw = torch.autograd.grad(y, (x, w), g)
        torch.testing.assert_close(dx, fx, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dw, fw, rtol=1e-12, atol=1e-12)


def test_ties_in_a_window_go_to_the_first_position():
    # a 2x2 window of four equal values: rank j goes to position j (row-major)
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sort_pool2d(x, w, 2, backend="torch").sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    xg = torch.zeros(1, 1, 3, 3, requires_grad=True)
    sort_pool2d(xg, torch.tensor([5.0, 7.0]), None, backend="torch").sum().backward()
    assert xg.grad.flatten().tolist() == [5.0, 7.0] + [0.0] * 7


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("shape,k,s", TIE_CASES)
def test_triton_ties_match_reference_exactly(device, shape, k, s):
    x = torch.randint(0, 3, shape).float().to(device)
    positions = _positions(shape, k)
    for per_channel, ranks in ((False, positions), (True, max(1, positions // 3))):
        w = _weights(shape, k, per_channel, ranks, torch.float32).to(device)
        xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
        xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
        yt = sort_pool2d(xt, wt, k, s, backend="triton")
        yr = sort_pool2d(xr, wr, k, s, backend="torch")
        torch.testing.assert_close(yt.double(), yr, atol=1e-5, rtol=1e-6)
        g = torch.randn(yr.shape, dtype=torch.float64, device=device)
        yt.backward(g.float())
        yr.backward(g)
        # a rank given to another tied position would differ by O(1)
        torch.testing.assert_close(xt.grad.double(), xr.grad, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(wt.grad.double(), wr.grad, atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("shape,k,s", GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_reference(device, shape, k, s, dtype):
    x = torch.randn(shape).to(device=device, dtype=dtype)
    ranks = max(1, _positions(shape, k) // 2)
    per_channel = dtype != torch.float32  # both kinds of weights over the dtypes
    w = _weights(shape, k, per_channel, ranks, torch.float32).to(device)
    xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    yt = sort_pool2d(xt, wt, k, s, backend="triton")
    yr = sort_pool2d(xr, wr, k, s, backend="torch")
    assert yt.dtype == dtype and yt.shape == yr.shape
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(yt.double(), yr, atol=atol * 10, rtol=rtol)
    g = torch.randn(yr.shape, dtype=torch.float64, device=device)
    yt.backward(g.to(dtype))
    yr.backward(g)
    # the same values (x is rounded to dtype first), so the same order and ties
    torch.testing.assert_close(xt.grad.double(), xr.grad, atol=atol * 10, rtol=rtol * 10)
    torch.testing.assert_close(wt.grad.double(), wr.grad, atol=atol * 100, rtol=rtol * 10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [None, 3])
def test_layouts(backend, k):
    """channels_last and strided (non-contiguous) inputs give the same values and grads."""
    base = torch.randn(2, 5, 9, 11)
    views = {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": torch.randn(2, 10, 9, 22)[:, ::2, :, ::2],
        "transposed": torch.randn(2, 5, 11, 9).transpose(2, 3),
    }
    for name, x in views.items():
        w = torch.randn(5, 4, requires_grad=True)
        xt = x.detach().clone() if name in ("contiguous", "channels_last") else x.detach()
        xt.requires_grad_()
        xr = x.detach().double().requires_grad_()
        wr = w.detach().double().requires_grad_()
        yt = sort_pool2d(xt, w, k, 2 if k else None, backend=backend)
        yr = _formula(xr, wr, k, 2 if k else None)
        torch.testing.assert_close(yt.double(), yr, atol=1e-5, rtol=1e-5, msg=name)
        g = torch.randn_like(yr)
        yt.backward(g.float())
        yr.backward(g)
        torch.testing.assert_close(xt.grad.double(), xr.grad, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(w.grad.double(), wr.grad, atol=1e-4, rtol=1e-5, msg=name)
    if k is not None and backend == "triton":
        assert sort_pool2d(views["channels_last"], torch.ones(4), k, backend=backend
                           ).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,ranks", [(None, 3), (None, 36), (2, 4), (3, 2), ((5, 4), 3)])
def test_nan_in_gives_nan_out(backend, k, ranks):
    x = torch.randn(2, 2, 6, 6)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 4, 4] = float("nan")
    x[1, 1, 0, 0] = float("nan")
    w = torch.randn(ranks, requires_grad=True)
    xt = x.clone().requires_grad_()
    y = sort_pool2d(xt, w, k, 1 if k == (5, 4) else None, backend=backend)
    expected = _formula(x.double(), w.detach().double(), k, 1 if k == (5, 4) else None)
    assert torch.equal(torch.isnan(y), torch.isnan(expected))  # NaN exactly where NaN went in
    assert torch.isnan(y).any() and not torch.isnan(y).all()
    if k is None:
        assert torch.isnan(y[0, 0]) and torch.isfinite(y[0, 1]) and torch.isfinite(y[1, 0])
    # the gradient follows torch.sort's order (NaN first); x's stays finite
    g = torch.randn_like(y)
    y.backward(g)
    xr = x.double().requires_grad_()
    wr = w.detach().double().requires_grad_()
    _formula(xr, wr, k, 1 if k == (5, 4) else None).backward(g.double())
    assert torch.isfinite(xt.grad).all()
    torch.testing.assert_close(xt.grad.double(), xr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.grad.double(), wr.grad, atol=1e-4, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinities_past_the_weighted_ranks_are_left_out(backend):
    x = torch.randn(1, 2, 4, 4)
    x[0, 0, 2, 2] = float("-inf")
    x[0, 1] = float("-inf")
    x[0, 1, 0, 0] = 3.0
    y = sort_pool2d(x, torch.tensor([0.5, 0.5]), None, backend=backend)
    assert torch.isfinite(y[0, 0]) and y[0, 1] == float("-inf")
    yw = sort_pool2d(x, torch.tensor([1.0]), 2, backend=backend)
    torch.testing.assert_close(yw, F.max_pool2d(x, 2))
    top = sort_pool2d(torch.full((1, 1, 2, 2), float("inf")), torch.ones(2), 2, backend=backend)
    assert top.item() == float("inf")


def test_mixed_dtypes_and_half_precision_accumulate_in_float32():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    y = sort_pool2d(x, w, 2)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert w.grad.dtype == torch.float64 and torch.isfinite(w.grad).all()
    for dtype in (torch.float16, torch.bfloat16):
        for k, ranks in ((2, 4), (None, 8)):
            xh = (torch.randn(2, 4, 8, 8) * 4).to(dtype)
            wh = torch.rand(ranks)
            yh = sort_pool2d(xh, wh, k)
            assert yh.dtype == dtype
            ref = _formula(xh.double(), wh.double(), k, None)
            # the float32 result rounded once: half an ulp of |y| plus float32's error
            bound = 1e-4 + ref.abs() * torch.finfo(dtype).eps
            assert ((yh.double() - ref).abs() <= bound).all()


def test_errors_name_the_argument():
    x = torch.randn(2, 3, 8, 8)
    w = torch.ones(4)
    with pytest.raises(ValueError, match=r"`x` must be 4-D"):
        sort_pool2d(torch.randn(3, 8, 8), w, 2)
    with pytest.raises(TypeError, match=r"`x` must be a floating-point.*torch.int64"):
        sort_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.long), w, 2)
    with pytest.raises(TypeError, match=r"`weights` must be a torch.Tensor.*got list"):
        sort_pool2d(x, [1.0, 0.0], 2)
    with pytest.raises(TypeError, match=r"`weights` must be a floating-point.*torch.int64"):
        sort_pool2d(x, torch.ones(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"`weights` must be 1-D \[k\].*\(1, 3, 4\)"):
        sort_pool2d(x, torch.ones(1, 3, 4), 2)
    with pytest.raises(ValueError, match=r"C = 3 rows.*\(4, 4\)"):
        sort_pool2d(x, torch.ones(4, 4), 2)
    with pytest.raises(ValueError, match=r"between 1 and kh·kw = 4 ranks, got k = 5"):
        sort_pool2d(x, torch.ones(5), 2)
    with pytest.raises(ValueError, match=r"between 1 and H·W = 64 ranks, got k = 65"):
        sort_pool2d(x, torch.ones(65), None)
    with pytest.raises(ValueError, match=r"got k = 0"):
        sort_pool2d(x, torch.ones(3, 0), None)
    with pytest.raises(ValueError, match=r"`weights` must be on the input's device cpu"):
        sort_pool2d(x, torch.ones(4, device="meta"), 2)
    with pytest.raises(ValueError, match=r"`stride` needs a `kernel_size`"):
        sort_pool2d(x, w, None, 2)
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        sort_pool2d(x, w, 9)
    with pytest.raises(ValueError, match=r"`kernel_size` must be >= 1"):
        sort_pool2d(x, w, 0)
    with pytest.raises(TypeError, match=r"`stride` must be an int or a sequence"):
        sort_pool2d(x, w, 2, 1.5)
    with pytest.raises(ValueError, match=r"`backend` must be one of.*'cuda'"):
        sort_pool2d(x, w, 2, backend="cuda")


@pytest.mark.skipif(not TRITON_ON_CPU, reason="Triton interpreter not active")
def test_triton_limits(monkeypatch):
    monkeypatch.setattr(sort_module, "TRITON_MAX_WINDOW", 3)
    monkeypatch.setattr(sort_module, "TRITON_MAX_POSITIONS", 10)
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"takes at most kh·kw = 3, got 4"):
        sort_pool2d(x, torch.ones(4), 2, backend="triton")
    with pytest.raises(ValueError, match=r"takes at most H·W = 10, got 16"):
        sort_pool2d(x, torch.ones(4), None, backend="triton")


def test_triton_backend_refuses_plain_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend='triton' is not available.*CUDA tensor"):
        sort_pool2d(torch.randn(1, 1, 4, 4), torch.ones(4), 2, backend="triton")
    y = sort_pool2d(torch.zeros(1, 1, 4, 4), torch.ones(4), 2)  # auto: the torch path
    assert torch.equal(y, torch.zeros(1, 1, 2, 2))


def test_module():
    x = torch.randn(2, 3, 6, 6)
    avg = SortPool2d(2)
    torch.testing.assert_close(avg(x), F.avg_pool2d(x, 2))
    mx = SortPool2d(3, 1, init="max", num_channels=3)
    assert mx.weight.shape == (3, 9)
    torch.testing.assert_close(mx(x), F.max_pool2d(x, 3, 1))
    head = SortPool2d(None, ranks=4)
    torch.testing.assert_close(head(x), x.flatten(2).topk(4, dim=-1).values.mean(-1))
    head(x).sum().backward()
    assert head.weight.grad.shape == (4,) and (head.weight.grad != 0).all()
    assert "global, ranks=4, weights shared" in repr(head)
    assert "kernel_size=3, stride=1, ranks=9, weights per channel (3)" in repr(mx)
    with pytest.raises(ValueError, match=r"`ranks` must be given for global pooling"):
        SortPool2d(None)
    with pytest.raises(ValueError, match=r"`init` must be one of 'mean', 'max', got 'min'"):
        SortPool2d(2, init="min")
    with pytest.raises(ValueError, match=r"`ranks` must be a positive int, got 0"):
        SortPool2d(2, ranks=0)
    with pytest.raises(ValueError, match=r"`num_channels` must be a positive int"):
        SortPool2d(2, num_channels=0)
    with pytest.raises(ValueError, match=r"between 1 and kh·kw = 4 ranks, got k = 5"):
        SortPool2d(2, ranks=5)(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_traces_without_graph_breaks(backend):
    w = torch.tensor([0.5, 0.3, 0.2, 0.1], requires_grad=True)
    fn = torch.compile(lambda x, w: sort_pool2d(x, w, 2, backend=backend).sum()
                       + sort_pool2d(x, w[:3], None, backend=backend).sum(),
                       fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = fn(x, w)
    out.backward()
    xr = x.detach().clone().requires_grad_()
    wr = w.detach().clone().requires_grad_()
    ref = (sort_pool2d(xr, wr, 2, backend="torch").sum()
           + sort_pool2d(xr, wr[:3], None, backend="torch").sum())
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(w.grad, wr.grad)


def test_oracle_sanity():
    assert oracles.stable_order([1.0, 3.0, 1.0, 3.0]) == [1, 3, 0, 2]
    assert oracles.sort_pool([1.0, 3.0, 2.0], [1.0, 10.0]) == 3.0 + 20.0
