"""Heatmaps: CAM from the forward pass that gives the scores, the gradient methods
(Grad-CAM, Grad-CAM++, LayerCAM), and their mapping onto the original film.

CAM (ChestX-ray8, Wang et al. 2017): heatmap_c = Σ_d w[c, d] · f_d, the prediction weights
applied to the transition features; :class:`wsloc.models.ChestXray8Net` keeps these maps
(``model.class_maps``) when it computes the scores, so they cost no second pass.
:func:`cell_maps` gives any method of :data:`METHODS` (or a user's own, by name) on that
same cell grid, so the boxes, peaks and the box protocol take them unchanged.

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
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["cell_geometry", "on_axis", "class_activation_maps", "grad_cam", "grad_cam_plus_plus",
           "layer_cam", "cell_maps", "resolve_method", "method_for", "method_name",
           "METHODS", "to_frame", "normalize", "peak", "peaks", "cell_peaks", "cell_to_pixel",
           "HeatmapError"]

METHODS = ("cam", "gradcam", "gradcam++", "layercam")
"""The heatmap methods wsloc has built in (:func:`cell_maps`); a user's own is named
``package.module:func`` or registered under the entry-point group ``wsloc.cam_methods``."""


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


def _gradient_maps(model: nn.Module, x: Tensor, layer: nn.Module,
                   classes: Sequence[int] | None, combine: Callable[[Tensor, Tensor], Tensor],
                   who: str) -> tuple[Tensor, Tensor]:
    """What the gradient methods share: one forward pass with a hook keeping ``layer``'s
    output A [N, K, h, w] (removed in ``finally``), then for each class c the gradient
    g = d (Σ_n logit[n, c]) / dA (``torch.autograd.grad``: the parameters' ``.grad`` are
    left alone), and the map relu(combine(A, g)) [N, h, w], both in float32. The model is
    in eval mode throughout and its mode restored. With the model in eval mode the films
    of a batch do not interact, so g[n] is film n's own gradient. If ``layer`` runs more
    than once, its last output is explained; if it does not reach class c, g = 0."""
    store: dict[str, Tensor] = {}

    def keep(_module, _inputs, output):
        store["a"] = output

    x = x.to(next(model.parameters()).device)
    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # so A needs grad even in a frozen model
            logits = model(x)
            a = store.get("a")
            if a is None:
                raise ValueError(f"{who}: `layer` did not run in the model's forward pass")
            if not isinstance(a, Tensor) or a.ndim != 4 or not a.requires_grad:
                got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
                raise ValueError(f"{who}: `layer` must output a Tensor[N, K, h, w] on the "
                                 f"path to the logits, got {got}")
            return _per_class(logits, a, classes, combine, who)
    finally:
        handle.remove()
        model.train(was_training)


def _per_class(logits: Tensor, a: Tensor, classes: Sequence[int] | None,
               combine: Callable[[Tensor, Tensor], Tensor], who: str) -> tuple[Tensor, Tensor]:
    """For each class c, g = d (Σ_n logit[n, c]) / dA and the map relu(combine(A, g))."""
    n_classes = logits.shape[1]
    classes = list(range(n_classes)) if classes is None else list(classes)
    for c in classes:
        if not isinstance(c, int) or not 0 <= c < n_classes:
            raise ValueError(f"{who}: `classes` must be ints in [0, {n_classes}), got {c!r}")
    acts = a.detach().float()
    maps = [acts.new_zeros(acts.shape[0], 0, *acts.shape[2:])]
    for i, c in enumerate(classes):
        (g,) = torch.autograd.grad(logits[:, c].sum(), a, allow_unused=True,
                                   retain_graph=i < len(classes) - 1)
        g = torch.zeros_like(acts) if g is None else g.float()
        maps.append(torch.relu(combine(acts, g))[:, None])
    return torch.sigmoid(logits.detach().float()), torch.cat(maps, 1)


def _head_gradient_maps(model, x: Tensor, combine, who: str) -> tuple[Tensor, Tensor]:
    """A gradient method at a ChestXray8Net's transition output, with the backbone run
    without autograd: the gradient of the logits with respect to the transition features
    depends on the head alone, so only the head's graph is kept — the same maps as
    :func:`_gradient_maps` at ``model.transition``, for far less memory on large films."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            f = model.forward_features(x)
        with torch.enable_grad():
            f = f.detach().requires_grad_(True)
            out = _per_class(model.forward_head(f), f, None, combine, who)
        model.features, model.class_maps = f.detach(), model.class_maps.detach()
        return out
    finally:
        model.train(was_training)


