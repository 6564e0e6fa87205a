"""Heatmap → boxes (and masks), as ChestX-ray8 draws them.

Each heatmap, normalised to [0, 1], is scaled to [0, 255] and thresholded at each threshold
(the paper: 60 and 180); every isolated region (an 8-connected component, OpenCV) gets one
box around it. A box carries the threshold it came from and a score: the heatmap's peak
inside its region (in [0, 1]). Boxes are in the heatmap's pixels — the original film's when
the heatmap was mapped there (:func:`wsloc.cam.to_frame`) — with x2/y2 exclusive, as NIH's
``x, y, w, h`` boxes are: a region spanning columns 3..7 gives x1 = 3, x2 = 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Box", "heatmap_boxes", "heatmap_masks", "PAPER_THRESHOLDS"]

PAPER_THRESHOLDS = (60, 180)


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    threshold: int

    def as_dict(self) -> dict:
        return asdict(self)


def _check(heatmap: np.ndarray, thresholds: Sequence[int]) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"a heatmap must be a non-empty [H, W] array, got shape "
                         f"{heatmap.shape}")
    if not thresholds or any(not 0 <= t < 255 for t in thresholds):
        raise ValueError(f"box thresholds must be in [0, 255), got {list(thresholds)}")
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
