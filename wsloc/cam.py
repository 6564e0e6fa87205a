"""Heatmaps: CAM from the forward pass that gives the scores, Grad-CAM, and their mapping
onto the original film.

CAM (ChestX-ray8, Wang et al. 2017): heatmap_c = Σ_d w[c, d] · f_d, the prediction weights
applied to the transition features; :class:`wsloc.models.ChestXray8Net` keeps these maps
(``model.class_maps``) when it computes the scores, so they cost no second pass.

Where a feature cell sits matters. In torchvision's ResNets every strided layer pads
symmetrically and starts at 0, so cell j of a stride-s map is centred on input pixel s·j,
not s·(j + ½): upsampling with the usual half-pixel convention (``F.interpolate``,
``cv2.resize``) would shift every heatmap half a cell toward the bottom-right.
:func:`cell_geometry` reads each backbone's stride and offset off its layers, and
:func:`to_frame` interpolates the cells at their true centres straight into the original
image's pixels (undoing the network's resize, non-square films included).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["cell_geometry", "class_activation_maps", "grad_cam", "to_frame", "normalize",
           "peak", "peaks", "cell_peaks", "cell_to_pixel", "HeatmapError"]


class HeatmapError(ValueError):
    """A heatmap that cannot be used (NaN in it); the message names the image."""


def _conv_like(m: nn.Module):
    """(kernel, stride, padding, dilation) along one axis of a layer that moves cells."""
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        pick = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731
        dilation = pick(getattr(m, "dilation", 1))
        return pick(m.kernel_size), pick(m.stride), pick(m.padding), dilation
    return None


def _walk(module: nn.Module, stride: float, offset: float) -> tuple[float, float]:
    """Compose (stride, offset) through ``module``: a cell j of its output is centred on
    input pixel ``stride·j + offset``."""
    geometry = _conv_like(module)
    if geometry is not None:
        k, s, p, d = geometry
        # output cell j covers input cells s·j − p … s·j − p + d·(k − 1): centre s·j − p + d(k−1)/2
        return stride * s, offset + stride * (d * (k - 1) / 2 - p)
    name = type(module).__name__
    if name in ("BasicBlock", "Bottleneck"):  # the main path; the shortcut agrees with it
        for conv in ("conv1", "conv2", "conv3"):
            if hasattr(module, conv):
                stride, offset = _walk(getattr(module, conv), stride, offset)
        return stride, offset
    if name in ("Inception", "_DenseBlock", "_DenseLayer", "InceptionAux"):
        return stride, offset  # parallel branches, each stride 1 and 'same' padded
    for child in module.children():
        stride, offset = _walk(child, stride, offset)
    return stride, offset


def cell_geometry(backbone: nn.Module) -> tuple[float, float]:
    """(stride, offset) of a backbone's output cells in input pixels: cell j is centred on
    input pixel ``stride·j + offset`` (pixel i spans [i − ½, i + ½]). ResNets: (s, 0);
    VGG-16: (32, 15.5)."""
    return _walk(backbone, 1.0, 0.0)


@torch.no_grad()
def class_activation_maps(model, x: Tensor, channels_last: bool = False
                          ) -> tuple[Tensor, Tensor]:
    """One forward pass: (probabilities [N, C], CAMs [N, C, S, S]) of a ChestXray8Net, in
    eval mode (BatchNorm's running statistics, whatever mode the model was left in, which
    is restored after). ``x`` is moved to the model's device, channels_last when asked (as
    the model was trained)."""
    x = x.to(next(model.parameters()).device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
        return torch.sigmoid(logits.float()), model.class_maps.float()
    finally:
        model.train(was_training)


def grad_cam(model: nn.Module, x: Tensor, layer: nn.Module,
             classes: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) at any layer of any classifier: for class c, the
    layer's activations A weighted by the spatial mean of d logit_c / dA, summed over
    channels, through a ReLU. Hooks are removed in ``finally``.

    Args:
        model: maps x to logits [N, C].
        x: Tensor[N, ...], the model's input.
        layer: the module whose output A [N, K, h, w] is explained.
        classes: the classes to explain (default: all).

    Returns:
        (probabilities [N, C], maps [N, len(classes), h, w]).
    """
    store: dict[str, Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # so A needs grad even in a frozen model
            logits = model(x)
            if "a" not in store:
                raise ValueError("grad_cam: `layer` did not run in the model's forward pass")
            a = store["a"]
            classes = range(logits.shape[1]) if classes is None else classes
            maps = []
            for i, c in enumerate(classes):
                a.grad = None
                logits[:, c].sum().backward(retain_graph=i < len(classes) - 1)
                weights = a.grad.mean((2, 3), keepdim=True)
                maps.append(torch.relu((weights * a).sum(1)).detach())
    finally:
        handle.remove()
        model.train(was_training)
    return torch.sigmoid(logits.detach().float()), torch.stack(maps, 1).float()


@functools.lru_cache(maxsize=64)
def _axis_weights(n_frame: int, n_net: int, cells: int, stride: float,
                  offset: float) -> Tensor:
    """[n_frame, cells] linear-interpolation weights from cells to the film's pixels. Pixel p
    of the film sits at network-input pixel (p + ½)·n_net/n_frame − ½ (the resize's own
    mapping), i.e. at cell (that − offset) / stride; beyond the first and last cell centres
    the edge value holds. Cached: films of one size share them."""
    p = torch.arange(n_frame, dtype=torch.float64)
    u = (((p + 0.5) * n_net / n_frame - 0.5) - offset) / stride
    u = u.clamp(0, cells - 1)
    lo = u.floor().long().clamp(max=cells - 1)
    hi = (lo + 1).clamp(max=cells - 1)
    frac = u - lo
    w = torch.zeros(n_frame, cells, dtype=torch.float64)
    w.scatter_add_(1, lo[:, None], (1 - frac)[:, None])
    w.scatter_add_(1, hi[:, None], frac[:, None])
    return w.float()


def to_frame(maps: Tensor, frame: tuple[int, int], net_size: tuple[int, int],
             geometry: tuple[float, float]) -> Tensor:
    """Map cell maps onto the original film's pixels.

    Args:
        maps: Tensor[..., S_h, S_w], cell maps of one image (or of a batch whose films share
            a size).
        frame: (height, width) of the original film.
        net_size: (height, width) the film was resized to for the network.
        geometry: (stride, offset) from :func:`cell_geometry`.

    Returns:
        Tensor[..., height, width]: bilinear in the cells, each cell at its true centre.
    """
    stride, offset = geometry
    args = (float(stride), float(offset))
    ay = _axis_weights(int(frame[0]), int(net_size[0]), maps.shape[-2], *args)
    ax = _axis_weights(int(frame[1]), int(net_size[1]), maps.shape[-1], *args)
    ay, ax = ay.to(maps.device), ax.to(maps.device)
    return torch.einsum("hs,...st,wt->...hw", ay, maps.float(), ax)


def normalize(maps: Tensor, names: Sequence[str] | None = None) -> Tensor:
    """Min → 0, max → 1 over each map's last two axes. A constant map becomes all zeros
    (never a division by zero). NaN in a map raises :class:`HeatmapError` naming the image
    (``names[i]`` for the leading index i of [N, ...] maps)."""
    flat = maps.reshape(*maps.shape[:-2], -1)
    bad = torch.isnan(flat).any(-1)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        who = names[where[0]] if names is not None else f"map {where}"
        raise HeatmapError(f"{who}: the heatmap holds NaN (has the model diverged?)")
    lo = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - lo) / safe, torch.zeros_like(flat))
    return out.reshape(maps.shape)