def _grad_cam_map(a: Tensor, g: Tensor) -> Tensor:
    return (g.mean((2, 3), keepdim=True) * a).sum(1)


_GRAD_CAM_PP_EPS = 1e-6  # pytorch-grad-cam's


def _grad_cam_pp_map(a: Tensor, g: Tensor) -> Tensor:
    g2 = g * g
    alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g + _GRAD_CAM_PP_EPS)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return ((alpha * torch.relu(g)).sum((2, 3), keepdim=True) * a).sum(1)


def _layer_cam_map(a: Tensor, g: Tensor) -> Tensor:
    return (torch.relu(g) * a).sum(1)


def grad_cam(model: nn.Module, x: Tensor, layer: nn.Module,
             classes: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) at any layer of any classifier: for class c, the
    layer's activations A weighted by the spatial mean of g = d logit_c / dA, summed over
    channels, through a ReLU:

        map_c = relu(Σ_k mean_ij(g_kij) · A_k)

    The model runs in eval mode (its mode restored after); hooks are removed in
    ``finally``.

    Args:
        model: maps x to logits [N, C].
        x: Tensor[N, ...], the model's input (moved to the model's device).
        layer: the module whose output A [N, K, h, w] is explained.
        classes: the classes to explain (default: all; empty: maps [N, 0, h, w]).

    Returns:
        (probabilities [N, C] = sigmoid(logits), maps [N, len(classes), h, w]), float32.
    """
    return _gradient_maps(model, x, layer, classes, _grad_cam_map, "grad_cam")


def grad_cam_plus_plus(model: nn.Module, x: Tensor, layer: nn.Module,
                       classes: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with the exponential's higher
    derivatives as powers of the gradient), as pytorch-grad-cam computes it: with g =
    d logit_c / dA,

        α_kij = g²_kij / (2·g²_kij + (Σ_ab A_kab)·g³_kij + ε),  α = 0 where g = 0
        w_k = Σ_ij α_kij · relu(g_kij)
        map_c = relu(Σ_k w_k · A_k)

    ε = 1e-6 guards the denominator, pytorch-grad-cam's choice (the paper's code instead
    replaces a zero denominator by 1). It is not scale-free: where g² is small next to ε,
    α ≈ g²/ε and the weights tend to Σ_ij relu(g)³/ε, another weighting than the paper's.
    On the transition features of a ChestXray8Net, g ≈ w[c, d] / S² is of order 1e-3 or
    less, so this regime is the usual one there. Eval mode and hooks as :func:`grad_cam`.

    Args:
        model: maps x to logits [N, C].
        x: Tensor[N, ...], the model's input (moved to the model's device).
        layer: the module whose output A [N, K, h, w] is explained.
        classes: the classes to explain (default: all).

    Returns:
        (probabilities [N, C], maps [N, len(classes), h, w]), float32.
    """
    return _gradient_maps(model, x, layer, classes, _grad_cam_pp_map, "grad_cam_plus_plus")


