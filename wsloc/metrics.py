"""Classification metrics: per-class ROC AUC (scikit-learn)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["compute_auc", "mean_auc", "box_overlaps", "localization_scores", "MaskIoU"]


def compute_auc(scores: np.ndarray, labels: np.ndarray,
                classes: Sequence[str] | None = None) -> np.ndarray:
    """ROC AUC per class for ``scores`` and ``labels`` [N, C]. A class whose labels are all one
    value has no AUC: NaN, with a warning naming it. NaN or infinite scores are an error
    naming the class (a diverged model), never scikit-learn's own message."""
    from sklearn.metrics import roc_auc_score

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores and labels must both be [N, C], got {scores.shape} and "
                         f"{labels.shape}")
    finite = np.isfinite(scores).all(0)
    if not finite.all():
        names = [classes[c] if classes is not None else f"class {c}"
                 for c in np.flatnonzero(~finite)]
        raise ValueError(f"scores of {', '.join(names)} contain NaN or infinity (has the model "
                         "diverged?)")
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        if len(np.unique(labels[:, c])) < 2:
            name = classes[c] if classes is not None else f"class {c}"
            warnings.warn(f"AUC of {name} is undefined: its labels are all "
                          f"{labels[0, c] if len(labels) else 'absent'}; reported as NaN",
                          stacklevel=2)
            continue
        out[c] = roc_auc_score(labels[:, c], scores[:, c])
    return out


def mean_auc(aucs: np.ndarray) -> float:
    """The mean over the classes that have an AUC (NaN when none has)."""
    aucs = np.asarray(aucs, dtype=np.float64)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


# --- localization: the ChestX-ray8 protocol -------------------------------------------------

IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)


