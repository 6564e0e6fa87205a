import urllib.error

import pytest
import torch

from wsloc.models import ChestXray8Net, build_model
from wsloc.models.backbones import BACKBONES, build_backbone


def _model(**kw):
    cfg = dict(backbone="resnet18", transition_channels=16, pooling="lse", r=10.0) | kw
    return build_model(cfg, 5)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone(backbone):
    model = _model(backbone=backbone).eval()
    logits = model(torch.rand(2, 1, 96, 96))
    assert logits.shape == (2, 5)
    assert model.features.shape[:2] == (2, 16) and model.class_maps.shape[:2] == (2, 5)


def test_cam_is_the_prediction_weights_on_the_features():
    model = _model(pooling="avg").eval()
    logits = model(torch.rand(3, 1, 64, 64))
    w = model.prediction.weight
    cam = (w[None, :, :, None, None] * model.features[:, None]).sum(2)
    torch.testing.assert_close(model.class_maps, cam)
    # with average pooling the logits are the mean of the CAM plus the bias
    torch.testing.assert_close(logits, cam.mean((2, 3)) + model.prediction.bias,
                               rtol=1e-5, atol=1e-5)


def test_pooling_choices_and_learned_r():
    x = torch.rand(2, 1, 64, 64)
    for pooling in ("lse", "max", "avg", "softpool", "wildcat"):
        assert _model(pooling=pooling)(x).shape == (2, 5)
    model = _model(learn_r=True, pool_on="classes")
    model(x).sum().backward()
    assert model.pool.log_r.shape == (5,) and model.pool.log_r.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="model.pooling 'median' is not known; valid: lse, max"):
        _model(pooling="median")
    with pytest.raises(ValueError, match="learn_r needs pooling 'lse'"):
        _model(pooling="max", learn_r=True)
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'"):
        _model(backbone="resnet7")


def test_a_list_of_r_pools_by_the_mean_of_lse_at_each():
    model = _model(r=[10.0, 4.0], pool_on="classes").eval()
    logits = model(torch.rand(3, 1, 64, 64))
    maps = model.class_maps.flatten(2)  # the formula: log(mean exp(r·x)) / r, per r
    lse = [(torch.logsumexp(r * maps, 2) - torch.log(torch.tensor(maps.shape[2]))) / r
           for r in (10.0, 4.0)]
    torch.testing.assert_close(logits, (lse[0] + lse[1]) / 2 + model.prediction.bias,
                               rtol=1e-5, atol=1e-5)
    one = _model(r=[10.0], pool_on="classes")  # a list of one is plain LSE
    assert type(one.pool).__name__ == "LSEPool2d" and one.pool.r == 10.0
    for bad in (dict(pooling="max"), dict(learn_r=True)):
        with pytest.raises(ValueError, match="a list of model.r values needs pooling 'lse'"):
            _model(r=[10.0, 4.0], **bad)


def test_freeze_bn_keeps_batchnorm_in_eval():
    model = _model(freeze_bn=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.prediction.training


def test_weights_from_a_file_and_offline_imagenet(tmp_path, monkeypatch):
    import torchvision

    src = torchvision.models.resnet18(weights=None)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    body, channels = build_backbone("resnet18", str(tmp_path / "r18.pth"))
    assert channels == 512
    torch.testing.assert_close(body[0].weight, src.conv1.weight)
    torch.testing.assert_close(body[7][1].conv2.weight, src.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="model.weights: no such file"):
        build_backbone("resnet18", str(tmp_path / "none.pth"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match=r"Offline, put https://.*resnet18.* at .*"
                                                r"checkpoints"):
        build_backbone("resnet18", "imagenet")


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_feature_strides(backbone, stride):
    model = ChestXray8Net(3, backbone, 8, feature_stride=stride, pool_on="classes").eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3) and model.class_maps.shape == (2, 3, 64 // stride,
                                                                 64 // stride)
    assert model.cell_geometry() == (stride, 0.0)


def test_feature_stride_is_checked():
    with pytest.raises(ValueError, match=r"model.feature_stride must be 32 for vgg16"):
        ChestXray8Net(3, "vgg16", 8, feature_stride=8)


def test_sort_pooling_head_weighs_the_top_cells_of_each_class_map():
    from wsloc.models.chestxray8 import SORT_RANKS

    model = _model(pooling="sort", pool_on="classes").eval()
    x = torch.rand(2, 1, 160, 160)
    logits = model(x)
    top = model.class_maps.flatten(2).topk(SORT_RANKS, -1).values  # starts as their mean
    torch.testing.assert_close(logits, top.mean(-1) + model.prediction.bias, rtol=1e-5,
                               atol=1e-5)
    assert model.pool.weight.shape == (5, SORT_RANKS)
    logits[:, 2].sum().backward()
    grad = model.pool.weight.grad
    torch.testing.assert_close(grad[2], top[:, 2].sum(0).detach(), rtol=1e-5, atol=1e-5)
    assert grad[[0, 1, 3, 4]].abs().sum() == 0
