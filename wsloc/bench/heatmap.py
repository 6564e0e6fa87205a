"""Benchmark: what ``wsloc heatmap`` adds to the plain forward pass — CAM mapped to each
film, normalised, and boxed at the paper's thresholds — timed side by side on one batch.

Three functions, round-robin: the forward pass alone (what a classifier costs); forward +
CAM + boxes for every class (what evaluation does, the worst case); and forward + CAM + boxes
for the classes a model calls present (p ≥ 0.5; here a fixed half of the classes, since an
untrained model's probabilities mean nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch

from wsloc.bench.common import device_name, markdown_table, time_many, write_json


def run(checkpoint: str | Path | None = None, device: str = "auto", batch: int = 32,
        frame: int = 256, out_dir: str | Path = "benchmarks", min_time: float = 2.0) -> dict:
    from wsloc.config import DEFAULTS
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
    x = torch.rand(batch, 1, size, size, device=dev)
    frames = [(frame, frame)] * batch
    names = [f"film{i}.png" for i in range(batch)]
    every = Localizer(model, classes, (size, size), all_classes=True, channels_last=cl)
    half = Localizer(model, classes, (size, size), channels_last=cl)
    shown = torch.arange(len(classes)) % 2 == 0

    def forward():
        with torch.no_grad():
            return every.forward(x)

    def all_classes():
        return every(x, frames, names)

    def half_classes():
        probs, cams = half.forward(x)
        probs = torch.where(shown, torch.ones_like(probs), torch.zeros_like(probs))
        return [half.localize_one(probs[i], cams[i], frames[i], names[i])
                for i in range(batch)]

    times = time_many([forward, all_classes, half_classes], dev, min_time)
    names_rows = ["forward pass (scores)", f"+ CAM + boxes, all {len(classes)} classes",
                  f"+ CAM + boxes, {int(shown.sum())} classes shown"]
    rows = [[n, f"{t * 1e3:.1f}", f"{batch / t:.1f}", f"{t / times[0] - 1:+.1%}"]
            for n, t in zip(names_rows, times)]
    table = markdown_table([f"batch of {batch} at {size}², films {frame}²", "ms",
                            "images/s", "over forward"], rows)
    print(f"\n{device_name(dev)}\n")
    print(table)
    print(f"\nCAM + boxes over the forward pass: {times[1] / times[0] - 1:+.1%} all classes, "
          f"{times[2] / times[0] - 1:+.1%} shown classes (goal ≤ +10%)")
    payload = {"batch": batch, "size": size, "frame": frame, "checkpoint": str(checkpoint),
               "ms": dict(zip(names_rows, (t * 1e3 for t in times))),
               "overhead_all": times[1] / times[0] - 1, "overhead_shown": times[2] / times[0] - 1,
               "table": table}
    path = write_json(Path(out_dir), "heatmap", dev, payload)
    print(f"wrote {path}")
    return payload
