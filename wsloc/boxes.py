"""Heatmap → boxes (and masks), as ChestX-ray8 draws them.

Each heatmap, normalised to [0, 1], is scaled to [0, 255] and thresholded at each threshold
(the paper: 60 and 180); every isolated region (an 8-connected component, OpenCV) gets one
box around it.

Two routes to the same boxes. :func:`heatmap_boxes` takes any heatmap as pixels (a CAM mapped
to the film, a Grad-CAM, a user's own map) and labels its pixels. :func:`cell_boxes` takes CAM
cell maps as the network gives them and finds, for each region, where the bilinear heatmap
:func:`wsloc.cam.to_frame` would draw crosses the threshold — along the rows and columns of
cell centres, where a bilinear map's superlevel set reaches its extremes — then which film
pixels lie inside. Its cost is per cell, not per film pixel (a 1024² film costs what a 96²
one does), and it is what ``wsloc heatmap`` and ``wsloc evaluate`` use; a test holds it to
the pixel route. One difference by construction: two regions that touch only across a cell
diagonal (a saddle between them below the threshold) stay one region, as their cells are
8-connected. A box carries the threshold it came from and a score: the heatmap's peak
inside its region (in [0, 1]). Boxes are in the heatmap's pixels — the original film's when
the heatmap was mapped there (:func:`wsloc.cam.to_frame`) — with x2/y2 exclusive, as NIH's
``x, y, w, h`` boxes are: a region spanning columns 3..7 gives x1 = 3, x2 = 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Box", "heatmap_boxes", "cell_boxes", "cell_box_arrays", "heatmap_masks",
           "PAPER_THRESHOLDS"]

PAPER_THRESHOLDS = (60, 180)


class Box(NamedTuple):
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    threshold: int

    def as_dict(self) -> dict:
        return self._asdict()


def _check_thresholds(thresholds: Sequence[int]) -> None:
    if not thresholds or any(not 0 <= t < 255 for t in thresholds):
        raise ValueError(f"box thresholds must be in [0, 255), got {list(thresholds)}")


def _check(heatmap: np.ndarray, thresholds: Sequence[int]) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"a heatmap must be a non-empty [H, W] array, got shape "
                         f"{heatmap.shape}")
    _check_thresholds(thresholds)
    return heatmap


def heatmap_masks(heatmap: np.ndarray, threshold: int) -> np.ndarray:
    """The uint8 mask (0/1) of a [0, 1] heatmap scaled to [0, 255] and kept where it is
    above ``threshold``."""
    return (np.rint(_check(heatmap, [threshold]) * 255.0) > threshold).astype(np.uint8)


def heatmap_boxes(heatmap: np.ndarray, thresholds: Sequence[int] = PAPER_THRESHOLDS
                  ) -> list[Box]:
    """One box per isolated region of ``heatmap`` above each threshold.

    Args:
        heatmap: [H, W] in [0, 1] (see :func:`wsloc.cam.normalize`).
        thresholds: on the [0, 255] scale; a pixel is in when its scaled value exceeds it.

    Returns:
        Boxes (x1, y1, x2, y2 with x2, y2 exclusive; score = the heatmap's peak in the
        region; the threshold), by threshold, then by region order. A map that nowhere
        exceeds a threshold (a constant map normalised to zeros) gives no box for it.
    """
    import cv2

    heatmap = _check(heatmap, thresholds)
    scaled = np.rint(heatmap * 255.0).astype(np.uint8)  # once; each threshold compares it
    out: list[Box] = []
    for t in thresholds:
        mask = (scaled > t).view(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n <= 1:
            continue
        for k in range(1, n):
            x, y, w, h = (int(v) for v in stats[k, :4])
            inside = labels[y:y + h, x:x + w] == k  # the region, within its own box
            score = float(heatmap[y:y + h, x:x + w][inside].max())
            out.append(Box(float(x), float(y), float(x + w), float(y + h), score, int(t)))
    return out


def _crossings(g: torch.Tensor, level: torch.Tensor, axis: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every cell of maps ``g`` [K, h, w] and each level [T, 1, 1, 1], in cell
    coordinates along ``axis`` (−1: x, −2: y): where the linear interpolation toward the
    previous and the next cell falls to the level — ±inf at the map's edges (the edge value
    holds beyond the last centre), the neighbour's own position when it is above the level
    too (it is then in the same region and reaches further). Only cells above the level
    are meant; the others' values are never read. Returns two [T, K, h, w] tensors."""
    n = g.shape[axis]
    pos = torch.arange(n, dtype=g.dtype).view(n, *([1] * (-axis - 1)))
    prev, nxt = torch.roll(g, 1, axis), torch.roll(g, -1, axis)
    inf = torch.tensor(float("inf"), dtype=g.dtype)
    lo = torch.where(prev > level, pos - 1, pos - (g - level) / (g - prev))
    hi = torch.where(nxt > level, pos + 1, pos + (g - level) / (g - nxt))
    return torch.where(pos == 0, -inf, lo), torch.where(pos == n - 1, inf, hi)


