import math
from fractions import Fraction

import pytest
import torch

import wsloc.ops.kmax as kmax_module
from tests.conftest import KERNEL_DEVICES, TOL
from tests.ops import oracles
from wsloc.ops import (
    DynamicKMax,
    DynamicKMaxPool1d,
    KMax,
    KMaxPool1d,
    KMaxPool2d,
    dynamic_k,
    kmax_pool1d,
    kmax_pool2d,
)

BACKENDS = ["torch", pytest.param("triton", marks=KERNEL_DEVICES[0].marks)]
# variable-length batches: the PyTorch path's batched and sample-by-sample routes, and Triton
ROUTES = ["torch", "torch-per-sample", pytest.param("triton", marks=KERNEL_DEVICES[0].marks)]


@pytest.fixture
def route_backend(request, monkeypatch):
    """The backend for a ROUTES parameter (forcing the per-sample route where asked)."""
    route = request.param
    monkeypatch.setattr(kmax_module, "SAMPLE_LOOP_ELEMENTS",
                        1 if route == "torch-per-sample" else 1 << 40)
    return route.split("-")[0]
INF, NAN = float("inf"), float("nan")


def _oracle(row, k):
    keep = sorted(sorted(range(len(row)), key=lambda i: -row[i])[:k])
    return [row[i] for i in keep]


def _data(kind, shape, dtype=torch.float32):
    """Random maps: distinct values, many ties (a few levels), or ties plus NaN, ±inf, ±0."""
    if kind == "distinct":
        return torch.randn(shape, dtype=dtype)
    x = torch.randint(0, 3, shape).to(dtype)
    if kind == "special":
        flat = x.view(-1)
        specials = torch.tensor([NAN, INF, -INF, -0.0, 0.0, NAN], dtype=dtype)
        where = torch.randperm(flat.numel())[: min(flat.numel() // 3, 24)]
        flat[where] = specials[torch.arange(where.numel()) % specials.numel()]
    return x


def _expected(x, k):
    """The loop oracle over each map of x [N, C, H, W] (or lines of [N, C, S])."""
    lines = x.double().flatten(2)
    values = torch.empty(*lines.shape[:2], k, dtype=torch.float64)
    indices = torch.empty(*lines.shape[:2], k, dtype=torch.int64)
    for n in range(lines.shape[0]):
        for c in range(lines.shape[1]):
            v, i = oracles.kmax(lines[n, c].tolist(), k)
            values[n, c], indices[n, c] = torch.tensor(v, dtype=torch.float64), torch.tensor(i)
    return values, indices


# ------------------------------------------------------------------------- kmax_pool1d


@pytest.mark.parametrize("k", [1, 3, 7])
def test_keeps_the_k_largest_in_order(k):
    x = torch.randn(4, 5, 7)
    y = kmax_pool1d(x, k)
    expected = torch.tensor([[_oracle(r.tolist(), k) for r in plane] for plane in x])
    torch.testing.assert_close(y, expected)


def test_other_dim_and_gradient():
    x = torch.randn(3, 9, 2, requires_grad=True)
    y = kmax_pool1d(x, 4, dim=1)
    assert y.shape == (3, 4, 2)
    torch.testing.assert_close(y, kmax_pool1d(x.transpose(1, 2), 4).transpose(1, 2))
    y.sum().backward()
    assert (x.grad.sum(1) == 4).all()
    top = x.detach().topk(4, dim=1).values.min(1, keepdim=True).values
    assert torch.equal(x.grad == 1, x.detach() >= top)


def test_errors_and_module():
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 5\]"):
        kmax_pool1d(torch.randn(2, 5), 6)
    with pytest.raises(ValueError, match=r"`dim` must be in"):
        kmax_pool1d(torch.randn(2, 5), 2, dim=3)
    with pytest.raises(TypeError, match=r"floating-point"):
        kmax_pool1d(torch.arange(5), 2)
    assert repr(KMaxPool1d(3)) == "KMaxPool1d(k=3, dim=-1)"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,dim,k", [((11,), 0, 4), ((3, 1), 1, 1), ((2, 9, 3), 1, 5),
                                         ((2, 3, 13), -1, 13)])
