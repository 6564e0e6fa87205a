"""``wsloc evaluate``: AUC per class of a checkpoint on a split, with the paper's beside."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from wsloc.boxes import PAPER_THRESHOLDS
from wsloc.engine.common import data_root_of, load_trained, make_dataset, predict
from wsloc.engine.distributed import setup
from wsloc.engine.domain import checkpoint_domain, domain_warning
from wsloc.metrics import compute_auc, mean_auc

__all__ = ["evaluate"]

_TITLES = {"cam": "CAM (the prediction weights on the transition features)",
           "gradcam": "Grad-CAM on the transition features",
           "gradcam++": "Grad-CAM++ on the transition features",
           "layercam": "LayerCAM on the transition features"}


def _out_dir(out: str | Path | None, checkpoint: Path, split: str, method: str = "cam"
             ) -> Path:
    """``out`` (new or empty), or beside the checkpoint: ``eval-<split>``, and
    ``eval-<split>-<method>`` for a method other than CAM (characters other than letters,
    digits and ``._+-`` as ``_``); ``-2``, ``-3`` ... when taken."""
    if out is not None:
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty; choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        return out
    name = f"eval-{split}" if method == "cam" else (
        f"eval-{split}-" + re.sub(r"[^A-Za-z0-9._+-]+", "_", method))
    base = checkpoint.parent / name
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    candidate.mkdir(parents=True)
    return candidate


def localize_split(model, dataset, cfg: dict, batch_size: int, progress: bool = True,
                   thresholds: tuple[int, ...] = PAPER_THRESHOLDS, method="cam"
                   ) -> tuple[dict, list] | None:
    """The paper's localization protocol on the films of ``dataset`` that have boxes of its
    classes: every class's heatmap (by ``method``, see :func:`wsloc.cam.cell_maps`) and
    boxes (``all_classes``), scored against the split's ground truth. Returns (scores, with
    ``"method"`` naming the method, predicted boxes), or None when the split has no box."""
    from tqdm import tqdm

    from wsloc.cam import method_name
    from wsloc.data import collate
    from wsloc.engine.localize import Localizer
    from wsloc.metrics import localization_scores

    def has_box(record):
        return any(b.label in dataset.class_index for b in record.boxes)

    with_boxes = [i for i, r in enumerate(dataset.records) if has_box(r)]
    if dataset.split != "train":
        meta = dataset.meta
        in_train = sum(1 for r in meta.records if meta.split_of[r.name] == "train"
                       and has_box(r))
        if in_train:
            warnings.warn(f"{in_train} film(s) with boxes are in the training split and are "
                          "left out of the localization scores", stacklevel=2)
    if not with_boxes:
        return None
    size = cfg["data"]["image_size"]
    localizer = Localizer(model, dataset.classes, (size, size), thresholds, all_classes=True,
                          channels_last=cfg["train"]["channels_last"], method=method)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, with_boxes),
                                         batch_size=batch_size, collate_fn=collate,
                                         num_workers=cfg["data"]["num_workers"])
    pred, peaks = [], {}
    for batch in tqdm(loader, desc="localize", unit="batch", disable=not progress, leave=False):
        for loc in localizer(batch["image"], batch["frame"], batch["id"]):
            pred.extend(loc.boxes)
            peaks.update({(loc.image, c): xy for c, xy in loc.peaks.items()})
    gt = {dataset.records[i].name: dataset.records[i].boxes for i in with_boxes}
    scores = localization_scores(pred, gt, dataset.classes, peaks=peaks)
    return {"method": method_name(method), **scores}, pred


def _method(cfg: dict) -> str:
    from wsloc.engine.segment import model_kind

    return ("pixel model" if model_kind(cfg) == "pixel" else
            "ChestX-ray8 CAM masks, findings with p ≥ 0.5")


def _compare_masks(checkpoint, cfg: dict, root: Path, split: str, classes, batch_size,
                   progress: bool) -> dict:
    """The mask IoU of another checkpoint on the same films (its own input size)."""
    from wsloc.engine.segment import segment_split

    model, other, other_classes, _ = load_trained(checkpoint)
    if list(other_classes) != list(classes):
        raise ValueError(f"--compare {checkpoint}: its classes {other_classes} are not the "
                         f"evaluated model's {list(classes)}")
    other["data"]["root"] = cfg["data"]["root"]
    dataset = make_dataset(other, root, split, other["data"]["eval_transform"])
    out = segment_split(model, dataset, other, batch_size or other["train"]["batch_size"],
                        progress)
    out["checkpoint"], out["config"] = str(checkpoint), {"model": other["model"]}
    return out


def evaluate(checkpoint: str | Path, data_root: str | Path | None = None, split: str = "test",
             out: str | Path | None = None, batch_size: int | None = None,
             progress: bool = True, compare: str | Path | None = None, method: str = "cam",
             masks: bool = True) -> dict:
    """Evaluate a checkpoint: per-class AUC, mean AUC, ``metrics.json``, ``roc.png`` and
    ``results.md`` (laid out like the paper's table, the paper's ResNet-50 beside ours).
    When the split has boxes (the NIH release's, or the synthetic set's), also the paper's
    localization protocol (:func:`localize_split`): ``localization.json``, ``boxes.json``
    and the T(IoBB) / T(IoU) / AFP / pointing-game tables in ``results.md``. When the data
    has masks (the synthetic set), also the masks' IoU per finding and mean IoU
    (:func:`wsloc.engine.segment.segment_split`): each stage of a pixel model's pipeline,
    or a ChestX-ray8 model's thresholded CAMs; ``segmentation.json``. ``compare``: another
    checkpoint whose masks are scored on the same films and tabled beside (e.g. the
    ChestX-ray8 model trained on the same data, beside a pixel model).
    Without ``data_root``, the data the checkpoint was trained on.

    ``method``: the heatmap method of the localization protocol (:func:`wsloc.cam.cell_maps`:
    ``cam``, ``gradcam``, ``gradcam++``, ``layercam``, or a user's ``package.module:func`` or
    entry-point name), recorded as ``"method"`` in ``metrics.json`` and ``localization.json``
    and named in ``results.md``; the default folder is then ``eval-<split>-<method>``. The
    masks' IoU stays CAM's. A method other than ``cam`` on a pixel checkpoint, or one that
    cannot be resolved, is an error before anything runs. ``masks=False`` skips the mask IoU
    (``wsloc benchmark`` does: its tables have none)."""
    from wsloc.cam import method_for
    from wsloc.engine.segment import segment_split
    from wsloc.report import (
        auc_table,
        localization_tables,
        plot_roc,
        segmentation_table,
        write_metrics,
    )

    if not isinstance(method, str):
        raise TypeError(f"`method` must be a name, got {type(method).__name__}")
    checkpoint = Path(checkpoint)
    model, cfg, _, ckpt = load_trained(checkpoint)
    try:
        method_for(model, method)
    except ValueError as err:
        raise type(err)(f"{checkpoint}: {err}") from err
    d = setup(cfg["train"]["device"])
    model.to(d.device)  # keeps channels_last
    if data_root is not None:
        cfg["data"]["root"] = str(data_root)
    root = data_root_of(cfg, d, progress)
    dataset = make_dataset(cfg, root, split, cfg["data"]["eval_transform"])
    warning = domain_warning(checkpoint_domain(ckpt), data_root=root)
    if warning and d.main:
        warnings.warn(f"{checkpoint}: {warning}", stacklevel=2)
    scores, labels = predict(model, dataset, d, batch_size or cfg["train"]["batch_size"],
                             cfg["data"]["num_workers"], cfg["train"]["channels_last"])
    classes = list(dataset.classes)
    aucs = compute_auc(scores, labels, classes)
    result = {"checkpoint": str(checkpoint), "data_root": str(root), "split": split,
              "method": method,
              "images": int(len(labels)), "mean_auc": mean_auc(aucs),
              "auc": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, aucs)}}
    if warning:
        result["domain_warning"] = warning
    if d.main:
        out_dir = _out_dir(out, checkpoint, split, method)
        write_metrics(out_dir / "metrics.json", result)
        plot_roc(out_dir / "roc.png", scores, labels, classes, aucs)
        table = auc_table(classes, aucs, f"wsloc ({cfg['model']['backbone']}, "
                                         f"{cfg['model']['pooling']}) on {split}")
        note = ("" if cfg["data"]["root"] is not None else
                "\n\nOurs is on the synthetic set; the paper's figures are on NIH data and "
                "compare only on the NIH release.")
        written = ["metrics.json", "roc.png", "results.md"]
        loc = localize_split(model, dataset, cfg, batch_size or cfg["train"]["batch_size"],
                             progress, method=method)
        if loc is not None:
            scores_loc, boxes = loc
            result["localization"] = scores_loc
            write_metrics(out_dir / "localization.json", scores_loc)
            write_metrics(out_dir / "boxes.json", boxes)
            title = _TITLES.get(method, f"`{method}` (a user's method)")
            table += (f"\n\nLocalization: heatmaps by {title}, `--method {method}`.\n\n"
                      + localization_tables(scores_loc, "wsloc" if method == "cam" else
                                            f"wsloc {method}"))
            written += ["localization.json", "boxes.json"]
        masks = segment_split(model, dataset, cfg, batch_size or cfg["train"]["batch_size"],
                              progress) if masks else None
        if masks is not None:
            if compare is not None:
                masks["compare"] = _compare_masks(compare, cfg, root, split, dataset.classes,
                                                  batch_size, progress)
            result["segmentation"] = masks
            write_metrics(out_dir / "segmentation.json", masks)
            table += "\n\n" + segmentation_table(masks, _method(cfg))
            if compare is not None:
                table += "\n" + segmentation_table(masks["compare"],
                                                    _method(masks["compare"]["config"]),
                                                    header=False)
            written.append("segmentation.json")
        if warning:
            note += f"\n\n**Warning:** {warning}."
        (out_dir / "results.md").write_text(table + note + "\n")
        result["out"] = str(out_dir)
        print(table + note)
        print(f"\nwrote {out_dir}/{', '.join(written)}")
    return result