def layer_cam(model: nn.Module, x: Tensor, layer: nn.Module,
              classes: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """LayerCAM (Jiang et al. 2021): each position weighted by its own positive gradient,
    g = d logit_c / dA,

        map_c = relu(Σ_k relu(g_kij) · A_kij)

    (pytorch-grad-cam's ``LayerCAM``). Eval mode and hooks as :func:`grad_cam`.

    Args:
        model: maps x to logits [N, C].
        x: Tensor[N, ...], the model's input (moved to the model's device).
        layer: the module whose output A [N, K, h, w] is explained.
        classes: the classes to explain (default: all).

    Returns:
        (probabilities [N, C], maps [N, len(classes), h, w]), float32.
    """
    return _gradient_maps(model, x, layer, classes, _layer_cam_map, "layer_cam")


_COMBINE = {"gradcam": _grad_cam_map, "gradcam++": _grad_cam_pp_map,
            "layercam": _layer_cam_map}  # cell_maps' gradient methods: how A and g combine
_WHAT = "--method"


def resolve_method(method: str | Callable) -> str | Callable:
    """A heatmap method: a name of :data:`METHODS` (returned as is), or a user's callable —
    given directly, as ``package.module:func``, or as a name an installed package registers
    under the entry-point group ``wsloc.cam_methods`` (see :func:`cell_maps` for its
    contract). Anything else is a :class:`wsloc.plugins.PluginError` (a ValueError) naming
    it and listing the valid names."""
    from wsloc.plugins import PluginError, resolve

    if callable(method):
        return method
    obj = resolve(method, "wsloc.cam_methods", METHODS, _WHAT)
    if isinstance(obj, str):
        return obj
    if not callable(obj):
        raise PluginError(f"{_WHAT} {method!r} is a {type(obj).__name__}, not a callable "
                          "(model, x) -> (probabilities [N, C], maps [N, C, S, S])")
    return obj


def method_for(model, method: str | Callable) -> str | Callable:
    """:func:`resolve_method`, and a check that the method applies to ``model``: every
    method but ``"cam"`` needs a :class:`wsloc.models.ChestXray8Net` that is not a pixel
    model (a ValueError naming both otherwise). Returns the resolved method."""
    resolved = resolve_method(method)
    if isinstance(resolved, str) and resolved == "cam":
        return resolved
    from wsloc.models import ChestXray8Net, PixelNet

    if not isinstance(model, ChestXray8Net) or isinstance(model, PixelNet):
        raise ValueError(f"{_WHAT} {method_name(method)!r} needs a ChestX-ray8 model (its "
                         f"transition features and prediction layer); a "
                         f"{type(model).__name__} has only 'cam'")
    return resolved


def method_name(method: str | Callable) -> str:
    """How a method is named in errors and outputs: the name as given, or a callable's
    ``module:qualname``."""
    if isinstance(method, str):
        return method
    return f"{getattr(method, '__module__', '?')}:{getattr(method, '__qualname__', method)}"


_GRIDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def _cell_grid(model, x: Tensor) -> tuple[int, int]:
    """(S_h, S_w) of the model's class maps for inputs shaped like x: one film's forward
    to the transition, once per model and input size (cached)."""
    key = tuple(x.shape[1:])
    grids = _GRIDS.setdefault(model, {})
    if key not in grids:
        grids[key] = tuple(model.forward_features(x[:1]).shape[-2:])
    return grids[key]


def _checked(out, name: str, model, x: Tensor) -> tuple[Tensor, Tensor]:
    """A user method's result, held to the contract of :func:`cell_maps`."""
    from wsloc.plugins import PluginError

    n, c = x.shape[0], model.prediction.out_features
    grid = _cell_grid(model, x)
    want = f"(probabilities [{n}, {c}], maps [{n}, {c}, {grid[0]}, {grid[1]}])"
    if not (isinstance(out, (tuple, list)) and len(out) == 2
            and all(isinstance(t, Tensor) for t in out)):
        got = (f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list))
               else f"a {type(out).__name__}")
        raise PluginError(f"{_WHAT} {name!r} must return {want}, got {got}")
    probs, maps = out
    if tuple(probs.shape) != (n, c) or tuple(maps.shape) != (n, c, *grid):
        raise PluginError(f"{_WHAT} {name!r} must return {want} on the model's cell grid "
                          f"for a [{', '.join(map(str, x.shape))}] batch, got probabilities "
                          f"{list(probs.shape)} and maps {list(maps.shape)}")
    probs, maps = probs.detach().float(), maps.detach().float()
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        raise PluginError(f"{_WHAT} {name!r} must return probabilities in [0, 1] (the "
                          f"sigmoid of the logits), got values from {float(probs.min()):g} "
                          f"to {float(probs.max()):g}")
    return probs, maps