def test_kmax_pool1d_any_rank_and_ties(backend, shape, dim, k):
    x = _data("special", shape)
    out = kmax_pool1d(x, k, dim, return_indices=True, backend=backend)
    assert isinstance(out, KMax)
    lines = x.movedim(dim, -1).reshape(-1, shape[dim])
    want = [oracles.kmax(line.tolist(), k) for line in lines]
    got_v = out.values.movedim(dim, -1).reshape(-1, k)
    got_i = out.indices.movedim(dim, -1).reshape(-1, k)
    torch.testing.assert_close(got_v, torch.tensor([w[0] for w in want]), equal_nan=True)
    assert torch.equal(got_i, torch.tensor([w[1] for w in want]))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_kmax_pool1d_triton_strided_and_gradient(device):
    base = _data("distinct", (3, 20, 4), torch.float32).to(device)
    x = base[:, ::2].transpose(1, 2)  # [3, 4, 10], the pooled dim has stride 8
    xt, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yt = kmax_pool1d(xt, 6, return_indices=True, backend="triton")
    yr = kmax_pool1d(xr, 6, return_indices=True, backend="torch")
    assert torch.equal(yt.values, yr.values) and torch.equal(yt.indices, yr.indices)
    g = torch.randn_like(yr.values)
    yt.values.backward(g)
    yr.values.backward(g)
    assert torch.equal(xt.grad, xr.grad)


def _masked_oracle(x, k, lengths):
    """A loop over the sequences of x [N, C, S]: each keeps the k[n] largest of its first
    lengths[n] positions; padded to max k with (0, -1)."""
    width = int(k.max())
    values = torch.zeros(*x.shape[:2], width, dtype=torch.float64)
    indices = torch.full((*x.shape[:2], width), -1)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            v, i = oracles.kmax(x[n, c, : int(lengths[n])].double().tolist(), int(k[n]))
            values[n, c, : len(v)], indices[n, c, : len(i)] = torch.tensor(v), torch.tensor(i)
    return values, indices


@pytest.mark.parametrize("route_backend", ROUTES, indirect=True)
@pytest.mark.parametrize("kind", ["distinct", "special"])
def test_kmax_pool1d_lengths_never_select_padding(route_backend, kind):
    backend = route_backend
    x = _data(kind, (4, 3, 12))
    lengths = torch.tensor([12, 5, 1, 8])
    for n, length in enumerate(lengths.tolist()):
        x[n, :, length:] = 1e9  # huge padding: never selected
    x[3, 1, 9] = NAN  # NaN in the padding is ignored too
    k = torch.tensor([4, 5, 1, 2])
    out = kmax_pool1d(x, k, lengths=lengths, return_indices=True, backend=backend)
    values, indices = _masked_oracle(x, k, lengths)
    torch.testing.assert_close(out.values.double(), values, equal_nan=True)
    assert torch.equal(out.indices, indices)
    assert not (out.values == 1e9).any()
    # an int k with lengths: the same k everywhere
    out = kmax_pool1d(x, 1, lengths=lengths, return_indices=True, backend=backend)
    values, indices = _masked_oracle(x, torch.ones(4, dtype=torch.long), lengths)
    assert torch.equal(out.indices, indices)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kmax_pool1d_lengths_triton_matches_torch(device, dtype):
    x = _data("special", (3, 2, 9), dtype).to(device)
    lengths = torch.tensor([9, 4, 2], device=device)
    k = torch.tensor([3, 4, 1], device=device)
    xt, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yt = kmax_pool1d(xt, k, lengths=lengths, return_indices=True, backend="triton")
    yr = kmax_pool1d(xr, k, lengths=lengths, return_indices=True, backend="torch")
    torch.testing.assert_close(yt.values, yr.values, equal_nan=True, atol=0, rtol=0)
    assert torch.equal(yt.indices, yr.indices)
    g = torch.randn(yr.values.shape).to(dtype)
    yt.values.backward(g)
    yr.values.backward(g)
    assert torch.equal(xt.grad, xr.grad)
    assert (xt.grad[1, :, 4:] == 0).all() and (xt.grad[2, :, 2:] == 0).all()


