"""Benchmark: what ``wsloc heatmap`` adds to the plain forward pass — CAM mapped to each
film, normalised, and boxed at the paper's thresholds — timed side by side on one batch.

Four functions, round-robin: the forward pass alone (what a classifier costs); then, each
timed on its own from that forward's outputs, so that the overhead is measured directly
rather than as a difference of two noisy totals: CAM + boxes for every class (what
evaluation does, the worst case); CAM + boxes for the classes a model calls present
(p ≥ 0.5; here a fixed half of the classes, since an untrained model's probabilities mean
nothing); and, for comparison, every class boxed the
way a user would stitch it from the parts — each map drawn at the film's size, normalised,
and its pixels labelled by OpenCV (:func:`wsloc.boxes.heatmap_boxes`) — where ``wsloc``
finds the same boxes from the cells (:func:`wsloc.boxes.cell_boxes`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from wsloc.bench.common import device_name, markdown_table, time_many, write_json

BENCH_SEED = 7


def run(checkpoint: str | Path | None = None, device: str = "auto", batch: int = 32,
        frame: int = 256, out_dir: str | Path = "benchmarks", min_time: float = 2.0) -> dict:
    from wsloc.boxes import heatmap_boxes
    from wsloc.cam import normalize, to_frame
    from wsloc.config import DEFAULTS
    from wsloc.data.synthetic import render
    from wsloc.data.transforms import build_transform
    from wsloc.engine.common import load_trained
    from wsloc.engine.localize import Localizer
    from wsloc.models import build_model

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if checkpoint is not None:
        model, cfg, classes, _ = load_trained(checkpoint, dev)
    else:  # the demo's architecture; the cost does not depend on the weights
        cfg = DEFAULTS
        classes = [f"class{i}" for i in range(8)]
        model = build_model(dict(cfg["model"]), len(classes)).to(dev).eval()
        if cfg["train"]["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
    size = cfg["data"]["image_size"]
    cl = cfg["train"]["channels_last"]
    # synthetic films (a seed no demo trains on), as `wsloc heatmap` would feed them: noise
    # would give a trained model's maps many more stray regions than films do
    transform = build_transform("eval", size)
    x = torch.stack([torch.from_numpy(transform(image=render(BENCH_SEED, i, frame)[0])["image"])
                     for i in range(batch)])[:, None].to(dev)
    frames = [(frame, frame)] * batch
    names = [f"film{i}.png" for i in range(batch)]
    every = Localizer(model, classes, (size, size), all_classes=True, channels_last=cl)
    half = Localizer(model, classes, (size, size), channels_last=cl)
    shown = torch.arange(len(classes)) % 2 == 0

    with torch.no_grad():
        probs, cams = every.forward(x)
    probs_half = torch.where(shown, torch.ones_like(probs), torch.zeros_like(probs))

    def forward():
        with torch.no_grad():
            return every.forward(x)

    def all_classes():
        return every.localize(probs, cams, frames, names)

    def half_classes():
        return half.localize(probs_half, cams, frames, names)

    def film_pixels():
        maps = normalize(to_frame(cams, (frame, frame), (size, size), every.geometry))
        return [heatmap_boxes(m) for m in maps.flatten(0, 1).numpy()]

    times = time_many([forward, all_classes, half_classes, film_pixels], dev, min_time)
    names_rows = ["forward pass (scores and cell maps)",
                  f"CAM + boxes, all {len(classes)} classes",
                  f"CAM + boxes, {int(shown.sum())} classes shown",
                  f"CAM + boxes, all {len(classes)}, labelling the film's pixels"]
    rows = [[n, f"{t * 1e3:.1f}", f"{batch / (times[0] + t * (i > 0)):.1f}",
             "" if i == 0 else f"+{t / times[0]:.1%}"]
            for i, (n, t) in enumerate(zip(names_rows, times))]
    table = markdown_table([f"batch of {batch} at {size}², films {frame}²", "ms",
                            "images/s (with the forward)", "over forward"], rows)
    print(f"\n{device_name(dev)}\n")
    print(table)
    print(f"\nCAM + boxes over the forward pass: +{times[1] / times[0]:.1%} all classes, "
          f"+{times[2] / times[0]:.1%} shown classes (goal ≤ +10%); labelling the film's "
          f"pixels instead: +{times[3] / times[0]:.1%}")
    payload = {"batch": batch, "size": size, "frame": frame, "checkpoint": str(checkpoint),
               "ms": dict(zip(names_rows, (t * 1e3 for t in times))),
               "overhead_all": times[1] / times[0], "overhead_shown": times[2] / times[0],
               "overhead_film_pixels": times[3] / times[0],
               "table": table}
    path = write_json(Path(out_dir), "heatmap", dev, payload)
    print(f"wrote {path}")
    return payload
