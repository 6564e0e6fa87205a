"""Benchmark: loading training items from the prepared cache vs. from the PNGs.

Both paths go through ``ChestXray14.__getitem__`` with the same eval transform, over the
same items, in one run, one process (a DataLoader multiplies both by its workers). Without
``--data-root`` it uses a synthetic set at NIH's 1024×1024, generated once into the cache
folder, and a cache at ``--size``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from wsloc.bench.common import markdown_table, write_json


def _rate(ds, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        ds[i]
    return count / (time.perf_counter() - start)


def run(data_root: str | None = None, size: int = 512, n: int = 400,
        out_dir: str | Path = "benchmarks", disk_size: int = 1024) -> dict:
    import torch

    from wsloc.data.cache import prepare_cache
    from wsloc.data.dataset import ChestXray14
    from wsloc.data.synthetic import ensure_synthetic
    from wsloc.data.transforms import build_transform

    root = Path(data_root) if data_root else ensure_synthetic(n=max(n, 200), size=disk_size,
                                                              seed=0)
    with tempfile.TemporaryDirectory(prefix="wsloc-bench-cache-") as cache_dir:
        t0 = time.perf_counter()
        prepare_cache(root, size, cache_dir=cache_dir, progress=False)
        prepare_s = time.perf_counter() - t0
        kwargs = dict(split="train", transform=build_transform("eval", size), image_size=size,
                      cache_dir=cache_dir)
        png = ChestXray14(root, use_cache=False, **kwargs)
        cached = ChestXray14(root, use_cache=True, **kwargs)
        if cached.cache is None:
            raise RuntimeError("the prepared cache was not found by the dataset")
        count = min(n, len(png))
        for ds in (png, cached):  # warm both (page cache, imports)
            _rate(ds, min(8, count))
        png_rate = _rate(png, count)
        cache_rate = _rate(cached, count)
        diff = float(np.mean([
            (png[i]["image"] - cached[i]["image"]).abs().mean().item() for i in range(8)]))
        shape = tuple(png[0]["image"].shape)
    rows = [["PNG files (read_image + resize)", f"{png_rate:.1f}", f"{1e3 / png_rate:.2f}"],
            [f"cache ({size}² uint8 memmap)", f"{cache_rate:.1f}", f"{1e3 / cache_rate:.2f}"]]
    table = markdown_table(["path", "images/s", "ms/image"], rows)
    speedup = cache_rate / png_rate
    print(f"\n{count} training items of {root} (on disk {disk_size if not data_root else '?'}², "
          f"out {shape}), one process, {torch.get_num_threads()} torch threads\n")
    print(table)
    print(f"\ncache / PNG: {speedup:.1f}×   (prepare took {prepare_s:.1f} s; mean |PNG − cache| "
          f"pixel difference {diff:.4f})")
    payload = {"root": str(root), "size": size, "items": count, "png_images_per_s": png_rate,
               "cache_images_per_s": cache_rate, "speedup": speedup, "prepare_s": prepare_s,
               "mean_abs_pixel_diff": diff, "table": table}
    path = write_json(Path(out_dir), "loader", torch.device("cpu"), payload)
    print(f"wrote {path}")
    return payload
