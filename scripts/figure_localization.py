"""A grid of overlays, one film per finding: the finding's heatmap, our boxes (white: 60,
green: 180) and the ground-truth box (blue). Used for the README's figure.

    python scripts/figure_localization.py --checkpoint RUN/best.pt --data-root SET \
        --out docs/localization.png [--split test] [--per-finding 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch


def main() -> None:
    from wsloc.data import ChestXray14, read_image
    from wsloc.data.transforms import build_transform
    from wsloc.engine.common import load_trained
    from wsloc.engine.localize import Localizer

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-finding", type=int, default=1)
    ap.add_argument("--tile", type=int, default=200)
    args = ap.parse_args()

    model, cfg, classes, _ = load_trained(args.checkpoint)
    size = cfg["data"]["image_size"]
    ds = ChestXray14(args.data_root, split=args.split, classes=classes)
    loc = Localizer(model, classes, (size, size), all_classes=True, keep_maps=True,
                    channels_last=cfg["train"]["channels_last"])
    transform = build_transform("eval", size)
    rows = []
    for label in classes:
        tiles = []
        picks = [r for r in ds.records if any(b.label == label for b in r.boxes)]
        for record in picks[: args.per_finding]:
            film = read_image(ds.meta.paths[record.name])
            x = torch.from_numpy(transform(image=film)["image"])[None, None]
            result = loc(x, [film.shape], [record.name])[0]
            j = result.shown.index(label)
            heat = result.heatmaps[j]
            base = cv2.cvtColor((film * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            color = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
            alpha = (0.55 * heat)[..., None]
            img = (base * (1 - alpha) + color * alpha).astype(np.uint8)
            for b in record.boxes:
                if b.label == label:
                    cv2.rectangle(img, (int(b.x1), int(b.y1)), (int(b.x2) - 1, int(b.y2) - 1),
                                  (255, 128, 0), 2)
            for b in result.boxes:
                if b["class"] == label:
                    cv2.rectangle(img, (int(b["x1"]), int(b["y1"])),
                                  (int(b["x2"]) - 1, int(b["y2"]) - 1),
                                  (0, 255, 0) if b["threshold"] > 60 else (255, 255, 255), 1)
            img = cv2.resize(img, (args.tile, args.tile), interpolation=cv2.INTER_AREA)
            text = f"{label} p={result.probability(label):.2f}"
            cv2.rectangle(img, (0, 0), (args.tile, 16), (0, 0, 0), -1)
            cv2.putText(img, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(img)
        if tiles:
            rows.append(np.concatenate(tiles, 1))
    per_row = 4 if args.per_finding == 1 else 1
    if per_row > 1:  # one film per finding: lay the findings out 4 to a row
        tiles = rows + [np.full_like(rows[0], 255)] * (-len(rows) % per_row)
        rows = [np.concatenate(tiles[i:i + per_row], 1) for i in range(0, len(tiles), per_row)]
    grid = np.concatenate(rows, 0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, grid)
    print(f"wrote {args.out} ({grid.shape[1]}×{grid.shape[0]})")


if __name__ == "__main__":
    main()
