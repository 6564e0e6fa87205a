"""Losses: the ChestX-ray8 paper's weighted cross entropy (W-CEL) and plain BCE, and the
flat-background term that can be added to either (``train.background_weight``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["weighted_bce", "build_loss", "background_penalty"]


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


def background_penalty(maps: Tensor) -> Tensor:
    """The flat-background term: over every class map [N, C, H, W], the squared depth of each
    cell below that map's median (the median held fixed), averaged over all cells.

    A heatmap is normalised min → 0, max → 1 before it is boxed, so a few cells of strong
    negative evidence (clear lung, say) set its floor, lift the rest of the background to
    0.3–0.5 and leave the paper's lower threshold (60 of 255) nothing to separate. LSE and
    max pooling never look at those cells, so classification alone leaves them free; this
    term pulls them up to the map's typical level and leaves the upper half, where the
    evidence is, alone.
    """
    flat = maps.flatten(2).to(torch.promote_types(maps.dtype, torch.float32))  # AMP: fp32
    median = flat.median(-1, keepdim=True).values.detach()
    return (median - flat).clamp_min(0).square().mean()


def build_loss(name: str):
    if name == "wcel":
        return weighted_bce
    if name == "bce":
        return lambda logits, labels: F.binary_cross_entropy_with_logits(
            logits, labels.to(logits.dtype))
    raise ValueError(f"unknown loss {name!r}; choose 'wcel' (the paper's) or 'bce'")
