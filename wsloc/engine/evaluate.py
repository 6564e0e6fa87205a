"""``wsloc evaluate``: AUC per class of a checkpoint on a split, with the paper's beside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsloc.engine.checkpoint import load_checkpoint
from wsloc.engine.distributed import Dist, gather_arrays, setup
from wsloc.metrics import compute_auc, mean_auc
from wsloc.models import build_model

__all__ = ["evaluate", "predict", "make_dataset", "data_root_of"]


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


def _out_dir(out: str | Path | None, checkpoint: Path, split: str) -> Path:
    if out is not None:
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty; choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        return out
    base = checkpoint.parent / f"eval-{split}"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    candidate.mkdir(parents=True)
    return candidate


def evaluate(checkpoint: str | Path, data_root: str | Path | None = None, split: str = "test",
             out: str | Path | None = None, batch_size: int | None = None,
             progress: bool = True) -> dict:
    """Evaluate a checkpoint: per-class AUC, mean AUC, ``metrics.json``, ``roc.png`` and
    ``results.md`` (laid out like the paper's table, the paper's ResNet-50 beside ours).
    Without ``data_root``, the data the checkpoint was trained on."""
    from wsloc.report import auc_table, plot_roc, write_metrics

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    if data_root is not None:
        cfg["data"]["root"] = str(data_root)
    d = setup(cfg["train"]["device"])
    root = data_root_of(cfg, d, progress)
    dataset = make_dataset(cfg, root, split, cfg["data"]["eval_transform"])
    model_cfg = dict(cfg["model"], weights="none")  # the checkpoint holds every weight
    model = build_model(model_cfg, len(dataset.classes)).to(d.device)
    model.load_state_dict(ckpt["model"])
    if cfg["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    scores, labels = predict(model, dataset, d, batch_size or cfg["train"]["batch_size"],
                             cfg["data"]["num_workers"], cfg["train"]["channels_last"])
    classes = list(dataset.classes)
    aucs = compute_auc(scores, labels, classes)
    result = {"checkpoint": str(checkpoint), "data_root": str(root), "split": split,
              "images": int(len(labels)), "mean_auc": mean_auc(aucs),
              "auc": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, aucs)}}
    if d.main:
        out_dir = _out_dir(out, checkpoint, split)
        write_metrics(out_dir / "metrics.json", result)
        plot_roc(out_dir / "roc.png", scores, labels, classes, aucs)
        table = auc_table(classes, aucs, f"wsloc ({cfg['model']['backbone']}, "
                                         f"{cfg['model']['pooling']}) on {split}")
        note = ("" if cfg["data"]["root"] is not None else
                "\n\nOurs is on the synthetic set; the paper's figures are on NIH data and "
                "compare only on the NIH release.")
        (out_dir / "results.md").write_text(table + note + "\n")
        result["out"] = str(out_dir)
        print(table + note)
        print(f"\nwrote {out_dir}/metrics.json, roc.png, results.md")
    return result