def test_kmax_pool1d_lengths_errors():
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"`lengths` must have shape \[N\] = \[2\]"):
        kmax_pool1d(x, 1, lengths=torch.tensor([5]))
    with pytest.raises(ValueError, match=r"`lengths` must lie in \[1, 5\], got 6"):
        kmax_pool1d(x, 1, lengths=torch.tensor([6, 2]))
    with pytest.raises(ValueError, match=r"`lengths` must lie in \[1, 5\], got 0"):
        kmax_pool1d(x, 1, lengths=torch.tensor([0, 2]))
    with pytest.raises(TypeError, match=r"`lengths` must be an integer tensor"):
        kmax_pool1d(x, 1, lengths=torch.tensor([5.0, 2.0]))
    with pytest.raises(ValueError, match=r"`k` must be at most every length, got k = 3 > "
                                         r"min\(lengths\) = 2"):
        kmax_pool1d(x, 3, lengths=torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"k\[1\] = 3 > lengths\[1\] = 2"):
        kmax_pool1d(x, torch.tensor([1, 3]), lengths=torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"`dim` must not be 0"):
        kmax_pool1d(x, 1, dim=0, lengths=torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"`k` must lie in \[1, 5\], got 0"):
        kmax_pool1d(x, torch.tensor([0, 1]))


# ------------------------------------------------------------------------- kmax_pool2d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial,k", [((1, 1), 1), ((7, 7), 5), ((7, 7), 1.0), ((13, 17), 0.1),
                                       ((13, 17), 200)])
@pytest.mark.parametrize("kind", ["distinct", "ties", "special"])
def test_kmax_pool2d_matches_loop_oracle(backend, spatial, k, kind):
    x = _data(kind, (2, 3, *spatial))
    out = kmax_pool2d(x, k, backend=backend)
    count = k if isinstance(k, int) else max(1, round(k * spatial[0] * spatial[1]))
    values, indices = _expected(x, count)
    assert out.values.shape == out.indices.shape == (2, 3, count)
    assert out.indices.dtype == torch.int64 and out.values.dtype == x.dtype
    torch.testing.assert_close(out.values.double(), values, equal_nan=True, atol=0, rtol=0)
    assert torch.equal(out.indices, indices)
    assert torch.equal(x.flatten(2).gather(2, out.indices), out.values) or kind == "special"


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_kmax_pool2d_triton_matches_torch(device, dtype, layout):
    x = _data("ties" if dtype != torch.float32 else "distinct", (2, 3, 13, 34), dtype)
    x = x.to(device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[..., ::2]  # [2, 3, 13, 17], copied by the kernel path
    else:
        x = x[..., :17].contiguous()
    xt, xr = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    yt = kmax_pool2d(xt, 0.2, backend="triton")
    yr = kmax_pool2d(xr, 0.2, backend="torch")
    assert torch.equal(yt.indices, yr.indices) and torch.equal(yt.values, yr.values)
    g = torch.randn(yr.values.shape).to(dtype)
    yt.values.backward(g)
    yr.values.backward(g)
    assert torch.equal(xt.grad, xr.grad)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(xt.grad.flatten(2).gather(2, yt.indices), g, atol=atol,
                               rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmax_pool2d_nan_only_where_nan_went_in(backend):
    x = torch.randn(2, 3, 5, 5)
    x[0, 1, 3, 2] = NAN
    x[1, 2, 0, 0] = NAN
    x[1, 2, 4, 4] = NAN
    xg = x.clone().requires_grad_()
    out = kmax_pool2d(xg, 3, backend=backend)
    nan = out.values.isnan()
    assert nan.sum() == 3 and nan[0, 1].sum() == 1 and nan[1, 2].sum() == 2
    assert torch.equal(out.indices[nan].sort().values, torch.tensor([0, 17, 24]))
    out.values.sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.sum() == 2 * 3 * 3
    # NaN ranks largest, so k=1 keeps the first NaN
    assert kmax_pool2d(x, 1, backend=backend).indices[1, 2, 0] == 0


def test_gradcheck():
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: kmax_pool2d(x, 6, backend="torch").values, (x,))
    lengths, k = torch.tensor([20, 7]), torch.tensor([3, 7])
    assert torch.autograd.gradcheck(
        lambda x: kmax_pool1d(x.flatten(2), k, lengths=lengths, backend="torch"), (x,))


def test_kmax_pool2d_errors_and_module():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"`k` must be in \[1, H·W = 16\], got 17"):
        kmax_pool2d(x, 17)
    with pytest.raises(ValueError, match=r"`k` as a fraction must lie in \(0, 1\]"):
        kmax_pool2d(x, 0.0)
    with pytest.raises(TypeError, match=r"`k` must be an int count or a float"):
        kmax_pool2d(x, None)
    with pytest.raises(ValueError, match=r"`x` must be 4-D"):
        kmax_pool2d(x[0], 1)
    with pytest.raises(ValueError, match=r"`backend` must be one of"):
        kmax_pool2d(x, 1, backend="cuda")
    m = KMaxPool2d(0.25)
    torch.testing.assert_close(m(x), kmax_pool2d(x, 4).values)
    assert repr(m) == "KMaxPool2d(k=0.25, backend='auto')"
    assert isinstance(KMaxPool2d(2, return_indices=True)(x), KMax)


