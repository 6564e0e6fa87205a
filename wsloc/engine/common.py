"""What train, evaluate, heatmap and segment share: the data root, datasets, a trained model
from its checkpoint, and batched prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsloc.engine.checkpoint import load_checkpoint
from wsloc.engine.distributed import Dist, gather_arrays
from wsloc.models import build_model

__all__ = ["data_root_of", "make_dataset", "predict", "load_trained"]


def data_root_of(cfg: dict, d: Dist | None = None, progress: bool = True) -> Path:
    """The config's data root, or the built-in synthetic set (generated once, by rank 0)."""
    if cfg["data"]["root"] is not None:
        return Path(cfg["data"]["root"])
    from wsloc.data.synthetic import ensure_synthetic

    d = d or Dist()
    if d.main:
        root = ensure_synthetic(**cfg["data"]["synthetic"], progress=progress)
    d.barrier()
    return root if d.main else ensure_synthetic(**cfg["data"]["synthetic"], progress=False)


def make_dataset(cfg: dict, root: Path, split: str, transform: str):
    from wsloc.data import ChestXray14
    from wsloc.data.transforms import build_transform

    c = cfg["data"]
    size = c["image_size"]
    return ChestXray14(root, split=split, classes=c["classes"], views=c["views"],
                       transform=build_transform(transform, size), image_size=size,
                       val_fraction=c["val_fraction"], seed=c["split_seed"],
                       on_error=c["on_error"])


@torch.no_grad()
def predict(model, dataset, d: Dist, batch_size: int, workers: int, channels_last: bool = False,
            amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and labels [N, C] of ``dataset`` in its order; each rank scores its
    share (rank::world) and the shares are gathered."""
    from wsloc.data import collate

    was_training = model.training
    model.eval()
    mine = list(range(d.rank, len(dataset), d.world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine),
                                         batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate)
    scores, labels = [], []
    for batch in loader:
        x = batch["image"].to(d.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=d.device.type, dtype=torch.float16, enabled=amp):
            scores.append(torch.sigmoid(model(x).float()).cpu().numpy())
        labels.append(batch["labels"].numpy())
    model.train(was_training)
    c = len(dataset.classes)
    out = gather_arrays(d, {
        "index": np.asarray(mine, dtype=np.int64),
        "scores": np.concatenate(scores) if scores else np.zeros((0, c), np.float32),
        "labels": np.concatenate(labels) if labels else np.zeros((0, c), np.float32)})
    order = np.argsort(out["index"])
    return out["scores"][order], out["labels"][order]


def load_trained(checkpoint: str | Path, device: torch.device | str = "cpu"):
    """A trained model from its checkpoint, in eval mode: (model, config, class names,
    checkpoint dict). The checkpoint holds every weight, so nothing is downloaded."""
    ckpt = load_checkpoint(checkpoint)
    for key in ("config", "model", "classes"):
        if key not in ckpt:
            raise ValueError(f"{checkpoint}: not a wsloc training checkpoint (no {key!r})")
    cfg = ckpt["config"]
    model = build_model(dict(cfg["model"], weights="none"), len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    if "calibration" in ckpt and hasattr(model, "cam_shift_x"):  # wsloc.engine.calibrate
        model.cam_shift_x = float(ckpt["calibration"]["shift_x"])
    model.to(device).eval()
    if cfg["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model, cfg, list(ckpt["classes"]), ckpt
