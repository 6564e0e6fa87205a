"""``wsloc segment``: masks for a user's films, and the masks' IoU in ``wsloc evaluate``.

A pixel model's masks go through :mod:`wsloc.segment`'s three stages (pixel scores, the
image-level prior, the smoothing prior); a ChestX-ray8 model's are its thresholded CAMs,
so the two methods are compared with one tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wsloc.cam import class_activation_maps
from wsloc.metrics import MaskIoU
from wsloc.segment import (
    SLIC_COMPACTNESS,
    SLIC_SEGMENTS,
    SLIC_SIGMA,
    apply_image_prior,
    cam_masks,
    label_map,
    masks_of,
    pixel_probabilities,
    smoothed_label_map,
    superpixels,
)

__all__ = ["Segmenter", "run_segment", "segment_split", "STAGES", "CAM_THRESHOLDS",
           "model_kind"]

STAGES = ("pixel scores", "+ image-level prior", "+ smoothing prior")
CAM_THRESHOLDS = (60, 128, 180)


def model_kind(cfg: dict) -> str:
    """``"pixel"`` or ``"chestxray8"``, from a checkpoint's config."""
    return cfg["model"].get("name", "chestxray8")


class Segmenter:
    """Masks of a batch of films in their own pixels, from one forward pass.

    Args:
        model: a trained :class:`~wsloc.models.PixelNet` or ChestXray8Net, in eval mode.
        classes: its class names.
        net_size: (height, width) of the network's input.
        kind: ``"pixel"`` or ``"chestxray8"`` (:func:`model_kind`).
        min_probability: findings below it get no mask (the image-level prior's cut).
        cam_thresholds: for a ChestX-ray8 model, the CAM thresholds (on [0, 255]).
        n_segments, compactness, sigma: the SLIC superpixels of the smoothing prior
            (:func:`wsloc.segment.superpixels`).
        channels_last: feed the network channels_last (as it was trained).
    """

    def __init__(self, model, classes: Sequence[str], net_size: tuple[int, int], kind: str,
                 min_probability: float = 0.5, cam_thresholds: Sequence[int] = CAM_THRESHOLDS,
                 n_segments: int = SLIC_SEGMENTS, compactness: float = SLIC_COMPACTNESS,
                 sigma: float = SLIC_SIGMA, channels_last: bool = False) -> None:
        if kind not in ("pixel", "chestxray8"):
            raise ValueError(f"unknown model kind {kind!r}")
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"the probability threshold must be in [0, 1], got "
                             f"{min_probability}")
        self.model, self.classes, self.kind = model, list(classes), kind
        self.net_size = tuple(net_size)
        self.min_probability = min_probability
        self.cam_thresholds = tuple(cam_thresholds)
        self.n_segments, self.compactness, self.sigma = n_segments, compactness, sigma
        self.geometry = model.cell_geometry()
        self.channels_last = channels_last

    @property
    def stages(self) -> tuple[str, ...]:
        """The names of the mask sets :meth:`masks` returns; the last is the method's."""
        if self.kind == "pixel":
            return STAGES
        return tuple(f"CAM > {t}" for t in self.cam_thresholds)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(probabilities [N, C], planes [N, C, S, S]): the pixel model's class-minus-
        background planes, or the ChestX-ray8 model's CAMs."""
        probs, planes = class_activation_maps(self.model, x, self.channels_last)
        return probs.cpu(), planes.cpu()

    def masks(self, film: np.ndarray, probs: Tensor, planes: Tensor,
              stages: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One film [H, W] in [0, 1]: {stage: boolean masks [C, H, W]} for each of
        ``stages`` (default: all; the smoothing stage is the costly one)."""
        stages = self.stages if stages is None else stages
        frame = tuple(film.shape)
        keep = (probs >= self.min_probability).tolist()
        if self.kind == "chestxray8":
            return {s: cam_masks(planes, frame, self.net_size, self.geometry,
                                 int(s.rsplit(" ", 1)[1]), keep) for s in stages}
        c = len(self.classes)
        p = pixel_probabilities(planes, frame, self.net_size, self.geometry)
        out = {}
        if STAGES[0] in stages:
            out[STAGES[0]] = masks_of(label_map(p), c)
        if STAGES[1] in stages or STAGES[2] in stages:
            weighted = apply_image_prior(p, probs, self.min_probability)
            if STAGES[1] in stages:
                out[STAGES[1]] = masks_of(label_map(weighted), c)
            if STAGES[2] in stages:
                segments = superpixels(film, self.n_segments, self.compactness, self.sigma)
                out[STAGES[2]] = masks_of(smoothed_label_map(weighted, segments), c)
        return out


def mask_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x1, y1, x2, y2), x2/y2 exclusive, of each 8-connected region of a boolean mask."""
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:n]]


