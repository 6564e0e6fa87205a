import re

import numpy as np
import pytest
import torch
from torch import nn

from wsloc.cam import (
    METHODS,
    HeatmapError,
    cell_geometry,
    cell_maps,
    cell_peaks,
    class_activation_maps,
    grad_cam,
    grad_cam_plus_plus,
    layer_cam,
    normalize,
    peak,
    to_frame,
)
from wsloc.models import ChestXray8Net
from wsloc.models.backbones import build_backbone
from wsloc.plugins import PluginError


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


@pytest.mark.parametrize("ours,theirs_name", [(grad_cam, "GradCAM"),
                                               (grad_cam_plus_plus, "GradCAMPlusPlus"),
                                               (layer_cam, "LayerCAM")])
def test_gradient_methods_match_pytorch_grad_cam(ours, theirs_name):
    cv2 = pytest.importorskip("cv2")
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = ChestXray8Net(4, "resnet18", 16, feature_stride=16).eval()
    x = torch.rand(2, 1, 96, 96)
    layer = model.backbone[-1]  # layer3's last block
    probs, maps = ours(model, x, layer, classes=[0, 2])
    assert maps.shape == (2, 2, 6, 6) and not layer._forward_hooks  # hook removed
    assert all(p.grad is None for p in model.parameters())  # only dA was computed
    torch.testing.assert_close(probs, torch.sigmoid(model(x)), rtol=1e-5, atol=1e-6)
    with getattr(pgc, theirs_name)(model=model, target_layers=[layer]) as theirs:
        for j, c in enumerate([0, 2]):
            targets = [ClassifierOutputTarget(c)] * 2
            ref = theirs(input_tensor=x, targets=targets)
            # their raw maps, before any scaling, from the activations and gradients their
            # hooks kept: the same values as ours, not only the same shape
            acts = theirs.activations_and_grads.activations[0].numpy()
            grads = theirs.activations_and_grads.gradients[0].numpy()
            raw = np.maximum(theirs.get_cam_image(x, layer, targets, acts, grads, False), 0)
            assert raw.max() > 0
            np.testing.assert_allclose(maps[:, j].numpy(), raw, rtol=1e-4,
                                       atol=1e-5 * raw.max())
            for n in range(2):
                # their scaling: normalise, resize, normalise again (over the layer list)
                ours_up = cv2.resize(np.float32(_unit(maps[n, j].numpy())), (96, 96))
                np.testing.assert_allclose(_unit(ours_up), ref[n], atol=1e-5)


def _avg_pool_net():
    """A net whose logits are W · mean_ij(f) + b: d logit_c / df = W[c] / S² everywhere, so
    each gradient method has a closed form in the transition features f."""
    torch.manual_seed(0)
    return ChestXray8Net(3, "resnet18", 8, pooling="avg", feature_stride=8)


def test_cell_maps_of_each_builtin_method():
    model = _avg_pool_net()
    x = torch.rand(2, 1, 64, 64)
    model.train()  # cell_maps works in eval mode and gives the mode back
    got = {m: cell_maps(model, x, m) for m in METHODS}
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
    f, w = model.features.double(), model.prediction.weight.double()
    cells = f.shape[-1] * f.shape[-2]
    gamma = (w / cells)[None, :, :, None, None]  # [1, C, D, 1, 1]: g of class c, channel d
    a = f[:, None]  # [N, 1, D, S, S]
    alpha = gamma**2 / (2 * gamma**2 + a.sum((3, 4), keepdim=True) * gamma**3 + 1e-6)
    want = {"cam": model.class_maps.double(),
            "gradcam": torch.relu(model.class_maps.double()) / cells,
            "layercam": torch.einsum("cd,ndhw->nchw", torch.relu(w), f) / cells,
            "gradcam++": torch.relu(((alpha * torch.relu(gamma)).sum((3, 4), keepdim=True)
                                     * cells * a).sum(2))}
    for m in METHODS:
        probs, maps = got[m]
        assert maps.shape == model.class_maps.shape == (2, 3, 8, 8), m
        torch.testing.assert_close(probs, torch.sigmoid(logits), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(maps.double(), want[m], rtol=1e-4, atol=1e-6, msg=m)
    # the methods differ (so each check above tells them apart)
    for m in ("gradcam", "gradcam++", "layercam"):
        for other in METHODS:
            if other != m:
                assert not torch.allclose(normalize(got[m][1]), normalize(got[other][1]),
                                          atol=1e-3), (m, other)


def test_cell_maps_are_the_functions_on_the_transition_layer():
    torch.manual_seed(0)
    model = ChestXray8Net(3, "resnet18", 8, feature_stride=8).eval()
    x = torch.rand(2, 1, 64, 64)
    probs, cams = class_activation_maps(model, x)
    torch.testing.assert_close(cell_maps(model, x, "cam")[1], cams)
    for name, fn in (("gradcam", grad_cam), ("gradcam++", grad_cam_plus_plus),
                     ("layercam", layer_cam)):
        p, maps = cell_maps(model, x, name)
        ref_p, ref = fn(model, x, model.transition)
        torch.testing.assert_close(p, ref_p)
        torch.testing.assert_close(maps, ref)
        assert maps.shape == cams.shape and maps.max() > 0
        p, maps = cell_maps(model, x, name, channels_last=True)
        torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-5 * float(ref.max()))
    assert not model.transition._forward_hooks


