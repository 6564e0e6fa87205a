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
from wsloc.models.backbones import build_backbone, stage_channels

__all__ = ["ChestXray8Net", "MeanLSEPool2d", "POOLINGS", "build_pooling", "user_pooling"]

POOLINGS = ("lse", "max", "avg", "softpool", "wildcat", "sort")
SORT_RANKS = 16  # model.pooling: sort weighs each map's 16 highest cells
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MeanLSEPool2d(nn.Module):
    """The mean of global LSE poolings at several sharpnesses: [N, K, S, S] → [N, K]. A sharp
    r (10) keeps a finding's peak; a soft one (4) also rewards the rest of it, so class maps
    cover more of a large finding without losing a small one's place."""

    def __init__(self, rs) -> None:
        super().__init__()
        self.pools = nn.ModuleList(ops.LSEPool2d(float(r)) for r in rs)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([pool(x) for pool in self.pools]).mean(0)


def build_pooling(name: str, channels: int, r: float | list = 10.0, learn_r: bool = False,
                  kmax: float = 0.1, kmin: float = 0.0, alpha: float = 0.7) -> nn.Module:
    """A global pooling from :mod:`wsloc.ops` by name: [N, K, S, S] → [N, K]. For ``lse``,
    ``r`` may be a list of sharpnesses: the mean of LSE at each (:class:`MeanLSEPool2d`).
    Any other name is a user's pooling (:func:`user_pooling`)."""
    if isinstance(r, (list, tuple)):
        if name != "lse" or learn_r or not r:
            raise ValueError("a list of model.r values needs pooling 'lse' without learn_r, "
                             f"got pooling {name!r}, learn_r {learn_r}, r {r!r}")
        if len(r) > 1:
            return MeanLSEPool2d(r)
        r = r[0]
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
    if name == "sort":  # one learned weight per rank and pooled channel, from the top-16 mean
        return ops.SortPool2d(None, ranks=SORT_RANKS, num_channels=channels, init="mean")
    return user_pooling(name, channels)


def user_pooling(name: str, channels: int) -> nn.Module:
    """A pooling from outside wsloc (``model.pooling: package.module:MyPool``, or a name an
    installed package registers under the entry-point group ``wsloc.pooling``): an
    ``nn.Module`` class or a factory returning one, called with ``channels=K`` when it takes
    a ``channels`` argument and with nothing otherwise. It must map [N, K, S, S] to [N, K];
    it is tried once on a small input, and anything else is an error naming it."""
    import inspect

    from wsloc.plugins import PluginError, resolve

    what = "model.pooling"
    obj = resolve(name, "wsloc.pooling", POOLINGS, what)
    if isinstance(obj, str):  # a built-in name that reached here: not a global pooling
        raise PluginError(f"{what} {name!r} is not a global pooling")
    if isinstance(obj, nn.Module):
        module = obj
    elif callable(obj):
        try:
            takes = "channels" in inspect.signature(obj).parameters
        except (TypeError, ValueError):
            takes = False
        try:
            module = obj(channels=channels) if takes else obj()
        except Exception as err:
            raise PluginError(f"{what} {name!r}: building it failed ({err})") from err
    else:
        raise PluginError(f"{what} {name!r} is a {type(obj).__name__}, not an nn.Module "
                          "class or a factory")
    if not isinstance(module, nn.Module):
        raise PluginError(f"{what} {name!r} gave a {type(module).__name__}, not an nn.Module")
    # the probe must not move the global RNG (the rows of an ablation start from the same
    # weights whatever their pooling) nor a BatchNorm's running statistics
    probe = torch.randn(2, channels, 5, 5, generator=torch.Generator().manual_seed(0))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = module(probe)
    except Exception as err:
        raise PluginError(f"{what} {name!r} failed on a [2, {channels}, 5, 5] input "
                          f"({type(err).__name__}: {err})") from err
    finally:
        module.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, channels):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise PluginError(f"{what} {name!r} must map [N, K, S, S] to [N, K]; on "
                          f"[2, {channels}, 5, 5] it gave {shape}")
    return module