def run_segment(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path,
                batch_size: int = 16, min_probability: float = 0.5, cam_threshold: int = 60,
                n_segments: int = SLIC_SEGMENTS, compactness: float = SLIC_COMPACTNESS,
                sigma: float = SLIC_SIGMA, device: str = "auto", overlays: bool = True,
                progress: bool = True, resume: bool = False, shard: str | None = None,
                workers: int | None = None, on_film=None, settings: dict | None = None,
                dicom_out: bool = False, strict_dicom: bool = False) -> dict:
    """Masks for every input film (PNG/JPEG/DICOM files or folders).

    Writes ``OUT/masks/<stem>__<Finding>.png`` (0/255, the film's size, the synthetic set's
    convention) for each finding the model calls present, ``OUT/overlays/<stem>.png``,
    ``OUT/boxes.json`` (one record per mask region, ``wsloc heatmap``'s format; score = the
    region's share of the film) and ``OUT/failed.txt`` listing unreadable inputs with their
    reasons. A pixel checkpoint's masks are its full pipeline; a ChestX-ray8 checkpoint's,
    its CAMs above ``cam_threshold``. Streamed, resumable and sharded as
    :func:`wsloc.engine.heatmap.run_heatmap` (``resume``, ``shard``, ``workers``, the
    layout in :mod:`wsloc.engine.stream`); ``on_film`` receives each film's masks.
    ``dicom_out``: per DICOM film (every input must be one), ``OUT/dicom/<stem>.seg.dcm``
    of its masks and ``<stem>.sr.dcm`` of its boxes (:mod:`wsloc.engine.dicom_run`);
    ``strict_dicom`` and the out-of-domain warning as for ``run_heatmap``. Returns a
    summary: images, masks, boxes, failed, warned, warnings, out, method.
    """
    from wsloc.data.transforms import build_transform
    from wsloc.engine.heatmap import _dicom_settings, open_user_run
    from wsloc.engine.stream import FilmStream

    if not 0 <= cam_threshold < 255:
        raise ValueError(f"--cam-threshold must be in [0, 255), got {cam_threshold}")
    files, unreadable, model, cfg, classes, digest, d, domain = open_user_run(
        checkpoint, inputs, batch_size, device, dicom_out)
    kind = model_kind(cfg)
    size = cfg["data"]["image_size"]
    seg = Segmenter(model, classes, (size, size), kind, min_probability, (cam_threshold,),
                    n_segments, compactness, sigma, cfg["train"]["channels_last"])
    final = seg.stages[-1]
    transform = build_transform("eval", size)
    record = {"checkpoint_sha256": digest, "method": final,
              "min_probability": float(min_probability)}
    if kind == "chestxray8":
        record["cam_threshold"] = int(cam_threshold)
    else:
        record.update(superpixels=int(n_segments), compactness=float(compactness),
                      slic_sigma=float(sigma))
    record.update(overlays=bool(overlays), **_dicom_settings(dicom_out, strict_dicom),
                  **(settings or {}))
    dirs = ("masks",) + (("overlays",) if overlays else ()) + (("dicom",) if dicom_out else ())
    stream = FilmStream("segment", out, files, unreadable, record, batch_size, transform, d,
                        resume=resume, shard=shard, workers=workers, keep_film=True,
                        dirs=dirs, progress=progress, domain=domain, keep_header=dicom_out,
                        strict_dicom=strict_dicom)
    if dicom_out:
        from wsloc.engine.dicom_run import DicomOutputs

        on_film = DicomOutputs(stream.out, stream.tag, {"checkpoint_sha256": digest,
                                                        "method": final}, then=on_film)
    for films, x in stream:
        probs, planes = seg.forward(x)
        for j, film in enumerate(films):
            stream.put(film, partial(_segment_outputs, stream.out, seg, film, probs[j],
                                     planes[j], overlays, on_film, stream.tag))
    return stream.finish()


