"""Benchmark: what the image-to-pixel pipeline costs per film, stage by stage, on the CPU
(where ``wsloc segment`` runs everything after the forward pass).

For each film size, on synthetic films rendered at that size: the forward pass (per film,
in a batch), the pixel probabilities on the film's pixels, the image-level prior, the SLIC
superpixels, the averaging over them, and the label map — each timed round-robin, median
per film. The smoothing prior (SLIC + averaging) is what a user with 100k films pays for.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wsloc.bench.common import device_name, markdown_table, time_many, write_json

BENCH_SEED = 7


def _stages(seg, render, transform, frame: int, n: int, size: int) -> dict:
    """The stages' callables for ``n`` synthetic films of ``frame``² pixels."""
    from wsloc.segment import apply_image_prior, label_map, pixel_probabilities, smoothed_label_map
    from wsloc.segment import superpixels as slic

    films = [render(BENCH_SEED, i, frame)[0].astype("float32") / 255.0 for i in range(n)]
    x = torch.stack([torch.from_numpy(transform(image=f)["image"]) for f in films])[:, None]
    probs, planes = seg.forward(x)
    probs = torch.full_like(probs, 0.9)  # every finding present: the worst case
    geometry, film0, net = seg.geometry, films[0], (size, size)
    p = pixel_probabilities(planes[0], film0.shape, net, geometry)
    weighted = apply_image_prior(p, probs[0])
    segments = slic(film0)
    return {
        "forward pass (batch of n, per film)": lambda: seg.forward(x),
        "pixel probabilities on the film": lambda: pixel_probabilities(
            planes[0], film0.shape, net, geometry),
        "image-level prior": lambda: apply_image_prior(p, probs[0]),
        "SLIC superpixels": lambda: slic(film0),
        "average over superpixels, argmax": lambda: smoothed_label_map(weighted, segments),
        "(without smoothing: argmax per pixel)": lambda: label_map(weighted),
    }


def run(checkpoint: str | Path | None = None, frames=(256, 1024), n: int = 8,
        out_dir: str | Path = "benchmarks", min_time: float = 1.0) -> dict:
    from wsloc.config import load_config
    from wsloc.data.synthetic import render
    from wsloc.data.transforms import build_transform
    from wsloc.engine.common import load_trained
    from wsloc.engine.segment import Segmenter
    from wsloc.models import build_model

    dev = torch.device("cpu")
    if checkpoint is not None:
        model, cfg, classes, _ = load_trained(checkpoint, dev)
    else:  # the pixel demo's architecture; the cost does not depend on the weights
        cfg = load_config("pixel_demo")
        classes = [f"class{i}" for i in range(8)]
        model = build_model(dict(cfg["model"]), len(classes)).eval()
    if cfg["model"].get("name") != "pixel":
        raise ValueError(f"{checkpoint}: `wsloc bench segment` takes a pixel-model "
                         f"checkpoint, got model {cfg['model'].get('name')!r}")
    size = cfg["data"]["image_size"]
    seg = Segmenter(model, classes, (size, size), "pixel")
    transform = build_transform("eval", size)
    rows, per_size = [], {}
    for frame in frames:
        stages = _stages(seg, render, transform, frame, n, size)
        times = time_many(list(stages.values()), dev, min_time)
        times[0] /= n
        per_size[frame] = dict(zip(stages, (t * 1e3 for t in times)))
        total = sum(times[:5])  # the pipeline; the last row is what smoothing replaces
        smoothing = times[3] + times[4]
        for name, t in zip(stages, times):
            share = f"{t / total:.0%}" if not name.startswith("(") else ""
            rows.append([f"{frame}²", name, f"{t * 1e3:.2f}", share])
        rows.append([f"{frame}²", "**the pipeline, per film**", f"**{total * 1e3:.1f}**",
                     "100%"])
        per_size[frame]["smoothing prior share"] = smoothing / total
    table = markdown_table(["film", "stage", "ms per film", "share"], rows)
    print(f"\n{device_name(dev)}\n")
    print(table)
    for frame in frames:
        t = per_size[frame]
        smooth_ms = t["SLIC superpixels"] + t["average over superpixels, argmax"]
        print(f"{frame}²: the smoothing prior costs {smooth_ms:.1f} ms a film — "
              f"{smooth_ms * 1e5 / 3.6e6:.1f} h for 100,000 films here, one film at a time")
    payload = {"checkpoint": str(checkpoint), "size": size, "n": n,
               "ms": {str(k): v for k, v in per_size.items()}, "table": table}
    path = write_json(Path(out_dir), "segment", dev, payload)
    print(f"wrote {path}")
    return payload
