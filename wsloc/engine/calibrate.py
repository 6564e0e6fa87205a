"""Mirror calibration of a ChestXray8Net's class maps, from image-level predictions alone.

A CAM peaks where the network's filters put a finding's evidence, and a trained network can
put it a fraction of a cell to one side of the finding: the loss only asks that the map
light up somewhere on it. On the demo that learned offset varies from one training seed to
the next (−4 … +4 film pixels on 256² films, against 13-pixel nodules), and it decides
whether the nodules are localized.

The offset can be measured without any box. Run the network on a film and on its mirror
image: a finding at x is at the mirror of x in the second film, and a network whose maps
sit d pixels right of the evidence puts the first peak at x + d and the second at
mirror(x) + d, which is x − d once mirrored back. Half the difference of the two peaks, as
a median over the validation films and the findings the model calls present, is d; the
columns of every map are then read d pixels to the left (``model.cam_shift_x``, used by
:meth:`wsloc.models.ChestXray8Net.cell_geometry`), at no cost per film. The mirror is
about the point that maps cell centres onto cell centres, so both maps share one grid.
Nothing vertical has such a symmetry, so only the columns are calibrated.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["mirror", "subcell_peaks", "mirror_shift"]


def mirror(x: Tensor, shift: int) -> Tensor:
    """x mirrored left-right about the point that puts column i at ``shift − 1 − i``
    (torch.flip then a roll by ``shift − W``; the columns that wrap come from the other
    edge)."""
    return torch.roll(torch.flip(x, [-1]), shift - x.shape[-1], -1)


def subcell_peaks(maps: Tensor) -> np.ndarray:
    """(x, y) in cells of each map's maximum [K, S_h, S_w] → [K, 2], refined to a fraction
    of a cell by a parabola through the peak and its two neighbours on each axis (the edge
    cells keep the cell's centre)."""
    m = maps.detach().double()
    k, s_h, s_w = m.shape
    index = m.reshape(k, -1).argmax(-1)
    ys, xs = index // s_w, index % s_w
    out = np.zeros((k, 2))
    for i in range(k):
        x, y = int(xs[i]), int(ys[i])
        out[i] = (x + _vertex(m[i, y], x), y + _vertex(m[i, :, x], y))
    return out


def _vertex(line: Tensor, j: int) -> float:
    if not 0 < j < len(line) - 1:
        return 0.0
    a, b, c = (float(v) for v in line[j - 1:j + 2])
    den = a - 2 * b + c
    return 0.0 if den == 0 else min(max(0.5 * (a - c) / den, -0.5), 0.5)


@torch.no_grad()
def mirror_shift(model, dataset, batch_size: int = 64, channels_last: bool = False,
                 min_probability: float = 0.5, workers: int = 0) -> dict:
    """The horizontal offset of ``model``'s class maps, in input pixels, from ``dataset``'s
    films and their mirror images (see the module's docstring); no label or box is read.

    Returns:
        ``{"shift_x": d, "maps": how many (film, class) pairs it is the median of,
        "method": "mirror"}``; d = 0 when no film has a class called present.
    """
    from wsloc.cam import class_activation_maps, on_axis
    from wsloc.data import collate

    stride, offset = on_axis(model.cell_geometry(), 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                                         num_workers=workers)
    halves = []
    for batch in loader:
        x = batch["image"]
        probs, maps = class_activation_maps(model, x, channels_last)
        cells = maps.shape[-1]
        # cell j at stride·j + offset ↔ cell (cells − j) at the mirror point p, column
        # i ↔ 2p − i: 2p = 2·offset + stride·cells
        two_p = 2 * offset + stride * cells
        if two_p != round(two_p):
            raise ValueError(f"mirror calibration needs cell centres on whole or half "
                             f"pixels, got a geometry of {model.cell_geometry()}")
        _, mirrored = class_activation_maps(model, mirror(x, int(round(two_p)) + 1),
                                            channels_last)
        back = mirror(mirrored, cells + 1)
        present = probs >= min_probability
        if present.any():
            a, b = subcell_peaks(maps[present]), subcell_peaks(back[present])
            halves.append((a[:, 0] - b[:, 0]) / 2)
    if not halves:
        return {"shift_x": 0.0, "maps": 0, "method": "mirror"}
    d = np.concatenate(halves)
    return {"shift_x": float(np.median(d) * stride), "maps": int(len(d)), "method": "mirror"}
