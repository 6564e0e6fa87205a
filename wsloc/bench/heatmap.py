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

And, in the same round-robin, ``wsloc heatmap`` end to end (:func:`wsloc.engine.heatmap.
run_heatmap`, no overlays): ``films`` PNG files on disk through the DataLoader's
``workers`` (read, decoded, resized), the forward pass, the boxes and their records on
disk (``boxes.jsonl``, ``boxes.json``), checkpoint loading and worker start-up included;
its films/s beside the forward pass's alone (goal: ≥ 80% of it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from wsloc.bench.common import device_name, markdown_table, time_many, write_json

BENCH_SEED = 7


def run(checkpoint: str | Path | None = None, device: str = "auto", batch: int = 32,
        frame: int = 256, out_dir: str | Path = "benchmarks", min_time: float = 2.0,
        films: int | None = None, workers: int = 2) -> dict:
    import cv2
    import numpy as np

    from wsloc.boxes import heatmap_boxes
    from wsloc.cam import normalize, to_frame
    from wsloc.config import DEFAULTS
    from wsloc.data.synthetic import render
    from wsloc.data.transforms import build_transform
    from wsloc.engine.common import load_trained
    from wsloc.engine.heatmap import run_heatmap
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

    films = films or 8 * batch
    with tempfile.TemporaryDirectory(prefix="wsloc-bench-") as tmp:
        tmp = Path(tmp)
        ckpt = _on_disk(tmp, checkpoint, model, cfg, classes)
        (tmp / "films").mkdir()
        for i in range(films):
            cv2.imwrite(str(tmp / "films" / f"film{i:05d}.png"),
                        np.clip(render(BENCH_SEED, i, frame)[0] * 255, 0, 255).astype(np.uint8))
        runs = iter(range(10**6))

        def end_to_end():
            return run_heatmap(ckpt, [tmp / "films"], tmp / f"out{next(runs)}",
                               batch_size=batch, device=dev.type, overlays=False,
                               progress=False, workers=workers)

        times = time_many([forward, all_classes, half_classes, film_pixels, end_to_end],
                          dev, min_time)
    per_batch_e2e = times[4] / films * batch
    names_rows = ["forward pass (scores and cell maps)",
                  f"CAM + boxes, all {len(classes)} classes",
                  f"CAM + boxes, {int(shown.sum())} classes shown",
                  f"CAM + boxes, all {len(classes)}, labelling the film's pixels",
                  f"end to end: {films} PNG files → boxes on disk, {workers} workers"]
    # the CAM rows time their step alone (the forward's outputs given); the last, all of it
    totals = [times[0], *(times[0] + t for t in times[1:4]), per_batch_e2e]
    rows = [[n, f"{t * 1e3:.1f}", f"{batch / total:.1f}",
             "" if i == 0 else f"+{total / times[0] - 1:.1%}"]
            for i, (n, t, total) in enumerate(zip(names_rows, times[:4] + [per_batch_e2e],
                                                  totals))]
    table = markdown_table([f"batch of {batch} at {size}², films {frame}²", "ms per batch",
                            "images/s (with the forward)", "over forward"], rows)
    share = times[0] / per_batch_e2e
    print(f"\n{device_name(dev)}\n")
    print(table)
    print(f"\nCAM + boxes over the forward pass: +{times[1] / times[0]:.1%} all classes, "
          f"+{times[2] / times[0]:.1%} shown classes (goal ≤ +10%); labelling the film's "
          f"pixels instead: +{times[3] / times[0]:.1%}")
    print(f"end to end, {workers} workers: {films / times[4]:.1f} films/s, {share:.0%} of the "
          f"forward pass alone ({batch / times[0]:.1f} films/s; goal ≥ 80%)")
    payload = {"batch": batch, "size": size, "frame": frame, "checkpoint": str(checkpoint),
               "ms": dict(zip(names_rows, (t * 1e3 for t in times[:4] + [per_batch_e2e]))),
               "overhead_all": times[1] / times[0], "overhead_shown": times[2] / times[0],
               "overhead_film_pixels": times[3] / times[0],
               "end_to_end": {"films": films, "workers": workers,
                              "films_per_s": films / times[4],
                              "share_of_forward": share},
               "table": table}
    path = write_json(Path(out_dir), "heatmap", dev, payload)
    print(f"wrote {path}")
    return payload


def _on_disk(tmp: Path, checkpoint, model, cfg: dict, classes: list[str]) -> Path:
    """The checkpoint ``wsloc heatmap`` loads: the given one, or the untrained demo model
    saved as a training run would save it."""
    if checkpoint is not None:
        return Path(checkpoint)
    path = tmp / "demo.pt"
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save({"config": cfg, "model": state, "classes": classes}, path)
    return path
