"""Masks next to CAM masks, one row per finding (the first test film that has it, not
picked): the film with its ground-truth mask, the pixel model's masks (full pipeline), and
a ChestX-ray8 model's thresholded CAMs. Used for the README's figure.

    python scripts/figure_segmentation.py --pixel PIXEL_RUN/best.pt --cam CAM_RUN/best.pt \
        --data-root SET --out docs/segmentation.png [--split test] [--cam-threshold 180] \
        [--findings Cardiomegaly Effusion Mass Pneumothorax]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch


def _paint(film: np.ndarray, mask: np.ndarray, color, tile: int, caption: str) -> np.ndarray:
    img = cv2.cvtColor(np.clip(film * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    img = img.astype(np.float32)
    img[mask] = 0.5 * img[mask] + 0.5 * np.asarray(color, np.float32)
    img = img.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, color, 1)
    img = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
    (tw, th), bl = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    cv2.rectangle(img, (0, 0), (tw + 6, th + bl + 6), (0, 0, 0), -1)
    cv2.putText(img, caption, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return img


def main() -> None:
    from wsloc.data import ChestXray14, read_image
    from wsloc.data.transforms import build_transform
    from wsloc.engine.common import load_trained
    from wsloc.engine.segment import Segmenter

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pixel", required=True)
    ap.add_argument("--cam", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--cam-threshold", type=int, default=180)
    ap.add_argument("--findings", nargs="+",
                    default=["Cardiomegaly", "Effusion", "Mass", "Pneumothorax"])
    ap.add_argument("--tile", type=int, default=200)
    args = ap.parse_args()

    models = {}
    for key, path in (("pixel", args.pixel), ("chestxray8", args.cam)):
        model, cfg, classes, _ = load_trained(path)
        size = cfg["data"]["image_size"]
        seg = Segmenter(model, classes, (size, size), key, cam_thresholds=(args.cam_threshold,))
        models[key] = (seg, build_transform("eval", size))
    root = Path(args.data_root)
    ds = ChestXray14(root, split=args.split, classes=classes, image_size=size)
    rows = []
    for finding in args.findings:
        c = classes.index(finding)
        name = next(r.name for r in ds.records if finding in r.labels)
        film = read_image(ds.meta.paths[name])
        truth = cv2.imread(str(root / "masks" / f"{Path(name).stem}__{finding}.png"), 0) > 127
        row = [_paint(film, truth, (255, 128, 0), args.tile, f"{finding}: truth")]
        for key, label in (("pixel", "pixel model"),
                           ("chestxray8", f"CAM > {args.cam_threshold}")):
            seg, transform = models[key]
            x = torch.from_numpy(transform(image=film)["image"])[None, None]
            probs, planes = seg.forward(x)
            masks = seg.masks(film, probs[0], planes[0], [seg.stages[-1]])[seg.stages[-1]]
            inter, union = (masks[c] & truth).sum(), (masks[c] | truth).sum()
            row.append(_paint(film, masks[c], (0, 0, 255), args.tile,
                              f"{label} p={probs[0, c]:.2f} IoU={inter / max(union, 1):.2f}"))
        gap = np.full((args.tile, 4, 3), 255, np.uint8)
        rows.append(np.hstack([row[0], gap, row[1], gap, row[2]]))
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = rows[0]
    for r in rows[1:]:
        grid = np.vstack([grid, sep, r])
    cv2.imwrite(args.out, grid)
    print(f"wrote {args.out} ({grid.shape[1]}×{grid.shape[0]})")


if __name__ == "__main__":
    main()
