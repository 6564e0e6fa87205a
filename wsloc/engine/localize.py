"""From a batch of films to what ``wsloc heatmap`` and ``wsloc evaluate`` report: class
probabilities, heatmaps in each film's own pixels, boxes and heatmap peaks — all classes
from the one forward pass that gives the scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from wsloc.boxes import PAPER_THRESHOLDS, heatmap_boxes
from wsloc.cam import class_activation_maps, normalize, peaks, to_frame

__all__ = ["Localizer", "Localization"]


@dataclass
class Localization:
    """One film: its probabilities [C], and for each shown class its boxes (``boxes.json``
    records), its heatmap's peak (x, y) and, when kept, its heatmap [H, W] in [0, 1]."""

    image: str
    frame: tuple[int, int]
    classes: list[str]
    probabilities: np.ndarray
    shown: list[str] = field(default_factory=list)
    boxes: list[dict] = field(default_factory=list)
    peaks: dict[str, tuple[int, int]] = field(default_factory=dict)
    heatmaps: np.ndarray | None = None

    def probability(self, label: str) -> float:
        return float(self.probabilities[self.classes.index(label)])


class Localizer:
    """CAM → heatmaps in the film's frame → boxes, for a trained ChestXray8Net.

    Args:
        model: the network, in eval mode.
        classes: its class names, in output order.
        net_size: (height, width) of the network's input.
        thresholds: box thresholds on [0, 255] (the paper: 60 and 180).
        min_probability: classes below it get no heatmap or box ...
        all_classes: ... unless this is set (what evaluation needs).
        keep_maps: keep each shown class's heatmap (overlays, ``--save-maps``).
        channels_last: feed the network channels_last (as it was trained).
    """

    def __init__(self, model, classes: Sequence[str], net_size: tuple[int, int],
                 thresholds: Sequence[int] = PAPER_THRESHOLDS, min_probability: float = 0.5,
                 all_classes: bool = False, keep_maps: bool = False,
                 channels_last: bool = False) -> None:
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"the probability threshold must be in [0, 1], got "
                             f"{min_probability}")
        self.model, self.classes = model, list(classes)
        self.net_size = tuple(net_size)
        self.thresholds = tuple(thresholds)
        self.min_probability, self.all_classes, self.keep_maps = (
            min_probability, all_classes, keep_maps)
        self.geometry = model.cell_geometry()
        self.device = next(model.parameters()).device
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(probabilities [N, C], cell maps [N, C, S, S]) from one forward pass."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs, cams = class_activation_maps(self.model, x)
        return probs.cpu(), cams.cpu()

    def __call__(self, x: Tensor, frames: Sequence[tuple[int, int]],
                 names: Sequence[str]) -> list[Localization]:
        """Localize a batch: x [N, 1, h, w] as the network takes it; ``frames`` the
        (height, width) of each original film; ``names`` their names."""
        probs, cams = self.forward(x)
        return [self.localize_one(probs[i], cams[i], tuple(frames[i]), str(names[i]))
                for i in range(len(names))]

    def shown_classes(self, probs: Tensor) -> list[int]:
        return [c for c in range(len(self.classes))
                if self.all_classes or float(probs[c]) >= self.min_probability]

    def localize_one(self, probs: Tensor, cams: Tensor, frame: tuple[int, int],
                     name: str) -> Localization:
        """One film from its probabilities [C] and cell maps [C, S, S]."""
        shown = self.shown_classes(probs)
        out = Localization(name, (int(frame[0]), int(frame[1])), self.classes, probs.numpy(),
                           [self.classes[c] for c in shown])
        if not shown:
            return out
        maps = normalize(to_frame(cams[shown], out.frame, self.net_size, self.geometry),
                         [f"{name} ({self.classes[c]})" for c in shown])
        maxima = peaks(maps)
        arrays = maps.numpy()
        for j, c in enumerate(shown):
            label = self.classes[c]
            out.peaks[label] = maxima[j]
            for box in heatmap_boxes(arrays[j], self.thresholds):
                out.boxes.append({"image": name, "class": label,
                                  "probability": round(float(probs[c]), 6),
                                  "x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2,
                                  "score": round(box.score, 6), "threshold": box.threshold,
                                  "peak_x": out.peaks[label][0],
                                  "peak_y": out.peaks[label][1]})
        if self.keep_maps:
            out.heatmaps = arrays
        return out