def _segment_outputs(out: Path, seg: Segmenter, film, probs: Tensor, planes: Tensor,
                     overlays: bool, on_film, tag: str) -> tuple[list[dict], dict]:
    """One film's masks (in a writer thread: the smoothing prior is the costly part), the
    callback (which may fail the film: :class:`wsloc.engine.stream.FilmFailed`), then its
    mask files and overlay, each written whole; its records."""
    import cv2

    from wsloc.engine.rundir import replacing
    from wsloc.report import mask_overlay_png

    final = seg.stages[-1]
    masks = seg.masks(film.film, probs, planes, [final])[final]
    shown, boxes = [], []
    for c, label in enumerate(seg.classes):
        if probs[c] < seg.min_probability or not masks[c].any():
            continue
        shown.append((label, float(probs[c]), masks[c]))
        for x1, y1, x2, y2 in mask_boxes(masks[c]):
            area = float(masks[c][y1:y2, x1:x2].sum()) / masks[c].size
            boxes.append({"image": film.name, "stem": film.stem, "class": label,
                          "probability": round(float(probs[c]), 6),
                          "x1": float(x1), "y1": float(y1), "x2": float(x2),
                          "y2": float(y2), "score": round(area, 6),
                          "width": int(film.shape[1]), "height": int(film.shape[0])})
    if on_film is not None:
        from wsloc.engine.stream import FilmResult

        on_film(FilmResult(film.path, film.stem, film.shape, boxes,
                           masks={label: m for label, _, m in shown}, film=film.film,
                           dicom=film.header, warnings=list(film.warnings)))
    for label, _, mask in shown:
        with replacing(out / "masks" / f"{film.stem}__{label}.png", tag) as tmp:
            if not cv2.imwrite(str(tmp), mask.astype(np.uint8) * 255):
                raise OSError(f"cannot write {tmp}")
    if overlays:
        with replacing(out / "overlays" / f"{film.stem}.png", tag) as tmp:
            mask_overlay_png(tmp, film.film, film.name, shown, notes=film.notes)
    return boxes, {"masks": len(shown)}


def _truth_from_masks(mask_dir: Path, name: str, classes, shape) -> np.ndarray:
    import cv2

    truth = np.zeros((len(classes), *shape), bool)
    for k, label in enumerate(classes):
        path = mask_dir / f"{Path(name).stem}__{label}.png"
        if path.exists():
            m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise ValueError(f"{path}: not a readable mask")
            if m.shape != shape:
                m = cv2.resize(m, shape[::-1], interpolation=cv2.INTER_NEAREST)
            truth[k] = m > 127
    return truth


def _truth_from_boxes(record, dataset, shape) -> tuple[np.ndarray, np.ndarray]:
    """Boxes filled as masks, in the film's pixels (scaled from the box file's frame), and
    which classes the film has boxes of."""
    classes = list(dataset.classes)
    truth = np.zeros((len(classes), *shape), bool)
    known = np.zeros(len(classes), bool)
    fw, fh = (shape[1], shape[0]) if dataset.box_frame == "image" else dataset.box_frame
    sx, sy = shape[1] / fw, shape[0] / fh
    for b in record.boxes:
        if b.label not in dataset.class_index:
            continue
        k = classes.index(b.label)
        known[k] = True
        x1, x2 = (int(round(v * sx)) for v in (b.x1, b.x2))
        y1, y2 = (int(round(v * sy)) for v in (b.y1, b.y2))
        truth[k, max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    return truth, known


def segment_split(model, dataset, cfg: dict, batch_size: int, progress: bool = True,
                  limit: int | None = None) -> dict | None:
    """Mask IoU of the model's masks on a split, for each of its mask stages: per finding
    as PASCAL VOC accumulates it (:class:`wsloc.metrics.MaskIoU`), and the mean over
    findings. The truth: the data's masks (``masks/<stem>__<Finding>.png``, as the synthetic
    set writes them; every film of the split counts, with or without the finding), or else
    its boxes filled as masks (the NIH release: only the films with boxes, each finding
    scored on the films that have boxes of it). None when the data has neither."""
    from tqdm import tqdm

    from wsloc.data import collate, read_image

    mask_dir = Path(dataset.root) / "masks"
    if mask_dir.is_dir():
        source, index = "masks", list(range(len(dataset)))
    else:
        source = "boxes"
        index = [i for i, r in enumerate(dataset.records)
                 if any(b.label in dataset.class_index for b in r.boxes)]
        if not index:
            return None
    index = index[:limit]
    size = cfg["data"]["image_size"]
    seg = Segmenter(model, dataset.classes, (size, size), model_kind(cfg),
                    channels_last=cfg["train"]["channels_last"])
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, index),
                                         batch_size=batch_size, collate_fn=collate,
                                         num_workers=cfg["data"]["num_workers"])
    records = {r.name: r for r in dataset.records}
    scores = {s: MaskIoU(dataset.classes) for s in seg.stages}
    for batch in tqdm(loader, desc="masks", unit="batch", disable=not progress, leave=False):
        probs, planes = seg.forward(batch["image"])
        for j, name in enumerate(batch["id"]):
            film = read_image(dataset.meta.paths[name])
            if source == "masks":
                truth, known = _truth_from_masks(mask_dir, name, dataset.classes,
                                                 film.shape), None
            else:
                truth, known = _truth_from_boxes(records[name], dataset, film.shape)
            for stage, masks in seg.masks(film, probs[j], planes[j]).items():
                scores[stage].update(masks, truth, known)
    result = {"images": len(index), "truth": source,
              "stages": {stage: scores[stage].result() for stage in seg.stages}}
    return result
