"""The image-to-pixel network (Pinheiro & Collobert, CVPR 2015), for multi-label films.

Backbone → transition (as :class:`wsloc.models.ChestXray8Net`) → a few 3×3 convolutions →
one score plane per class plus one for background, s_k(x), at the feature stride (4, 8 or
16). For training, each class's plane is read against the background's, d_c(x) = s_c(x) −
s_bg(x) — the log-odds of "class c rather than background" at x — and aggregated to an
image logit by global Log-Sum-Exp pooling from :mod:`wsloc.ops`, z_c = (1/r)·log mean_x
exp(r·d_c(x)), with a small r (the paper: around 5) so that every pixel of a finding
counts, not just its peak.

The loss is the multi-label one wsloc trains every model with (the paper's W-CEL, or BCE) on
the C image logits. P&C put a softmax over the classes (and background) of the aggregated
scores, which assumes one class per image; a chest film can show several findings at
once, so each finding is its own yes/no here, and background enters where P&C's per-pixel
softmax has it: at inference, p(k | x) = softmax over {s_bg, s_1, …, s_C} at x, which is
exactly exp(d_c) / (1 + Σ_j exp(d_j)) for the planes trained above.

``forward`` returns the logits [N, C] and keeps ``model.pixel_scores`` [N, C+1, S, S]
(background last) and ``model.class_maps`` = d [N, C, S, S], so the CAM tools
(``wsloc heatmap``) work on this model too.
"""

from __future__ import annotations

from torch import Tensor, nn

from wsloc.models.chestxray8 import ChestXray8Net

__all__ = ["PixelNet"]


class PixelNet(ChestXray8Net):
    """Args:
        num_classes: C (the network has C + 1 score planes: the classes, then background).
        backbone, weights, freeze_bn, feature_stride, transition_channels: as
            :class:`ChestXray8Net` (stride 4, 8 or 16: the score planes' stride).
        head_channels: width of the two 3×3 convolutions before the score planes.
        r: the LSE sharpness of the aggregation (fixed, or learned per class with
            ``learn_r``).
        pooling, pool_on: accepted for the config's sake; must be ``"lse"`` and
            ``"classes"``.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet18",
                 transition_channels: int = 256, pooling: str = "lse", r: float = 5.0,
                 learn_r: bool = False, pool_on: str = "classes", weights: str | None = None,
                 freeze_bn: bool = False, feature_stride: int = 8,
                 head_channels: int = 128) -> None:
        if pooling != "lse" or pool_on != "classes":
            raise ValueError(f"the pixel model aggregates each class plane by LSE: "
                             f"model.pooling must be 'lse' and model.pool_on 'classes', got "
                             f"{pooling!r} and {pool_on!r}")
        if feature_stride not in (4, 8, 16):
            raise ValueError(f"the pixel model's score planes need a fine stride: "
                             f"model.feature_stride must be 4, 8 or 16, got {feature_stride}")
        super().__init__(num_classes, backbone, transition_channels, "lse", r, learn_r,
                         "classes", weights, freeze_bn, feature_stride)
        del self.prediction  # the score planes replace the linear prediction layer
        layers: list[nn.Module] = []
        width = transition_channels
        for _ in range(2):  # 3×3, padding 1: symmetric, so the cells keep their centres
            layers += [nn.Conv2d(width, head_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True)]
            width = head_channels
        layers.append(nn.Conv2d(width, num_classes + 1, 1))
        self.head = nn.Sequential(*layers)
        self.pixel_scores: Tensor | None = None

    def forward_head(self, f: Tensor) -> Tensor:
        """Transition features → image logits [N, C]; keeps ``pixel_scores`` [N, C+1, S, S]
        and ``class_maps`` (each class's plane minus background's) [N, C, S, S]."""
        self.features = f
        s = self.head(f)
        self.pixel_scores = s
        self.class_maps = s[:, :-1] - s[:, -1:]
        return self.pool(self.class_maps)
