"""Benchmark of the custom pooling ops against the PyTorch formula a user would compose.

For each op: forward, and forward+backward, of wsloc's default path (Triton on CUDA, the
PyTorch reference on CPU) and of the composed formula, measured side by side in one run:
milliseconds, effective GB/s, the speed-up, and on CUDA the peak memory of forward+backward.

Effective bytes: forward reads x and writes y; forward+backward adds reading x, y and the
output gradient and writing dx (3·|x| + 3·|y| in all).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsloc import ops
from wsloc.bench.common import device_name, markdown_table, peak_memory, time_pair, write_json

R = 10.0


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    ours: Callable
    composed: Callable
    positive: bool = False


def _lse_global_composed(x):
    return (torch.logsumexp(R * x.flatten(2), -1) - math.log(x[0, 0].numel())) / R


def _lse_window_composed(x, k=2):
    n, c, h, w = x.shape
    cols = F.unfold(x, k, stride=k).view(n, c, k * k, -1)
    y = (torch.logsumexp(R * cols, 2) - math.log(k * k)) / R
    return y.view(n, c, h // k, w // k)


def _softpool_composed(x, k=None):
    # the SoftPool paper's formula: avg_pool(e·x) / avg_pool(e), e = exp(x)
    e = torch.exp(x)
    k = k or x.shape[2:]
    y = F.avg_pool2d(e * x, k) / F.avg_pool2d(e, k)
    return y.flatten(1) if y.shape[2:] == (1, 1) else y


def _stochastic_eval_composed(x, k=2):
    return F.avg_pool2d(x * x, k) / F.avg_pool2d(x, k).clamp_min(1e-30)


def _wildcat_composed(x, kmax, kmin, alpha):
    z = x.flatten(2)
    k1, k2 = (max(1, round(k * z.shape[-1])) for k in (kmax, kmin))
    return (z.topk(k1, dim=-1).values.mean(-1)
            + alpha * z.topk(k2, dim=-1, largest=False).values.mean(-1))


def _kmax2d_composed(x, k):
    z = x.flatten(2)
    index = z.topk(max(1, round(k * z.shape[-1])), dim=-1).indices.sort(dim=-1).values
    return z.gather(-1, index)


DCNN = (2, 3, 4)  # dynamic k-max row: layer 2 of 3, k_top = 4


def _lengths(x):
    """Sequence lengths spread over [S/2, S] (the dynamic k-max row's padded batch)."""
    n, s = x.shape[0], x.shape[-1]
    return torch.linspace(s // 2, s, n, device=x.device).long()


def _dynamic_composed(x):
    # per-sequence k = min(max(k_top, ceil((L − l)/L · s)), s), padding never selected
    layer, layers, k_top = DCNN
    s = x.shape[-1]
    lengths = _lengths(x)
    ks = torch.clamp_min(((layers - layer) * lengths + layers - 1) // layers, k_top)
    ks = torch.minimum(ks, lengths).view(-1, 1, 1)
    pad = torch.arange(s, device=x.device) >= lengths.view(-1, 1, 1)
    index = x.masked_fill(pad, float("-inf")).topk(int(ks.max()), dim=-1).indices
    index = index.masked_fill(torch.arange(index.shape[-1], device=x.device) >= ks, s)
    index = index.sort(dim=-1).values
    return x.gather(-1, index.clamp_max(s - 1)).masked_fill(index == s, 0.0)


SORT_TOP = 16  # the global sort pooling row weights the top 16 ranks


def _sort_weights(k: int, device: torch.device) -> torch.Tensor:
    """Learned-looking rank weights (decreasing, summing to 1), with a gradient."""
    w = torch.linspace(1.0, 0.1, k, device=device)
    return (w / w.sum()).requires_grad_()


def _sort_window_composed(x, w, k=2):
    n, c, h, wd = x.shape
    cols = F.unfold(x, k, stride=k).view(n, c, k * k, -1)
    y = (cols.sort(dim=2, descending=True).values * w.to(x.dtype).view(1, 1, -1, 1)).sum(2)
    return y.view(n, c, h // k, wd // k)


def _sort_global_composed(x, w):
    return x.flatten(2).sort(descending=True).values[..., : w.numel()] @ w.to(x.dtype)


def cases(device: torch.device, quick: bool) -> list[Case]:
    if device.type == "cuda":  # >= 64 MB inputs in float32
        g_shape, w_shape, s_shape = (64, 2048, 16, 16), (32, 256, 64, 64), (256, 256, 256)
    elif quick:
        g_shape, w_shape, s_shape = (4, 64, 8, 8), (2, 16, 16, 16), (4, 16, 32)
    else:
        g_shape, w_shape, s_shape = (32, 512, 16, 16), (16, 128, 32, 32), (64, 256, 256)
    dynamic = ops.DynamicKMaxPool1d(*DCNN)
    w4, w_top = _sort_weights(4, device), _sort_weights(SORT_TOP, device)
    return [
        Case("lse_pool2d global r=10", g_shape, lambda x: ops.lse_pool2d(x, R),
             _lse_global_composed),
        Case("lse_pool2d 2x2 r=10", w_shape, lambda x: ops.lse_pool2d(x, R, 2),
             _lse_window_composed),
        Case("soft_pool2d global", g_shape, ops.soft_pool2d, _softpool_composed),
        Case("soft_pool2d 2x2", w_shape, lambda x: ops.soft_pool2d(x, 2),
             lambda x: _softpool_composed(x, 2)),
        Case("wildcat_pool2d kmax=kmin=0.1", g_shape,
             lambda x: ops.wildcat_pool2d(x, 0.1, 0.1, 0.7),
             lambda x: _wildcat_composed(x, 0.1, 0.1, 0.7)),
        Case("kmax_pool2d k=0.1", g_shape, lambda x: ops.kmax_pool2d(x, 0.1).values,
             lambda x: _kmax2d_composed(x, 0.1)),
        Case("DynamicKMaxPool1d layer 2/3, k_top=4, lengths S/2..S", s_shape,
             lambda x: dynamic(x, _lengths(x)).values, _dynamic_composed),
        Case("stochastic_pool2d 2x2 eval", w_shape,
             lambda x: ops.stochastic_pool2d(x, 2, training=False),
             _stochastic_eval_composed, positive=True),
        Case("sort_pool2d 2x2 (weights [4])", w_shape,
             lambda x, w=w4: ops.sort_pool2d(x, w, 2),
             lambda x, w=w4: _sort_window_composed(x, w)),
        Case(f"sort_pool2d global top {SORT_TOP}", g_shape,
             lambda x, w=w_top: ops.sort_pool2d(x, w, None),
             lambda x, w=w_top: _sort_global_composed(x, w)),
    ]


def _measure(ours: Callable, composed: Callable, x: torch.Tensor, device: torch.device,
             min_time: float) -> tuple[dict, dict]:
    """Forward and forward+backward of both, each pair timed call by call alternately."""
    results = []
    runs = {}
    for name, fn in (("wsloc", ours), ("composed", composed)):
        xg = x.detach().clone().requires_grad_()
        grad = torch.randn_like(fn(x))

        def forward(fn=fn):
            with torch.no_grad():
                fn(x)

        def forward_backward(fn=fn, xg=xg, grad=grad):
            xg.grad = None
            fn(xg).backward(grad)

        runs[name] = (forward, forward_backward, grad.numel() * grad.element_size())
    t_f = time_pair(runs["wsloc"][0], runs["composed"][0], device, min_time)
    t_fb = time_pair(runs["wsloc"][1], runs["composed"][1], device, min_time)
    x_bytes = x.numel() * x.element_size()
    for j, name in enumerate(("wsloc", "composed")):
        y_bytes = runs[name][2]
        peak = peak_memory(runs[name][1], device)
        results.append({
            "fwd_ms": t_f[j] * 1e3,
            "fwd_bwd_ms": t_fb[j] * 1e3,
            "fwd_gbs": (x_bytes + y_bytes) / t_f[j] / 1e9,
            "fwd_bwd_gbs": 3 * (x_bytes + y_bytes) / t_fb[j] / 1e9,
            "peak_mb": None if peak is None else peak / 2**20,
        })
    return results[0], results[1]


def run(device: str = "auto", quick: bool = False, dtype: str = "float32",
        out_dir: str | Path = "benchmarks", only: str | None = None) -> dict:
    """Run the benchmark, print its Markdown table, write JSON; return the results.

    ``only``: run just the rows whose op name contains this substring (case-insensitive);
    such a partial run writes ``ops-partial-…json``, never the full results' file.
    """
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(
        dtype)
    if dt is None:
        raise ValueError(f"--dtype must be one of float32, float16, bfloat16, got {dtype!r}")
    min_time = 0.05 if quick else 0.5
    results = []
    selected = [c for c in cases(dev, quick) if only is None or only.lower() in c.name.lower()]
    if not selected:
        names = ", ".join(repr(c.name) for c in cases(dev, quick))
        raise ValueError(f"--only {only!r} matches no op; the ops are {names}")
    for case in tqdm(selected, desc="bench ops", unit="op"):
        torch.manual_seed(0)
        x = torch.randn(case.shape, device=dev, dtype=dt)
        if case.positive:
            x = x.abs()
        ours, composed = _measure(case.ours, case.composed, x, dev, min_time)
        results.append({
            "op": case.name,
            "shape": list(case.shape),
            "input_mb": x.numel() * x.element_size() / 2**20,
            "wsloc": ours,
            "composed": composed,
            "fwd_speedup": composed["fwd_ms"] / ours["fwd_ms"],
            "fwd_bwd_speedup": composed["fwd_bwd_ms"] / ours["fwd_bwd_ms"],
        })
    headers = ["op", "input", "wsloc fwd ms", "composed fwd ms", "fwd ×", "wsloc f+b ms",
               "composed f+b ms", "f+b ×", "wsloc f+b GB/s", "wsloc peak MB",
               "composed peak MB"]
    rows = [[r["op"], f"{'×'.join(map(str, r['shape']))} ({r['input_mb']:.0f} MB)",
             r["wsloc"]["fwd_ms"], r["composed"]["fwd_ms"], r["fwd_speedup"],
             r["wsloc"]["fwd_bwd_ms"], r["composed"]["fwd_bwd_ms"], r["fwd_bwd_speedup"],
             r["wsloc"]["fwd_bwd_gbs"], r["wsloc"]["peak_mb"], r["composed"]["peak_mb"]]
            for r in results]
    table = markdown_table(headers, rows)
    print(f"\n{device_name(dev)}, {dtype}; × = composed time / wsloc time (> 1: wsloc faster)\n")
    print(table)
    stem = "ops-quick" if quick else "ops"  # a quick run never replaces a full one
    if only is not None:  # nor does a partial one
        stem += "-partial"
    path = write_json(Path(out_dir), stem, dev,
                      {"dtype": dtype, "quick": quick, "results": results, "table": table})
    print(f"\nwrote {path}")
    return {"results": results, "path": str(path), "table": table}
