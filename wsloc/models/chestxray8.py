"""The ChestX-ray8 network (Wang et al., CVPR 2017): backbone → transition → pooling → prediction.

``forward`` returns the logits [N, C] and keeps the transition features in
``model.features`` (and the class maps in ``model.class_maps``), so a CAM needs no second
pass: the heatmap of class c is Σ_d w[c, d] · f_d, the prediction weights applied to the
transition features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsloc import ops
from wsloc.models.backbones import build_backbone

__all__ = ["ChestXray8Net", "POOLINGS", "build_pooling"]

POOLINGS = ("lse", "max", "avg", "softpool", "wildcat")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_pooling(name: str, channels: int, r: float = 10.0, learn_r: bool = False,
                  kmax: float = 0.1, kmin: float = 0.0, alpha: float = 0.7) -> nn.Module:
    """A global pooling from :mod:`wsloc.ops` by name: [N, K, S, S] → [N, K]."""
    if name == "lse":
        return ops.LSEPool2d(r, learn_r=learn_r, num_channels=channels if learn_r else None)
    if learn_r:
        raise ValueError(f"model.learn_r needs pooling 'lse', got pooling {name!r}")
    if name == "max":
        return ops.GlobalMaxPool2d()
    if name == "avg":
        return ops.GlobalAvgPool2d()
    if name == "softpool":
        return ops.SoftPool2d()
    if name == "wildcat":
        return ops.WildcatPool2d(kmax, kmin, alpha)
    raise ValueError(f"unknown pooling {name!r}; choose one of {', '.join(POOLINGS)}")


class ChestXray8Net(nn.Module):
    """Backbone (classifier removed) → transition (1×1 conv to D channels, BatchNorm, ReLU) on
    the S×S map → global
    pooling → prediction layer (linear D → C). Sigmoid of the logits gives the scores.

    Args:
        num_classes: C.
        backbone: a name from :data:`wsloc.models.backbones.BACKBONES`.
        transition_channels: D (the paper: 1024 or 2048).
        pooling: ``lse`` (sharpness ``r``, or learned per pooled channel with ``learn_r``),
            ``max``, ``avg``, ``softpool`` or ``wildcat``.
        pool_on: ``"features"`` (the paper: pool the D transition channels, then predict) or
            ``"classes"`` (predict per position, then pool each class map — with
            ``learn_r``, one r per class).
        weights: backbone weights, see :func:`build_backbone`.
        freeze_bn: keep BatchNorm in eval mode while training.
        feature_stride: 32 (the paper), or 16 / 8 for a ResNet cut after layer3 / layer2.

    Input: Tensor[N, 1, H, W] gray in [0, 1] (or [N, 3, H, W]); it is repeated to 3 channels
    and normalised with ImageNet's statistics inside the model. S = H / feature_stride.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50",
                 transition_channels: int = 1024, pooling: str = "lse", r: float = 10.0,
                 learn_r: bool = False, pool_on: str = "features", weights: str | None = None,
                 freeze_bn: bool = False, feature_stride: int = 32, **pool_kwargs) -> None:
        super().__init__()
        self.freeze_bn = freeze_bn
        if pool_on not in ("features", "classes"):
            raise ValueError(f"model.pool_on must be 'features' or 'classes', got {pool_on!r}")
        self.backbone, channels = build_backbone(backbone, weights, feature_stride)
        self.backbone_name = backbone
        self.feature_stride = feature_stride
        self.transition = nn.Sequential(
            nn.Conv2d(channels, transition_channels, 1, bias=False),
            nn.BatchNorm2d(transition_channels), nn.ReLU(inplace=True))
        self.pool_on = pool_on
        pooled = transition_channels if pool_on == "features" else num_classes
        self.pool = build_pooling(pooling, pooled, r=r, learn_r=learn_r, **pool_kwargs)
        self.prediction = nn.Linear(transition_channels, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.features: Tensor | None = None
        self.class_maps: Tensor | None = None

    def train(self, mode: bool = True) -> ChestXray8Net:
        """As nn.Module.train; with ``freeze_bn`` the BatchNorm layers stay in eval mode (their
        running statistics act as a fixed affine map, as when fine-tuning small batches)."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """[N, 1 or 3, H, W] → transition features f [N, D, S, S]."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.transition(self.backbone((x - self.mean) / self.std))

    def forward_head(self, f: Tensor) -> Tensor:
        """Transition features → logits [N, C]; keeps ``features`` and ``class_maps``."""
        self.features = f
        w, b = self.prediction.weight, self.prediction.bias
        self.class_maps = torch.einsum("cd,ndhw->nchw", w, f)  # CAM before the bias
        if self.pool_on == "features":
            return self.prediction(self.pool(f))
        return self.pool(self.class_maps) + b

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