def cell_to_pixel(u, n_frame, n_net: int, geometry: tuple[float, float]):
    """The film-pixel coordinate (continuous: pixel p spans p − ½ … p + ½) of cell
    coordinate ``u`` along one axis — the inverse of :func:`to_frame`'s mapping. Works on
    floats and numpy arrays (``n_frame`` may be an array too)."""
    stride, offset = geometry
    return (u * stride + offset + 0.5) * n_frame / n_net - 0.5


def cell_peaks(maps: Tensor, frames: Sequence[tuple[int, int]], net_size: tuple[int, int],
               geometry: tuple[float, float]) -> list[tuple[int, int]]:
    """(x, y) film pixel of each cell map's maximum (the first in raster order) for maps
    [K, S_h, S_w], map k of a film of (height, width) ``frames[k]``: the pixel whose centre
    is nearest the peak cell's centre — where :func:`to_frame` puts the interpolated map's
    maximum, without interpolating it."""
    s_h, s_w = maps.shape[-2:]
    index = maps.reshape(maps.shape[0], -1).argmax(-1).tolist()
    out = []
    for i, (fh, fw) in zip(index, frames):
        x = round(cell_to_pixel(i % s_w, fw, net_size[1], geometry))
        y = round(cell_to_pixel(i // s_w, fh, net_size[0], geometry))
        out.append((min(max(x, 0), fw - 1), min(max(y, 0), fh - 1)))
    return out


def peak(heatmap: Tensor) -> tuple[int, int]:
    """(x, y) of a map's maximum (the first one in raster order)."""
    return peaks(heatmap[None])[0]


def peaks(maps: Tensor) -> list[tuple[int, int]]:
    """(x, y) of each map's maximum (the first in raster order) for maps [K, H, W]."""
    index = maps.reshape(maps.shape[0], -1).argmax(-1).tolist()
    w = maps.shape[-1]
    return [(i % w, i // w) for i in index]
