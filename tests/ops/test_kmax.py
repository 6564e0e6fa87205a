import pytest
import torch

from wsloc.ops import KMaxPool1d, kmax_pool1d


def _oracle(row, k):
    keep = sorted(sorted(range(len(row)), key=lambda i: -row[i])[:k])
    return [row[i] for i in keep]


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