# ---------------------------------------------------------------------- dynamic k-max


def test_dynamic_k_is_the_papers_formula():
    for num_layers in (1, 2, 3, 5):
        for layer in range(1, num_layers + 1):
            for length in (1, 2, 7, 18, 100):
                for k_top in (1, 3, 5):
                    exact = math.ceil(Fraction(num_layers - layer, num_layers) * length)
                    want = max(k_top, exact)
                    assert dynamic_k(layer, num_layers, length, k_top) == want
    # the paper's example: s = 18, L = 3, k_top = 3 → k_1 = 12, k_2 = 6, k_3 = 3
    assert [dynamic_k(layer, 3, 18, 3) for layer in (1, 2, 3)] == [12, 6, 3]
    lengths = torch.tensor([1, 7, 18, 100])
    assert torch.equal(dynamic_k(1, 3, lengths, 3), torch.tensor([3, 5, 12, 67]))


def test_dynamic_k_errors():
    with pytest.raises(ValueError, match=r"`layer` must be in \[1, 3\], got 4"):
        dynamic_k(4, 3, 10, 2)
    with pytest.raises(ValueError, match=r"`layer` must be in \[1, 3\], got 0"):
        dynamic_k(0, 3, 10, 2)
    with pytest.raises(ValueError, match=r"`num_layers` must be >= 1, got 0"):
        dynamic_k(1, 0, 10, 2)
    with pytest.raises(ValueError, match=r"`k_top` must be >= 1, got 0"):
        dynamic_k(1, 3, 10, 0)
    with pytest.raises(ValueError, match=r"`length` must be >= 1, got 0"):
        dynamic_k(1, 3, 0, 2)
    with pytest.raises(ValueError, match=r"`length` must be >= 1, got -2"):
        dynamic_k(1, 3, torch.tensor([4, -2]), 2)
    with pytest.raises(TypeError, match=r"`length` must be an integer tensor"):
        dynamic_k(1, 3, torch.tensor([4.0]), 2)
    with pytest.raises(TypeError, match=r"`layer` must be an int, got 1.5"):
        dynamic_k(1.5, 3, 4, 2)
    with pytest.raises(TypeError, match=r"`k_top` must be an int, got True"):
        dynamic_k(1, 3, 4, True)
    with pytest.raises(ValueError, match=r"`layer` must be in \[1, 2\], got 3"):
        DynamicKMaxPool1d(3, 2, 4)


def _dynamic_oracle(x, lengths, layer, num_layers, k_top):
    """Python loops over the sequences of x [N, C, S]: each keeps its k largest real values
    in order, k = min(max(k_top, ceil((L − l)/L · s)), s); padded to the widest k with 0."""
    ks = [min(max(k_top, math.ceil(Fraction(num_layers - layer, num_layers) * s)), s)
          for s in lengths]
    width = max(max(k_top, math.ceil(Fraction(num_layers - layer, num_layers) * s))
                for s in lengths)
    values = torch.zeros(x.shape[0], x.shape[1], width, dtype=torch.float64)
    indices = torch.full((x.shape[0], x.shape[1], width), -1)
    for n, (s, k) in enumerate(zip(lengths, ks)):
        for c in range(x.shape[1]):
            seq = x[n, c, :s].double().tolist()
            order = sorted(range(s), key=lambda i, seq=seq: (-seq[i], i))[:k]
            keep = sorted(order)
            values[n, c, :k] = torch.tensor([seq[i] for i in keep], dtype=torch.float64)
            indices[n, c, :k] = torch.tensor(keep)
    return values, indices, torch.tensor(ks)