def cell_maps(model, x: Tensor, method: str | Callable = "cam", channels_last: bool = False
              ) -> tuple[Tensor, Tensor]:
    """(probabilities [N, C], maps [N, C, S, S]) of a ChestXray8Net by any heatmap method,
    every class, on the grid of ``model.class_maps`` (the transition features' cells), so
    :func:`cell_geometry`, the cell boxes and :func:`cell_peaks` apply unchanged. The
    model is in eval mode during it (its mode restored after); ``x`` goes to the model's
    device, channels_last when asked.

    Methods (:data:`METHODS`): ``"cam"``, the class maps of the one forward pass
    (:func:`class_activation_maps`); ``"gradcam"``, ``"gradcam++"``, ``"layercam"``
    (:func:`grad_cam`, :func:`grad_cam_plus_plus`, :func:`layer_cam`) explaining the
    transition layer's output (``model.features``) for every class: one forward pass (the
    backbone without autograd: the gradients need the head's graph alone) and one
    backward pass per class through the head. Or a user's own: a callable,
    ``"package.module:func"``, or a name registered under the entry-point group
    ``wsloc.cam_methods``
    (:func:`resolve_method`). Its contract: ``func(model, x) -> (probabilities [N, C],
    maps [N, C, S, S])`` on that same cell grid, probabilities in [0, 1]; it is called in
    eval mode, with autograd enabled, x on the model's device; anything else it returns,
    or an exception it raises, is a :class:`wsloc.plugins.PluginError` naming it.

    Args:
        model: a trained :class:`wsloc.models.ChestXray8Net` (a pixel model has only
            ``"cam"``: its class-minus-background planes).
        x: Tensor[N, 1 or 3, H, W], the network's input.
        method: a name (above) or a callable.
        channels_last: feed the network channels_last (as it was trained).

    Raises:
        ValueError: an unknown or broken method, or a non-cam method on a model other than
            a ChestXray8Net (a PixelNet included).
    """
    resolved = method_for(model, method)
    if isinstance(resolved, str) and resolved == "cam":
        return class_activation_maps(model, x, channels_last)
    name = method_name(method)
    x = x.to(next(model.parameters()).device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if isinstance(resolved, str):
        return _head_gradient_maps(model, x, _COMBINE[resolved], name)
    from wsloc.plugins import PluginError

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = resolved(model, x)
        return _checked(out, name, model, x)
    except PluginError:
        raise
    except Exception as err:  # the user's code: say whose and why
        raise PluginError(f"{_WHAT} {name!r} failed on a [{', '.join(map(str, x.shape))}] "
                          f"batch ({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)


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


def on_axis(geometry: Sequence[float], axis: int) -> tuple[float, float]:
    """(stride, offset) along ``axis`` (0: rows, y; 1: columns, x) of a cell geometry:
    ``(stride, offset)`` for both axes, as :func:`cell_geometry` gives it, or ``(stride,
    offset_y, offset_x)`` when the columns' centres differ (a model whose maps were
    calibrated by mirroring: :mod:`wsloc.engine.calibrate`)."""
    if len(geometry) == 2:
        return float(geometry[0]), float(geometry[1])
    if len(geometry) == 3:
        return float(geometry[0]), float(geometry[1 + axis])
    raise ValueError(f"a cell geometry is (stride, offset) or (stride, offset_y, offset_x), "
                     f"got {tuple(geometry)!r}")


def to_frame(maps: Tensor, frame: tuple[int, int], net_size: tuple[int, int],
             geometry: Sequence[float]) -> Tensor:
    """Map cell maps onto the original film's pixels.

    Args:
        maps: Tensor[..., S_h, S_w], cell maps of one image (or of a batch whose films share
            a size).
        frame: (height, width) of the original film.
        net_size: (height, width) the film was resized to for the network.
        geometry: (stride, offset) from :func:`cell_geometry`, or (stride, offset_y,
            offset_x) (:func:`on_axis`).

    Returns:
        Tensor[..., height, width]: bilinear in the cells, each cell at its true centre.
    """
    ay = _axis_weights(int(frame[0]), int(net_size[0]), maps.shape[-2], *on_axis(geometry, 0))
    ax = _axis_weights(int(frame[1]), int(net_size[1]), maps.shape[-1], *on_axis(geometry, 1))
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


def cell_to_pixel(u, n_frame, n_net: int, geometry: Sequence[float], axis: int = 0):
    """The film-pixel coordinate (continuous: pixel p spans p − ½ … p + ½) of cell
    coordinate ``u`` along ``axis`` (0: y, 1: x) — the inverse of :func:`to_frame`'s
    mapping. Works on floats and numpy arrays (``n_frame`` may be an array too)."""
    stride, offset = on_axis(geometry, axis)
    return (u * stride + offset + 0.5) * n_frame / n_net - 0.5


def cell_peaks(maps: Tensor, frames: Sequence[tuple[int, int]], net_size: tuple[int, int],
               geometry: Sequence[float]) -> list[tuple[int, int]]:
    """(x, y) film pixel of each cell map's maximum (the first in raster order) for maps
    [K, S_h, S_w], map k of a film of (height, width) ``frames[k]``: the pixel whose centre
    is nearest the peak cell's centre — where :func:`to_frame` puts the interpolated map's
    maximum, without interpolating it."""
    s_h, s_w = maps.shape[-2:]
    index = maps.reshape(maps.shape[0], -1).argmax(-1).tolist()
    out = []
    for i, (fh, fw) in zip(index, frames):
        x = round(cell_to_pixel(i % s_w, fw, net_size[1], geometry, axis=1))
        y = round(cell_to_pixel(i // s_w, fh, net_size[0], geometry, axis=0))
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
