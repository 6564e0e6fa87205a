"""Reports: metrics JSON, Markdown tables beside the paper's figures, ROC curves as PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["PAPER_AUC", "write_metrics", "auc_table", "plot_roc"]

# Wang et al. (CVPR 2017), ResNet-50 with W-CEL: the 8-class ChestX-ray8 table, and the
# 14-class ChestX-ray14 figures on the official patient-level split.
PAPER_AUC = {
    "ResNet-50, ChestX-ray8 (Wang et al. 2017)": dict(zip(
        ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
         "Pneumonia", "Pneumothorax"),
        (.7069, .8141, .7362, .6128, .5609, .7164, .6333, .7891))),
    "ResNet-50, ChestX-ray14 (Wang et al. 2017)": dict(zip(
        ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
         "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
         "Pleural_Thickening", "Hernia"),
        (.7003, .8100, .7585, .6614, .6933, .6687, .6580, .7993, .7032, .8052, .8330, .7859,
         .6835, .8717))),
}
SHORT = {"Pleural_Thickening": "P.Thick", "Cardiomegaly": "Card", "Pneumothorax": "Pnth"}


def _short(name: str) -> str:
    return SHORT.get(name, name[:4])


def auc_table(classes: Sequence[str], aucs: Sequence[float], label: str) -> str:
    """A Markdown table laid out like the paper's, our row first, the paper's rows after
    (the paper's figures are on NIH data: they compare only on the NIH release)."""
    def fmt(v):
        return "—" if v is None or not np.isfinite(v) else f"{v:.4f}"

    head = "| model | " + " | ".join(_short(c) for c in classes) + " | mean |"
    rows = [head, "|---|" + "---|" * (len(classes) + 1)]
    ours = [float(a) for a in aucs]
    finite = [a for a in ours if np.isfinite(a)]
    rows.append(f"| {label} | " + " | ".join(fmt(a) for a in ours) + " | "
                + fmt(np.mean(finite) if finite else None) + " |")
    for name, figures in PAPER_AUC.items():
        if not set(classes) & set(figures):
            continue
        vals = [figures.get(c) for c in classes]
        known = [v for v in vals if v is not None]
        rows.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + " | "
                    + fmt(np.mean(known)) + " |")
    return "\n".join(rows)


def write_metrics(path: str | Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def plot_roc(path: str | Path, scores: np.ndarray, labels: np.ndarray,
             classes: Sequence[str], aucs: Sequence[float]) -> None:
    """One ROC curve per class (scikit-learn's roc_curve) in a single PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    for c, name in enumerate(classes):
        if not np.isfinite(aucs[c]):
            continue
        fpr, tpr, _ = roc_curve(labels[:, c], scores[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} ({aucs[c]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
           title="ROC per finding (AUC)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