@pytest.mark.parametrize("route_backend", ROUTES, indirect=True)
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_dynamic_kmax_matches_a_loop_over_sequences(route_backend, layer):
    backend = route_backend
    lengths = [14, 3, 9, 1, 6]
    x = torch.randint(-4, 5, (5, 2, 14)).float()  # ties included
    for n, s in enumerate(lengths):
        x[n, :, s:] = 1e9  # the padding is huge and never selected
    xg = x.clone().requires_grad_()
    pool = DynamicKMaxPool1d(layer, 3, k_top=4, backend=backend)
    out = pool(xg, torch.tensor(lengths))
    assert isinstance(out, DynamicKMax)
    values, indices, ks = _dynamic_oracle(x, lengths, layer, 3, 4)
    torch.testing.assert_close(out.values.double(), values)
    assert torch.equal(out.indices, indices) and torch.equal(out.lengths, ks)
    assert (out.values < 1e9).all()
    out.values.sum().backward()
    for n, s in enumerate(lengths):
        assert (xg.grad[n, :, s:] == 0).all()
        assert (xg.grad[n].sum(-1) == ks[n]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_kmax_without_lengths_and_short_batches(backend):
    x = torch.randn(2, 3, 10)
    out = DynamicKMaxPool1d(1, 2, k_top=3, backend=backend)(x)
    torch.testing.assert_close(out.values, kmax_pool1d(x, 5))
    assert torch.equal(out.lengths, torch.tensor([5, 5]))
    # every sequence shorter than k_top: all kept, still k_top wide (zero-padded)
    short = torch.randn(2, 3, 2)
    out = DynamicKMaxPool1d(2, 2, k_top=4, backend=backend)(short, torch.tensor([2, 1]))
    assert out.values.shape == (2, 3, 4) and torch.equal(out.lengths, torch.tensor([2, 1]))
    torch.testing.assert_close(out.values[0, :, :2], short[0])
    assert (out.values[1, :, 1:] == 0).all() and (out.indices[1, :, 1:] == -1).all()
    assert repr(DynamicKMaxPool1d(1, 2, 3)) == (
        "DynamicKMaxPool1d(layer=1, num_layers=2, k_top=3, backend='auto')")


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_traces_without_graph_breaks(backend):
    from wsloc.ops import wildcat_pool2d

    def fn(x):
        return (kmax_pool2d(x, 4, backend=backend).values * 2).sum(-1) + wildcat_pool2d(
            x, 3, 2, 0.5, backend=backend)

    x = _data("ties", (2, 3, 5, 6)).requires_grad_()
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    g = torch.randn(out.shape)
    out.backward(g)
    xr = x.detach().clone().requires_grad_()
    ref = fn(xr)
    ref.backward(g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("route_backend", ROUTES, indirect=True)
def test_lines_with_and_without_ties_in_one_batch(route_backend):
    backend = route_backend
    # the PyTorch path finds most lines with one topk and redoes only the tied (or NaN) ones
    x = torch.randn(2, 3, 6, 6)
    x[0, 1].view(-1)[[20, 3, 30]] = 10.0  # k = 2: the 2nd and 3rd largest tie
    x[1, 2].view(-1)[[7, 8]] = NAN
    x[1, 0].view(-1)[:] = 1.0
    out = kmax_pool2d(x, 2, backend=backend)
    values, indices = _expected(x, 2)
    assert torch.equal(out.indices, indices)
    assert out.indices[0, 1].tolist() == [3, 20] and out.indices[1, 0].tolist() == [0, 1]
    torch.testing.assert_close(out.values.double(), values, equal_nan=True)
    lines = x.flatten(2)
    lengths = torch.tensor([36, 30])
    k = torch.tensor([2, 3])
    out = kmax_pool1d(lines, k, lengths=lengths, return_indices=True, backend=backend)
    values, indices = _masked_oracle(lines, k, lengths)
    assert torch.equal(out.indices, indices)
    torch.testing.assert_close(out.values.double(), values, equal_nan=True)
