"""From pixel scores to masks (Pinheiro & Collobert, CVPR 2015, for multi-label films).

The image-to-pixel model (:class:`wsloc.models.PixelNet`) trains its score planes through an
LSE aggregation; at inference the aggregation is dropped and its planes are read per pixel:

1. **Pixel scores** — each cell's planes are mapped onto the original film (bilinear between
   cell centres, :func:`wsloc.cam.to_frame`), and p(k | x) = softmax over {finding 1 … C,
   background} at each film pixel x (:func:`pixel_probabilities`).
2. **Image-level prior** — each finding's p(c | x) is weighted by the film's image-level
   probability of that finding (background by 1), and a finding the model calls absent
   (below ``min_probability``) gets no pixel (:func:`apply_image_prior`).
3. **Smoothing prior** — the weighted probabilities are averaged over superpixels of the
   film itself, so that a mask follows the film's own edges rather than the cells'
   (:func:`superpixels`, :func:`smooth`).

Each pixel then takes the label whose (weighted, smoothed) probability is largest; the mask of
finding c is where that label is c (:func:`label_map`, :func:`masks_of`). The superpixels are
scikit-image's SLIC: a well-kept implementation that works on one gray channel, seeds its
segments on a regular grid (so ``n_segments`` sets the smoothing scale, the same share of
the film whatever its pixel size), and follows edges as strongly as ``compactness`` lets it.

For a ChestX-ray8 model, :func:`cam_masks` thresholds its normalised CAMs as the paper does
for boxes, so both methods' masks can be compared with one tool.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from wsloc.cam import normalize, to_frame

__all__ = ["pixel_probabilities", "apply_image_prior", "superpixels", "smooth", "label_map",
           "smoothed_label_map", "masks_of", "cam_masks", "SLIC_SEGMENTS", "SLIC_COMPACTNESS",
           "SLIC_SIGMA", "SLIC_MAX_SIDE"]

SLIC_SEGMENTS = 400
SLIC_COMPACTNESS = 0.05  # on [0, 1] gray: low enough that segments follow the film's edges
SLIC_SIGMA = 1 / 64  # Gaussian pre-smoothing, as a fraction of the film's longer side
SLIC_MAX_SIDE = 256  # larger films are segmented at this size and the labels scaled back


def pixel_probabilities(class_planes: Tensor, frame: tuple[int, int],
                        net_size: tuple[int, int], geometry: tuple[float, float]) -> Tensor:
    """p(k | x) [C+1, H, W] on the film's pixels (background last) from one film's
    class-minus-background planes d [C, S, S] (``PixelNet.class_maps``): the softmax of
    {d_1 … d_C, 0} at each pixel, d interpolated between the cells' true centres."""
    d = to_frame(class_planes.float(), frame, net_size, geometry)
    return torch.softmax(torch.cat([d, torch.zeros_like(d[:1])]), 0)


def apply_image_prior(probs: Tensor, image_probs: Tensor,
                      min_probability: float | None = 0.5) -> Tensor:
    """Weight p(c | x) [C+1, H, W] by the film's image-level probabilities [C] (background
    by 1); findings below ``min_probability`` (None: keep all) get weight 0."""
    w = image_probs.float().clone()
    if min_probability is not None:
        w = torch.where(w >= min_probability, w, torch.zeros_like(w))
    return probs * torch.cat([w, w.new_ones(1)]).view(-1, 1, 1)


