"""Benchmark: a training step of the paper's ResNet-50 + LSE model vs. the same backbone with
torchvision's own avgpool + fc head, side by side in one run (round-robin timing).

Three models, same backbone, same batch: torchvision's ResNet-50 (avgpool + fc: the plain
head); wsloc's ChestXray8Net with LSE pooling (r = 10); and the same net with average
pooling, which isolates what LSE itself costs. On CUDA: AMP and channels_last at 512²; on
CPU: float32 at a small size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wsloc.bench.common import device_name, markdown_table, time_many, write_json


def run(device: str = "auto", size: int | None = None, batch: int | None = None,
        out_dir: str | Path = "benchmarks", min_time: float = 1.0) -> dict:
    import torchvision

    from wsloc.models import build_model

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    cuda = dev.type == "cuda"
    size = size or (512 if cuda else 160)
    batch = batch or (32 if cuda else 8)
    classes = 14
    plain = torchvision.models.resnet50(weights=None, num_classes=classes)
    lse = build_model({"backbone": "resnet50", "transition_channels": 2048, "pooling": "lse",
                       "r": 10.0}, classes)
    avg = build_model({"backbone": "resnet50", "transition_channels": 2048, "pooling": "avg"},
                      classes)
    x = torch.rand(batch, 3, size, size, device=dev)
    y = (torch.rand(batch, classes, device=dev) < 0.2).float()
    steps = []
    for model in (plain, lse, avg):
        model.to(dev).train()
        if cuda:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)
        xin = x.contiguous(memory_format=torch.channels_last) if cuda else x

        def step(model=model, opt=opt, scaler=scaler, xin=xin):
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=cuda):
                logits = model(xin)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        steps.append(step)
    times = time_many(steps, dev, min_time)
    rates = [batch / t for t in times]
    names = ["ResNet-50, torchvision avgpool + fc", "ResNet-50 + transition + LSE (wsloc)",
             "ResNet-50 + transition + avg (wsloc)"]
    rows = [[n, f"{r:.2f}", f"{t * 1e3:.1f}"] for n, r, t in zip(names, rates, times)]
    table = markdown_table(["model (train step)", "images/s", "ms/step"], rows)
    head_overhead = times[1] / times[0] - 1
    lse_vs_avg = times[1] / times[2] - 1
    print(f"\n{device_name(dev)}, batch {batch} at {size}², "
          f"{'AMP fp16 + channels_last' if cuda else 'float32'}\n")
    print(table)
    print(f"\nLSE head over the plain head: {head_overhead:+.1%} (goal ≤ +3%); "
          f"LSE pooling over avg pooling in the same head: {lse_vs_avg:+.1%}")
    payload = {"batch": batch, "size": size, "images_per_s": dict(zip(names, rates)),
               "lse_head_overhead": head_overhead, "lse_vs_avg": lse_vs_avg, "table": table}
    path = write_json(Path(out_dir), "train", dev, payload)
    print(f"wrote {path}")
    return payload
