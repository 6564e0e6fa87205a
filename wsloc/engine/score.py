"""``wsloc score-boxes``: any method's boxes against NIH-format ground truth, by the paper's
protocol (:func:`wsloc.metrics.localization_scores`)."""

from __future__ import annotations

import json
from pathlib import Path

from wsloc.data.nih import CLASSES, box_frame_of, read_bbox_list, read_split_list

__all__ = ["read_boxes_json", "score_boxes", "to_frame_of"]

REQUIRED = ("image", "class", "x1", "y1", "x2", "y2")


def read_boxes_json(path: str | Path) -> list[dict]:
    """Read a ``boxes.json`` (a JSON list of records with image, class, x1, y1, x2, y2 in the
    original film's pixels; score, probability, peak_x, peak_y optional). A record that does
    not fit is an error naming the file, the record's index and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions not found: {path}")
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of box records, got "
                         f"{type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or any(k not in r for k in REQUIRED):
            missing = [k for k in REQUIRED if not isinstance(r, dict) or k not in r]
            raise ValueError(f"{path}: record {i} lacks {', '.join(missing)}")
        if r["class"] not in CLASSES:
            raise ValueError(f"{path}: record {i} has unknown class {r['class']!r}; the "
                             f"classes are {', '.join(CLASSES)}")
        try:
            x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: record {i} has a non-numeric coordinate") from None
        if not (x2 >= x1 and y2 >= y1):
            raise ValueError(f"{path}: record {i} has x2 < x1 or y2 < y1: {x1, y1, x2, y2}")
    return records


def score_boxes(pred: str | Path, gt: str | Path, images: str | Path | None = None,
                gt_frame: tuple[int, int] | str | None = None) -> dict:
    """Score ``pred`` (boxes.json) against ``gt`` (NIH's BBox_List_2017.csv format: x, y
    top-left, w, h; "Infiltrate" = Infiltration). Every film in ``gt`` is scored — a film
    with no predicted box misses its boxes — or only those listed in ``images`` (one name a
    line, e.g. test_list.txt). With heatmap peaks in the records (peak_x, peak_y), the
    pointing game too. Records that carry their film's size are first scaled into the
    ground truth's frame (:func:`to_frame_of`): ``gt_frame`` (width, height), by default
    the frame the data layer assumes for the CSV's folder (1024² for the NIH release,
    whatever size its films were resized to; a synthetic set's own size), or ``"image"``
    for ground truth drawn on each film as it is (no scaling); ``films_rescaled`` counts
    them."""
    from wsloc.metrics import localization_scores

    records = read_boxes_json(pred)
    gt_path = Path(gt)
    if not gt_path.is_file():
        raise FileNotFoundError(f"ground truth not found: {gt_path}")
    truth = read_bbox_list(gt_path)
    if images is not None:
        keep = set(read_split_list(Path(images)))
        truth = {k: v for k, v in truth.items() if k in keep}
    if not truth:
        raise ValueError(f"{gt_path}: no ground-truth box to score"
                         + (f" among the films listed in {images}" if images else ""))
    if gt_frame == "image":  # the ground truth is in each film's own pixels, as the boxes
        rescaled = 0
    else:
        frame = box_frame_of(gt_path.parent) if gt_frame is None else tuple(gt_frame)
        records, rescaled = to_frame_of(records, frame, pred)
    peaks = {(r["image"], r["class"]): (float(r["peak_x"]), float(r["peak_y"]))
             for r in records if "peak_x" in r and "peak_y" in r}
    present = {b.label for boxes in truth.values() for b in boxes}
    classes = [c for c in CLASSES if c in present]
    scores = localization_scores(records, truth, classes, peaks=peaks or None)
    scored = set(truth)
    scores["films"] = len(scored)
    scores["films_without_predictions"] = len(scored - {r["image"] for r in records})
    scores["films_rescaled"] = rescaled
    return scores


def to_frame_of(records: list[dict], frame: tuple[int, int], where) -> tuple[list[dict], int]:
    """Records in the ground truth's pixel frame (width, height): a record that says its
    film's size (``width``, ``height``, as ``wsloc heatmap`` and ``segment`` write them) and
    differs — boxes from a 512² copy of the NIH release, whose boxes are in its 1024² — is
    scaled to it (box edges by the ratio of the sizes, peaks as pixel centres). Records
    without a size are taken as they are. Returns (records, films rescaled)."""
    gw, gh = frame
    out, films = [], set()
    for i, r in enumerate(records):
        if "width" not in r or "height" not in r:
            out.append(r)
            continue
        try:
            w, h = float(r["width"]), float(r["height"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: record {i} has a non-numeric width or height") from None
        if not (w > 0 and h > 0):
            raise ValueError(f"{where}: record {i} has a film size of {w} × {h}")
        if (w, h) == (gw, gh):
            out.append(r)
            continue
        sx, sy = gw / w, gh / h
        r = dict(r, x1=float(r["x1"]) * sx, x2=float(r["x2"]) * sx, y1=float(r["y1"]) * sy,
                 y2=float(r["y2"]) * sy, width=gw, height=gh)
        if "peak_x" in r and "peak_y" in r:
            r["peak_x"] = (float(r["peak_x"]) + 0.5) * sx - 0.5
            r["peak_y"] = (float(r["peak_y"]) + 0.5) * sy - 0.5
        films.add(r["image"])
        out.append(r)
    return out, len(films)