def superpixels(film: np.ndarray, n_segments: int = SLIC_SEGMENTS,
                compactness: float = SLIC_COMPACTNESS, sigma: float = SLIC_SIGMA,
                max_side: int | None = SLIC_MAX_SIDE) -> np.ndarray:
    """SLIC superpixels of a gray film [H, W] in [0, 1]: int labels [H, W] from 0.

    ``sigma`` (a fraction of the film's longer side, so the same at every film size) blurs
    the film first, so that the segments follow its structures rather than its noise. A
    film longer than ``max_side`` is segmented at that size (area-averaged) and its labels
    scaled back (nearest): 400 segments need no more pixels than that, and SLIC's time
    grows with the pixels (0.9 s on a 1024² film here, 45 ms on a 256² one)."""
    import cv2
    from skimage.segmentation import slic

    film = np.asarray(film, dtype=np.float32)
    h, w = film.shape
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        small = cv2.resize(film, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
        labels = superpixels(small, n_segments, compactness, sigma, None)
        return cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)

    if n_segments < 1:
        raise ValueError(f"the number of superpixels must be >= 1, got {n_segments}")
    if compactness <= 0 or sigma < 0:
        raise ValueError(f"SLIC needs compactness > 0 and sigma >= 0, got {compactness} and "
                         f"{sigma}")
    return slic(film.astype(np.float64), n_segments=n_segments,
                compactness=compactness, sigma=sigma * max(film.shape),
                channel_axis=None, start_label=0)


def _superpixel_means(probs: Tensor, segments: np.ndarray) -> tuple[Tensor, Tensor]:
    """(the mean of each channel of ``probs`` [K, H, W] over each superpixel [K, n], the
    flat superpixel index of each pixel [H·W])."""
    if tuple(segments.shape) != tuple(probs.shape[-2:]):
        raise ValueError(f"superpixels of shape {segments.shape} for maps of shape "
                         f"{tuple(probs.shape[-2:])}")
    seg = torch.from_numpy(np.ascontiguousarray(segments, dtype=np.int64)).flatten()
    n = int(seg.max()) + 1
    flat = probs.reshape(probs.shape[0], -1).double()
    sums = torch.zeros(probs.shape[0], n, dtype=torch.float64).index_add_(1, seg, flat)
    return sums / torch.bincount(seg, minlength=n).clamp(min=1), seg


def smooth(probs: Tensor, segments: np.ndarray) -> Tensor:
    """Each channel of ``probs`` [K, H, W] replaced by its mean over each superpixel of
    ``segments`` [H, W] (labels from 0)."""
    means, seg = _superpixel_means(probs, segments)
    return means[:, seg].reshape(probs.shape).to(probs.dtype)


def label_map(probs: Tensor) -> Tensor:
    """The label of each pixel [H, W]: argmax over k of ``probs`` [C+1, H, W] (the first on
    a tie); C (the last channel) is background. One pass per channel: ``argmax(0)`` strides
    across the channels and is 15× slower on a 1024² film."""
    best = probs[0].clone()
    labels = torch.zeros(probs.shape[1:], dtype=torch.long)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        best = torch.where(better, probs[k], best)
        labels.masked_fill_(better, k)
    return labels


def smoothed_label_map(probs: Tensor, segments: np.ndarray) -> Tensor:
    """``label_map(smooth(probs, segments))`` without drawing the smoothed maps: each
    superpixel's label is the argmax of its mean probabilities."""
    means, seg = _superpixel_means(probs, segments)
    return means.argmax(0)[seg].reshape(probs.shape[1:])


def masks_of(labels: Tensor, num_classes: int) -> np.ndarray:
    """Boolean masks [C, H, W]: where the label map says finding c."""
    return (labels[None] == torch.arange(num_classes).view(-1, 1, 1)).numpy()


def cam_masks(cells: Tensor, frame: tuple[int, int], net_size: tuple[int, int],
              geometry: tuple[float, float], threshold: int,
              keep: Sequence[bool] | None = None) -> np.ndarray:
    """Masks [C, H, W] of a ChestX-ray8 model's CAMs: each class map [C, S, S] normalised,
    drawn on the film, scaled to [0, 255] and kept where it exceeds ``threshold`` (the
    paper's box rule, as masks); classes whose ``keep`` is False get an empty mask."""
    heat = to_frame(normalize(cells.float()), frame, net_size, geometry)
    masks = (torch.round(heat * 255) > threshold).numpy()
    if keep is not None:
        masks &= np.asarray(keep, dtype=bool).reshape(-1, 1, 1)
    return masks