def box_overlaps(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, IoBB) of every predicted box against every ground-truth box, each [P, G].

    Boxes are (x1, y1, x2, y2) arrays [P, 4] and [G, 4]. IoU = |p ∩ g| / |p ∪ g|
    (``torchvision.ops.box_iou``); IoBB = |p ∩ g| / |p|, the intersection over the
    *predicted* box's area (ChestX-ray8). Degenerate predicted boxes (zero area) get 0.
    """
    import torch
    from torchvision.ops import box_area, box_iou

    p = torch.as_tensor(np.asarray(pred, dtype=np.float64).reshape(-1, 4))
    g = torch.as_tensor(np.asarray(gt, dtype=np.float64).reshape(-1, 4))
    iou = box_iou(p, g)
    lt = torch.maximum(p[:, None, :2], g[None, :, :2])
    rb = torch.minimum(p[:, None, 2:], g[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = box_area(p)[:, None]
    iobb = torch.where(area > 0, inter / area.clamp(min=1e-12), torch.zeros_like(inter))
    return iou.nan_to_num(0.0).numpy(), iobb.numpy()


def localization_scores(pred: Sequence[dict], gt: dict[str, Sequence], classes: Sequence[str],
                        iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
                        iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS,
                        peaks: dict[tuple[str, str], tuple[float, float]] | None = None) -> dict:
    """The ChestX-ray8 localization protocol, per finding.

    Args:
        pred: predicted boxes, dicts with ``image``, ``class``, ``x1``, ``y1``, ``x2``,
            ``y2`` (the ``boxes.json`` format; other keys are ignored).
        gt: ground truth, {image: [objects with ``label``, ``x1``, ``y1``, ``x2``, ``y2``]}
            (:func:`wsloc.data.nih.read_bbox_list`). Only these images are scored.
        classes: the findings to score (those with no ground-truth box are left out).
        peaks: {(image, class): (x, y)}, each heatmap's maximum, for the pointing game.

    Returns:
        ``{"iou": {T: {finding: accuracy}}, "iobb": {...}, "afp_iou": {T: {finding: AFP}},
        "afp_iobb": {...}, "pointing": {finding: hit rate} (with ``peaks``), "boxes":
        {finding: ground-truth boxes}, "images": {finding: images with a box of it}}``,
        each table with a ``"mean"`` over its findings.

    Definitions. A ground-truth box is *localized* at threshold T when some predicted box of
    its class on its image has IoU (or IoBB) strictly greater than T; accuracy = localized
    boxes / ground-truth boxes of the finding. *AFP* (average false positives per image):
    over the images that have a ground-truth box of the finding, the predicted boxes of that
    finding that exceed T with none of its ground-truth boxes there, divided by the number
    of those images. *Pointing game*: over the (image, finding) pairs with ground truth, the
    fraction whose heatmap maximum lies inside one of the finding's boxes on that image.
    """
    by_key: dict[tuple[str, str], list] = {}
    for p in pred:
        by_key.setdefault((str(p["image"]), str(p["class"])), []).append(
            (float(p["x1"]), float(p["y1"]), float(p["x2"]), float(p["y2"])))
    kinds = {"iou": list(iou_thresholds), "iobb": list(iobb_thresholds)}
    hits = {k: {t: {} for t in ts} for k, ts in kinds.items()}
    false_pos = {k: {t: {} for t in ts} for k, ts in kinds.items()}
    n_boxes: dict[str, int] = {}
    n_images: dict[str, int] = {}
    pointed: dict[str, int] = {}
    for image in sorted(gt):
        for c in classes:
            boxes = [(b.x1, b.y1, b.x2, b.y2) for b in gt[image] if b.label == c]
            if not boxes:
                continue
            n_boxes[c] = n_boxes.get(c, 0) + len(boxes)
            n_images[c] = n_images.get(c, 0) + 1
            mine = by_key.get((image, c), [])
            overlaps = dict(zip(("iou", "iobb"), box_overlaps(mine, boxes)))
            for kind, ts in kinds.items():
                o = overlaps[kind]  # [P, G]
                for t in ts:
                    hits[kind][t][c] = hits[kind][t].get(c, 0) + int((o > t).any(0).sum())
                    false_pos[kind][t][c] = false_pos[kind][t].get(c, 0) + int(
                        (~(o > t).any(1)).sum())
            if peaks is not None and (image, c) in peaks:
                x, y = peaks[(image, c)]
                inside = any(x1 <= x < x2 and y1 <= y < y2 for x1, y1, x2, y2 in boxes)
                pointed[c] = pointed.get(c, 0) + int(inside)
    found = [c for c in classes if c in n_boxes]

    def table(counts: dict, per: dict) -> dict:
        row = {c: counts.get(c, 0) / per[c] for c in found}
        row["mean"] = float(np.mean(list(row.values()))) if found else float("nan")
        return row

    out: dict = {"boxes": {c: n_boxes[c] for c in found},
                 "images": {c: n_images[c] for c in found}}
    for kind in kinds:
        out[kind] = {t: table(hits[kind][t], n_boxes) for t in kinds[kind]}
        out[f"afp_{kind}"] = {t: table(false_pos[kind][t], n_images) for t in kinds[kind]}
    if peaks is not None:
        out["pointing"] = table(pointed, n_images)
    return out


class MaskIoU:
    """Mask IoU per class as PASCAL VOC accumulates it: the intersection and the union of
    each class's predicted and true masks summed over every image, then divided — so a
    large finding weighs more than a small one, and a mask drawn on an image without the
    finding adds to the union. ``mean`` averages the classes that have any pixel."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.inter = np.zeros(len(self.classes))
        self.union = np.zeros(len(self.classes))
        self.images = 0

    def update(self, pred: np.ndarray, truth: np.ndarray, known=None) -> None:
        """One image's boolean masks [C, H, W], predicted and true; ``known`` [C] (default
        all): the classes whose truth this image holds — the others are left out of its
        counts (a film with boxes of some findings says nothing of the rest)."""
        pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
        if pred.shape != truth.shape or pred.shape[0] != len(self.classes):
            raise ValueError(f"masks of shape {pred.shape} and {truth.shape} for "
                             f"{len(self.classes)} classes")
        keep = np.ones(len(self.classes), bool) if known is None else np.asarray(known, bool)
        self.inter += np.where(keep, (pred & truth).sum((1, 2)), 0)
        self.union += np.where(keep, (pred | truth).sum((1, 2)), 0)
        self.images += 1

    def result(self) -> dict:
        """{"iou": {class: IoU or None (no pixel in either)}, "mean_iou": ...}."""
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = self.inter / self.union
        per = {c: (None if np.isnan(v) else float(v)) for c, v in zip(self.classes, iou)}
        valid = [v for v in per.values() if v is not None]
        return {"iou": per, "mean_iou": float(np.mean(valid)) if valid else None}
