"""Classification metrics: per-class ROC AUC (scikit-learn)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["compute_auc", "mean_auc"]


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
