"""From a batch of films to what ``wsloc heatmap`` and ``wsloc evaluate`` report: class
probabilities, heatmaps in each film's own pixels, boxes and heatmap peaks — all classes
from the one forward pass that gives the scores (CAM), or by another heatmap method on the
same cell grid (:func:`wsloc.cam.cell_maps`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from wsloc.boxes import PAPER_THRESHOLDS, cell_box_arrays
from wsloc.cam import cell_maps, cell_peaks, method_for, normalize, to_frame

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
    """Cell maps (CAM, or ``method``) → heatmaps in the film's frame → boxes, for a trained
    ChestXray8Net.

    Args:
        model: the network, in eval mode.
        classes: its class names, in output order.
        net_size: (height, width) of the network's input.
        thresholds: box thresholds on [0, 255] (the paper: 60 and 180).
        min_probability: classes below it get no heatmap or box ...
        all_classes: ... unless this is set (what evaluation needs).
        keep_maps: keep each shown class's heatmap (overlays, ``--save-maps``).
        channels_last: feed the network channels_last (as it was trained).
        method: the heatmap method, a name of :data:`wsloc.cam.METHODS`, a user's
            ``package.module:func`` or entry-point name, or a callable (the contract of
            :func:`wsloc.cam.cell_maps`); resolved and checked against the model here, so a
            wrong one fails before any film is read.
    """

    def __init__(self, model, classes: Sequence[str], net_size: tuple[int, int],
                 thresholds: Sequence[int] = PAPER_THRESHOLDS, min_probability: float = 0.5,
                 all_classes: bool = False, keep_maps: bool = False,
                 channels_last: bool = False, method="cam") -> None:
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"the probability threshold must be in [0, 1], got "
                             f"{min_probability}")
        self.model, self.classes = model, list(classes)
        self.net_size = tuple(net_size)
        self.thresholds = tuple(thresholds)
        self.min_probability, self.all_classes, self.keep_maps = (
            min_probability, all_classes, keep_maps)
        self.geometry = model.cell_geometry()
        self.channels_last = channels_last
        self._method = method_for(model, method)
        self.method = method

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(probabilities [N, C], cell maps [N, C, S, S]) by the method: for CAM, one forward
        pass; for a gradient method, one forward and one backward pass per class."""
        probs, cams = cell_maps(self.model, x, self._method, self.channels_last)
        return probs.cpu(), cams.cpu()

    def __call__(self, x: Tensor, frames: Sequence[tuple[int, int]],
                 names: Sequence[str]) -> list[Localization]:
        """Localize a batch: x [N, 1, h, w] as the network takes it; ``frames`` the
        (height, width) of each original film; ``names`` their names."""
        probs, cams = self.forward(x)
        return self.localize(probs, cams, frames, names)

    def shown_classes(self, probs: Tensor) -> list[int]:
        return [c for c in range(len(self.classes))
                if self.all_classes or float(probs[c]) >= self.min_probability]

    def localize(self, probs: Tensor, cams: Tensor, frames: Sequence[tuple[int, int]],
                 names: Sequence[str]) -> list[Localization]:
        """A batch from its probabilities [N, C] and cell maps [N, C, S, S]: every shown
        map of every film is boxed in one go, from its cells (:func:`wsloc.boxes.cell_boxes`),
        so the cost does not grow with the films' size."""
        frames = [(int(h), int(w)) for h, w in frames]
        outs, pairs = [], []
        for i, name in enumerate(names):
            shown = self.shown_classes(probs[i])
            outs.append(Localization(str(name), frames[i], self.classes, probs[i].numpy(),
                                     [self.classes[c] for c in shown]))
            pairs += [(i, c) for c in shown]
        if not pairs:
            return outs
        film, cls = torch.tensor(pairs).T
        cells = normalize(cams[film, cls],
                          [f"{names[i]} ({self.classes[c]})" for i, c in pairs])
        map_frames = [frames[i] for i, _ in pairs]
        which, values, levels = cell_box_arrays(cells, map_frames, self.net_size,
                                                self.geometry, self.thresholds)
        tops = cell_peaks(cells, map_frames, self.net_size, self.geometry)
        p = probs[film, cls].double().numpy().round(6).tolist()
        for k, (i, c) in enumerate(pairs):
            outs[i].peaks[self.classes[c]] = tops[k]
        values[4] = values[4].round(6)
        for k, x1, y1, x2, y2, score, t in zip(which.tolist(), *values.tolist(),
                                               levels.tolist()):
            i, c = pairs[k]
            outs[i].boxes.append({"image": outs[i].image, "class": self.classes[c],
                                  "probability": p[k], "x1": x1, "y1": y1, "x2": x2,
                                  "y2": y2, "score": score, "threshold": t,
                                  "peak_x": tops[k][0], "peak_y": tops[k][1],
                                  "width": outs[i].frame[1], "height": outs[i].frame[0]})
        if self.keep_maps:  # the maps the boxes were drawn from, at the film's pixels
            for i, out in enumerate(outs):
                mine = (film == i).nonzero().flatten()
                if len(mine):
                    out.heatmaps = to_frame(cells[mine], out.frame, self.net_size,
                                            self.geometry).numpy()
        return outs
