import numpy as np
import pytest
import torch
from torch import nn

from wsloc.cam import HeatmapError, cell_geometry, cell_peaks, grad_cam, normalize, peak, to_frame
from wsloc.models import ChestXray8Net
from wsloc.models.backbones import build_backbone


def _linearised(module: nn.Module) -> nn.Module:
    """The same geometry with every path linear and dense: ReLU → identity, max pooling →
    average pooling of the same window, BatchNorm in eval mode."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.MaxPool2d):
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                               ceil_mode=child.ceil_mode))
        else:
            _linearised(child)
    return module.eval()


@pytest.mark.parametrize("name,stride,size", [("resnet18", 8, 160), ("resnet18", 16, 256),
                                              ("resnet18", 32, 512), ("vgg16", 32, 320),
                                              ("alexnet", 32, 448)])
def test_cell_centres_match_the_receptive_fields(name, stride, size):
    # the input pixels a cell depends on (its gradient's support) are centred on the cell's
    # centre: measured, independently of the layer walk that cell_geometry does
    torch.manual_seed(0)
    body, _ = build_backbone(name, None, stride)
    s, o = cell_geometry(body)
    assert s == stride
    net = _linearised(body).double()
    x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    y = net(x)
    j = y.shape[-1] // 2
    y[0, :, j, j].sum().backward()
    cols = np.flatnonzero(x.grad[0].abs().sum((0, 1)).numpy() > 0)
    assert cols[0] > 0 and cols[-1] < size - 1, "the receptive field must not be clipped"
    assert (cols[0] + cols[-1]) / 2 == pytest.approx(s * j + o)


def test_resnet_cells_sit_at_stride_times_index():
    assert cell_geometry(build_backbone("resnet50", None, 32)[0]) == (32.0, 0.0)
    assert cell_geometry(build_backbone("vgg16", None, 32)[0]) == (32.0, 15.5)


def test_a_known_peak_lands_where_its_cell_is():
    maps = torch.zeros(2, 12, 12)
    maps[0, 3, 7] = 1.0  # row 3, column 7
    maps[1, 11, 0] = 1.0
    # the network's own frame: cell (3, 7) of a stride-8, offset-0 map is pixel (56, 24)
    heat = to_frame(maps, (96, 96), (96, 96), (8.0, 0.0))
    assert peak(heat[0]) == (56, 24) and heat[0, 24, 56] == pytest.approx(1.0)
    assert heat[0, 24, 60] == pytest.approx(0.5)  # half-way to the next cell centre
    assert peak(heat[1]) == (0, 88)
    # a non-square film resized to the network's 96²: x scales by 1841/96, y by 1955/96
    heat = to_frame(maps, (1955, 1841), (96, 96), (8.0, 0.0))
    assert heat.shape == (2, 1955, 1841)
    x, y = peak(heat[0])
    assert abs(x - ((56 + 0.5) * 1841 / 96 - 0.5)) <= 1
    assert abs(y - ((24 + 0.5) * 1955 / 96 - 0.5)) <= 1
    # the cell route finds the same pixel without drawing the map; where the edge value
    # holds (cell (11, 0) reaches the film's left edge), the pixel nearest the cell's centre
    got = cell_peaks(maps, [(1955, 1841)] * 2, (96, 96), (8.0, 0.0))
    assert got[0] == (x, y)
    assert heat[1, got[1][1], got[1][0]] == heat[1].max()
    assert got[1] == (round((0 + 0.5) * 1841 / 96 - 0.5), peak(heat[1])[1])
    # the half-pixel convention would put it half a cell (4 px = 77 film px) further on
    shifted = torch.nn.functional.interpolate(maps[None], size=(1955, 1841), mode="bilinear",
                                              align_corners=False)[0]
    assert peak(shifted[0])[0] - x > 60


def test_normalize_min_max_constant_and_nan():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = normalize(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # constant: zeros, no division by zero
    maps[1, 0, 0] = float("nan")
    with pytest.raises(HeatmapError, match=r"film_b.png: the heatmap holds NaN"):
        normalize(maps, ["film_a.png", "film_b.png"])


def _unit(m):
    m = m - m.min()
    return m / (1e-7 + m.max())


def test_grad_cam_matches_pytorch_grad_cam():
    cv2 = pytest.importorskip("cv2")
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = ChestXray8Net(4, "resnet18", 16, feature_stride=16).eval()
    x = torch.rand(2, 1, 96, 96)
    layer = model.backbone[-1]  # layer3's last block
    probs, maps = grad_cam(model, x, layer, classes=[0, 2])
    assert maps.shape == (2, 2, 6, 6) and not layer._forward_hooks  # hook removed
    torch.testing.assert_close(probs, torch.sigmoid(model(x)), rtol=1e-5, atol=1e-6)
    with pgc.GradCAM(model=model, target_layers=[layer]) as theirs:
        for j, c in enumerate([0, 2]):
            ref = theirs(input_tensor=x, targets=[ClassifierOutputTarget(c)] * 2)
            for n in range(2):
                # their scaling: normalise, resize, normalise again (over the layer list)
                ours = cv2.resize(np.float32(_unit(maps[n, j].numpy())), (96, 96))
                np.testing.assert_allclose(_unit(ours), ref[n], atol=1e-5)


@pytest.mark.parametrize("stride", [4, 8])
def test_model_cell_centres_match_the_receptive_fields(stride):
    # the fused stride-4 net: layer1's cells and layer2's (upsampled onto them) agree
    torch.manual_seed(0)
    model = ChestXray8Net(2, "resnet18", 8, feature_stride=stride)
    s, o = model.cell_geometry()
    assert (s, o) == (stride, 0.0)
    _linearised(model)
    model.double()
    x = torch.randn(1, 1, 192, 192, dtype=torch.float64, requires_grad=True)
    f = model.forward_features(x)
    assert f.shape[-1] == 192 // stride
    for j in (f.shape[-1] // 2, f.shape[-1] // 2 + 1):  # an even and an odd cell
        x.grad = None
        f[0, :, j, j].sum().backward(retain_graph=True)
        cols = np.flatnonzero(x.grad[0].abs().sum((0, 1)).numpy() > 0)
        assert cols[0] > 0 and cols[-1] < 191
        assert (cols[0] + cols[-1]) / 2 == pytest.approx(s * j + o)


def test_upsample_cells2_puts_cell_k_on_cell_2k():
    from wsloc.models.chestxray8 import upsample_cells2

    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    up = upsample_cells2(x)
    assert up.shape == (1, 1, 6, 8)
    assert torch.equal(up[..., ::2, ::2], x)
    torch.testing.assert_close(up[0, 0, 0, 1], (x[0, 0, 0, 0] + x[0, 0, 0, 1]) / 2)
    torch.testing.assert_close(up[0, 0, 3, 2], (x[0, 0, 1, 1] + x[0, 0, 2, 1]) / 2)
    assert up[0, 0, 0, 7] == x[0, 0, 0, 3] and up[0, 0, 5, 0] == x[0, 0, 2, 0]  # edges repeat


def test_cams_are_taken_in_eval_mode_whatever_the_model_was_left_in():
    from wsloc.cam import class_activation_maps

    torch.manual_seed(0)
    model = ChestXray8Net(3, "resnet18", 8, feature_stride=8)
    x = torch.rand(4, 1, 64, 64)
    model.train()
    with torch.no_grad():
        model(x)  # moves BatchNorm's running statistics away from their start
    probs, cams = class_activation_maps(model, x)
    assert model.training  # the caller's mode is restored
    model.eval()
    with torch.no_grad():
        ref = torch.sigmoid(model(x))
    torch.testing.assert_close(probs, ref)
    torch.testing.assert_close(cams, model.class_maps)