def test_grad_cam_rejects_a_layer_or_class_it_cannot_explain():
    torch.manual_seed(0)
    model = ChestXray8Net(3, "resnet18", 8, feature_stride=8).eval()
    x = torch.rand(1, 1, 64, 64)
    with pytest.raises(ValueError, match="layer_cam: `layer` did not run"):
        layer_cam(model, x, nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match=r"`classes` must be ints in \[0, 3\), got 3"):
        grad_cam_plus_plus(model, x, model.transition, classes=[3])
    assert not model.transition._forward_hooks


USER_METHODS = """
import torch
from wsloc.cam import class_activation_maps

seen = []


def doubled(model, x):
    seen.append((model.training, torch.is_grad_enabled()))
    probs, maps = class_activation_maps(model, x)
    return probs, 2 * maps


def upsampled(model, x):
    probs, maps = class_activation_maps(model, x)
    return probs, torch.nn.functional.interpolate(maps, scale_factor=2)


def maps_only(model, x):
    return class_activation_maps(model, x)[1]


def logits(model, x):
    return model(x), model.class_maps


def broken(model, x):
    raise RuntimeError("boom")


not_callable = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of heatmap methods on sys.path, as a user's own would be."""
    import sys

    (tmp_path / "wsloc_test_user_cams.py").write_text(USER_METHODS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "wsloc_test_user_cams"
    sys.modules.pop("wsloc_test_user_cams", None)


def test_a_user_method_by_module_path_and_by_entry_point(user_module, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = ChestXray8Net(3, "resnet18", 8, feature_stride=8)
    x = torch.rand(2, 1, 64, 64)
    model.train()
    probs, maps = cell_maps(model, x, f"{user_module}:doubled")
    assert model.training  # restored
    import wsloc_test_user_cams as mine

    assert mine.seen == [(False, True)]  # called in eval mode, autograd on
    ref_p, ref = class_activation_maps(model, x)
    torch.testing.assert_close(probs, ref_p)
    torch.testing.assert_close(maps, 2 * ref)
    # an installed package's entry point (a dist-info folder on sys.path is one)
    info = tmp_path / "wsloc_test_user_cams-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wsloc-test-user-cams\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(f"[wsloc.cam_methods]\ntwice = {user_module}:doubled\n")
    _, maps = cell_maps(model, x, "twice")
    torch.testing.assert_close(maps, 2 * ref)


@pytest.mark.parametrize("suffix,match", [
    (":upsampled", r"must return \(probabilities \[2, 3\], maps \[2, 3, 8, 8\]\) on the "
                   r"model's cell grid for a \[2, 1, 64, 64\] batch, got probabilities "
                   r"\[2, 3\] and maps \[2, 3, 16, 16\]"),
    (":maps_only", r"must return .* got a Tensor"),
    (":logits", r"must return probabilities in \[0, 1\]"),
    (":broken", r"failed on a \[2, 1, 64, 64\] batch \(RuntimeError: boom\)"),
    (":not_callable", r"is a int, not a callable"),
    (":missing", r"has no 'missing'"),
])
def test_a_wrong_user_method_is_an_error_naming_it(user_module, suffix, match):
    torch.manual_seed(0)
    model = ChestXray8Net(3, "resnet18", 8, feature_stride=8)
    name = user_module + suffix
    with pytest.raises(PluginError, match=f"--method {name!r}"):
        cell_maps(model, torch.rand(2, 1, 64, 64), name)
    with pytest.raises(PluginError, match=match):
        cell_maps(model, torch.rand(2, 1, 64, 64), name)
    assert model.training  # restored even so


def test_unknown_methods_and_models_without_them_are_clear_errors():
    from wsloc.engine.localize import Localizer
    from wsloc.models import PixelNet

    torch.manual_seed(0)
    model = ChestXray8Net(3, "resnet18", 8, feature_stride=8)
    x = torch.rand(1, 1, 64, 64)
    with pytest.raises(PluginError, match="'wsloc_no_such_module:f': cannot import module "
                                          "'wsloc_no_such_module'"):
        cell_maps(model, x, "wsloc_no_such_module:f")
    with pytest.raises(PluginError, match=re.escape(
            "--method 'gradcam+' is not known; valid: cam, gradcam, gradcam++, layercam")):
        Localizer(model, ["a", "b", "c"], (64, 64), method="gradcam+")  # before any film
    pixel = PixelNet(3, "resnet18", 8, feature_stride=8, head_channels=4)
    assert cell_maps(pixel, x, "cam")[1].shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="--method 'layercam' needs a ChestX-ray8 model .* a "
                                         "PixelNet has only 'cam'"):
        cell_maps(pixel, x, "layercam")


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
