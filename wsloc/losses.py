"""Losses: the ChestX-ray8 paper's weighted cross entropy (W-CEL) and plain BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["weighted_bce", "build_loss"]


def weighted_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """W-CEL: ``β_P·Σ_{y=1} −ln σ(z) + β_N·Σ_{y=0} −ln(1 − σ(z))``, averaged over the N·C
    entries, with ``β_P = (|P|+|N|)/|P|`` and ``β_N = (|P|+|N|)/|N|`` counted in the batch's
    labels. A batch without positives (or negatives) has no such term.
    """
    labels = labels.to(logits.dtype)
    total = labels.numel()
    pos = labels.sum()
    neg = total - pos
    beta_p = torch.where(pos > 0, total / pos.clamp_min(1), torch.zeros_like(pos))
    beta_n = torch.where(neg > 0, total / neg.clamp_min(1), torch.zeros_like(neg))
    # −ln σ(z) = softplus(−z), −ln(1 − σ(z)) = softplus(z): stable for any logit
    loss = beta_p * (labels * F.softplus(-logits)) + beta_n * ((1 - labels) * F.softplus(logits))
    return loss.sum() / total


def build_loss(name: str):
    if name == "wcel":
        return weighted_bce
    if name == "bce":
        return lambda logits, labels: F.binary_cross_entropy_with_logits(
            logits, labels.to(logits.dtype))
    raise ValueError(f"unknown loss {name!r}; choose 'wcel' (the paper's) or 'bce'")