def upsample_cells2(x: Tensor) -> Tensor:
    """[N, C, S, S] → [N, C, 2S, 2S] with cell k of the input on cell 2k of the output (the
    centres ResNet strides give: cell k of a stride-8 map sits where cell 2k of the
    stride-4 map does); odd cells are the mean of their neighbours, the last one repeats."""
    nxt = torch.cat([x[..., 1:], x[..., -1:]], -1)
    x = torch.stack([x, (x + nxt) / 2], -1).flatten(-2)
    nxt = torch.cat([x[..., 1:, :], x[..., -1:, :]], -2)
    return torch.stack([x, (x + nxt) / 2], -2).flatten(-3, -2)


class FusedTransition(nn.Module):
    """The stride-4 transition: 1×1 convs on layer1 (stride 4) and layer2 (stride 8), the
    latter upsampled onto the former's cells, summed, then BatchNorm and ReLU — finer maps
    with layer2's context, for little more compute than the stride-8 net."""

    def __init__(self, fine: int, coarse: int, out: int) -> None:
        super().__init__()
        self.fine = nn.Conv2d(fine, out, 1, bias=False)
        self.coarse = nn.Conv2d(coarse, out, 1, bias=False)
        self.post = nn.Sequential(nn.BatchNorm2d(out), nn.ReLU(inplace=True))

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:
        up = upsample_cells2(self.coarse(coarse))[..., : fine.shape[-2], : fine.shape[-1]]
        return self.post(self.fine(fine) + up)


class ChestXray8Net(nn.Module):
    """Backbone (classifier removed) → transition (1×1 conv to D channels, BatchNorm, ReLU) on
    the S×S map → global
    pooling → prediction layer (linear D → C). Sigmoid of the logits gives the scores.

    Args:
        num_classes: C.
        backbone: a name from :data:`wsloc.models.backbones.BACKBONES`.
        transition_channels: D (the paper: 1024 or 2048).
        pooling: ``lse`` (sharpness ``r``, or learned per pooled channel with ``learn_r``, or
            the mean of LSE at each of a list of ``r``),
            ``max``, ``avg``, ``softpool``, ``wildcat``, ``sort`` (sort pooling over the
            whole map: each map's 16 highest cells, one learned weight per rank and pooled
            channel, starting as their mean), or a user's pooling
            (``package.module:Name`` or an entry point: :func:`user_pooling`).
        pool_on: ``"features"`` (the paper: pool the D transition channels, then predict) or
            ``"classes"`` (predict per position, then pool each class map — with
            ``learn_r``, one r per class).
        weights: backbone weights, see :func:`build_backbone`.
        freeze_bn: keep BatchNorm in eval mode while training.
        feature_stride: 32 (the paper), or 16 / 8 for a ResNet cut after layer3 / layer2;
            4: layer1 and layer2 fused (:class:`FusedTransition`).

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
        if feature_stride == 4:
            self.transition = FusedTransition(stage_channels(self.backbone[-2]), channels,
                                              transition_channels)
        else:
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
        self.cam_shift_x = 0.0  # input pixels; set from a checkpoint's mirror calibration

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
        x = (x - self.mean) / self.std
        if self.feature_stride == 4:
            fine = self.backbone[:-1](x)
            return self.transition(fine, self.backbone[-1](fine))
        return self.transition(self.backbone(x))

    def cell_geometry(self) -> tuple[float, ...]:
        """(stride, offset): cell j of the class maps is centred on input pixel
        stride·j + offset (see :func:`wsloc.cam.cell_geometry`). After a mirror calibration
        (``cam_shift_x`` ≠ 0, :mod:`wsloc.engine.calibrate`) the maps' content sits
        ``cam_shift_x`` input pixels right of where the layers put it, so the columns are
        read at ``offset − cam_shift_x``: (stride, offset, offset − cam_shift_x)."""
        from wsloc.cam import cell_geometry

        stride, offset = cell_geometry(self.backbone[:-1] if self.feature_stride == 4
                                       else self.backbone)
        shift = float(getattr(self, "cam_shift_x", 0.0))
        return (stride, offset) if shift == 0 else (stride, offset, offset - shift)

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