def cell_boxes(cells, frames: Sequence[tuple[int, int]], net_size: tuple[int, int],
               geometry: tuple[float, float], thresholds: Sequence[int] = PAPER_THRESHOLDS
               ) -> list[list[Box]]:
    """Boxes, in each film's pixels, of cell maps normalised to [0, 1] — the boxes
    :func:`heatmap_boxes` finds on ``normalize``'d cells mapped by :func:`wsloc.cam.to_frame`,
    without drawing the map at the film's size.

    Args:
        cells: [K, S_h, S_w] cell maps in [0, 1] (tensor or array).
        frames: (height, width) of the film of each map.
        net_size: (height, width) of the network's input.
        geometry: (stride, offset) of the cells (:func:`wsloc.cam.cell_geometry`), or
            (stride, offset_y, offset_x) (:func:`wsloc.cam.on_axis`).
        thresholds: on the [0, 255] scale; a point is in when its scaled value, rounded,
            exceeds the threshold.

    Returns:
        For each map, its boxes as :func:`heatmap_boxes` gives them (by threshold, then
        region; score = the region's peak, which on a bilinear map is a cell's value).
    """
    which, values, levels = cell_box_arrays(cells, frames, net_size, geometry, thresholds)
    out: list[list[Box]] = [[] for _ in range(len(frames))]
    for k, *row, t in zip(which.tolist(), *values.tolist(), levels.tolist()):
        out[k].append(Box(*row, t))
    return out


def cell_box_arrays(cells, frames: Sequence[tuple[int, int]], net_size: tuple[int, int],
                    geometry: tuple[float, float], thresholds: Sequence[int] = PAPER_THRESHOLDS
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cell_boxes` as arrays, for callers that box thousands of maps: the map of each
    box [B], its (x1, y1, x2, y2, score) [5, B] and its threshold [B] — by map, then as
    :func:`cell_boxes` orders them."""
    import cv2

    from wsloc.cam import cell_to_pixel

    g = torch.as_tensor(cells).detach().cpu().to(torch.float32)
    if g.ndim != 3 or g.numel() == 0:
        raise ValueError(f"cell maps must be a non-empty [K, S_h, S_w] array, got shape "
                         f"{tuple(g.shape)}")
    if len(frames) != g.shape[0]:
        raise ValueError(f"{g.shape[0]} cell maps but {len(frames)} frames")
    _check_thresholds(thresholds)
    n_maps, h, w = g.shape
    n_t = len(thresholds)
    level = torch.tensor([(t + 0.5) / 255.0 for t in thresholds], dtype=g.dtype)
    # every map at every threshold in one labelling call: tiles stacked with a blank row
    # between them, so no region crosses from one tile to the next
    canvas = np.zeros((n_t, n_maps, h + 1, w), np.uint8)
    canvas[:, :, :h] = (g > level.view(n_t, 1, 1, 1)).numpy()
    n, labels = cv2.connectedComponents(canvas.reshape(-1, w), connectivity=8,
                                        ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(0, np.int64), np.zeros((5, 0)), np.zeros(0, np.int64)
    lab = torch.from_numpy(labels.reshape(n_t, n_maps, h + 1, w)[:, :, :h].astype(np.int64))
    level = level.view(n_t, 1, 1, 1)
    x_lo, x_hi = _crossings(g, level, -1)
    y_lo, y_hi = _crossings(g, level, -2)
    # one max-reduction per region over [−x_lo, x_hi, −y_lo, y_hi, value]; the cells
    # outside every region (label 0) gather in a bin of their own, never read
    per_cell = torch.stack([-x_lo, x_hi, -y_lo, y_hi, g.expand_as(x_lo)]).flatten(1)
    acc = torch.full((5, n), -np.inf, dtype=g.dtype).scatter_reduce(
        1, lab.flatten().expand(5, -1), per_cell, "amax")
    x1, x2, y1, y2, score = acc[:, 1:].double().numpy()
    x1, y1 = -x1, -y1
    # labels run in raster order, so each tile holds a run of them: a region's tile is the
    # first whose largest label reaches it
    tile_top = np.maximum.accumulate(labels.reshape(n_t * n_maps, -1).max(1))
    t_index, k = np.divmod(np.searchsorted(tile_top, np.arange(1, n)), n_maps)
    size = np.array(frames, dtype=np.float64)[k]  # (height, width) of each region's film
    fh, fw = size[:, 0], size[:, 1]
    with np.errstate(invalid="ignore"):
        # the film pixels p whose centres fall strictly inside (lo, hi)
        px1 = np.clip(np.floor(cell_to_pixel(x1, fw, net_size[1], geometry, 1)) + 1, 0, fw)
        px2 = np.clip(np.ceil(cell_to_pixel(x2, fw, net_size[1], geometry, 1)), 0, fw)
        py1 = np.clip(np.floor(cell_to_pixel(y1, fh, net_size[0], geometry, 0)) + 1, 0, fh)
        py2 = np.clip(np.ceil(cell_to_pixel(y2, fh, net_size[0], geometry, 0)), 0, fh)
    keep = (px2 > px1) & (py2 > py1)  # a region no pixel centre falls in gets no box
    levels = np.asarray(thresholds, dtype=np.int64)[t_index]
    order = np.flatnonzero(keep)[np.argsort(k[keep], kind="stable")]  # by map, then as found
    return k[order], np.stack([px1, py1, px2, py2, score])[:, order], levels[order]
