"""ImageNet backbones from torchvision with their classifiers removed, chosen by name.

Each builder returns ``(features, channels)``: a module mapping [N, 3, H, W] to the last
convolutional feature map [N, channels, H/32, W/32] (AlexNet: its own stride).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = ["BACKBONES", "build_backbone", "stage_channels"]


# how many of a ResNet's stages to keep for each feature stride (the paper's S = input / stride)
RESNET_STAGES = {4: 2, 8: 2, 16: 3, 32: 4}  # stride 4: layer1 fused with layer2 (the model)


def stage_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage (a Sequential of BasicBlocks or Bottlenecks)."""
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def _resnet_body(net, stride: int = 32):
    stages = [net.layer1, net.layer2, net.layer3, net.layer4][: RESNET_STAGES[stride]]
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *stages)
    return body, stage_channels(stages[-1])


def _googlenet_body(net):
    names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
             "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
             "inception4e", "maxpool4", "inception5a", "inception5b"]
    return nn.Sequential(*(getattr(net, n) for n in names)), 1024


# name: (torchvision constructor, its weights enum, extractor of (features, channels))
BACKBONES: dict[str, tuple[str, str, Callable]] = {
    "resnet18": ("resnet18", "ResNet18_Weights", _resnet_body),
    "resnet50": ("resnet50", "ResNet50_Weights", _resnet_body),
    "densenet121": ("densenet121", "DenseNet121_Weights",
                    lambda net: (nn.Sequential(net.features, nn.ReLU(inplace=True)),
                                 net.classifier.in_features)),
    "vgg16": ("vgg16", "VGG16_Weights", lambda net: (net.features, 512)),
    "alexnet": ("alexnet", "AlexNet_Weights", lambda net: (net.features, 256)),
    "googlenet": ("googlenet", "GoogLeNet_Weights", _googlenet_body),
}


def build_backbone(name: str, weights: str | None = None,
                   stride: int = 32) -> tuple[nn.Module, int]:
    """The backbone ``name`` (see ``BACKBONES``) and its output channels.

    Args:
        stride: the feature map's stride. 32: the whole network. ResNets also take 16 (cut
            after layer3) and 8 (cut after layer2): finer maps, so finer heatmaps, and less
            compute; 4 gives the stride-8 body, whose layer1 (stride 4) the model fuses
            with layer2 (see :class:`wsloc.models.ChestXray8Net`).
        weights: ``None``/``"none"`` (random init), ``"imagenet"`` (torchvision's weights:
            downloaded when online, else read from torch's hub cache), or a path to a state
            dict of the torchvision model (loaded with ``weights_only=True``).
    """
    import torchvision

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    ctor_name, enum_name, extract = BACKBONES[name]
    if stride != 32:
        if not name.startswith("resnet") or stride not in RESNET_STAGES:
            raise ValueError(f"model.feature_stride must be 32 for {name} (ResNets also take "
                             f"4, 8 or 16), got {stride!r}")
        base = extract
        extract = lambda net: base(net, stride)  # noqa: E731
    ctor = getattr(torchvision.models, ctor_name)
    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    if weights in (None, "none"):
        return extract(ctor(weights=None, **extra))
    if weights == "imagenet":
        enum = getattr(torchvision.models, enum_name).DEFAULT
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        try:
            return extract(ctor(weights=enum, **({"aux_logits": False} if extra else {})))
        except (OSError, RuntimeError) as err:  # offline: urllib's URLError is an OSError
            raise FileNotFoundError(
                f"cannot download the ImageNet weights of {name} ({err}). Offline, put "
                f"{enum.url} at {target}, or set model.weights to a local state-dict file"
            ) from err
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: no such file {path} (use 'imagenet', 'none' "
                                "or a state-dict file)")
    net = ctor(weights=None, **extra)
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, _ = net.load_state_dict(state, strict=False)
    body_missing = [k for k in missing if not k.startswith(("fc.", "classifier.", "aux"))]
    if body_missing:
        raise ValueError(f"model.weights: {path} does not fit {name} (missing "
                         f"{body_missing[:3]}...)")
    return extract(net)
