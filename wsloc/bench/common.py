"""Timing, memory and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import datetime
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def time_many(fns: list[Callable[[], object]], device: torch.device, min_time: float = 0.5,
              warmup: int = 2, max_reps: int = 200) -> list[float]:
    """Median seconds per call of each function, timed round-robin call by call, so that all
    see the same machine (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        for fn in fns:
            fn()

    def once(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    times: list[list[float]] = [[] for _ in fns]
    start_all = time.perf_counter()
    while len(times[0]) < 5 or (time.perf_counter() - start_all < len(fns) * min_time
                                and len(times[0]) < max_reps):
        for fn, bucket in zip(fns, times):
            bucket.append(once(fn))
    return [statistics.median(t) for t in times]


def time_pair(fn_a: Callable[[], object], fn_b: Callable[[], object], device: torch.device,
              min_time: float = 0.5) -> tuple[float, float]:
    """:func:`time_many` of two functions."""
    a, b = time_many([fn_a, fn_b], device, min_time)
    return a, b


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated above what was live before ``fn`` ran (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - before


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(out_dir: Path, stem: str, device: torch.device, payload: dict) -> Path:
    """Write ``payload`` with the machine's facts to ``out_dir/stem-<device>.json``."""
    name = device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}-{slug}.json"
    meta = {
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps({"meta": meta, **payload}, indent=2) + "\n")
    return path
