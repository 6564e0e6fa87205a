"""``wsloc score-boxes``: any method's boxes against NIH-format ground truth, by the paper's
protocol (:func:`wsloc.metrics.localization_scores`)."""

from __future__ import annotations

import json
from pathlib import Path

from wsloc.data.nih import CLASSES, read_bbox_list, read_split_list

__all__ = ["read_boxes_json", "score_boxes"]

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


def score_boxes(pred: str | Path, gt: str | Path, images: str | Path | None = None) -> dict:
    """Score ``pred`` (boxes.json) against ``gt`` (NIH's BBox_List_2017.csv format: x, y
    top-left, w, h; "Infiltrate" = Infiltration). Every film in ``gt`` is scored — a film
    with no predicted box misses its boxes — or only those listed in ``images`` (one name a
    line, e.g. test_list.txt). With heatmap peaks in the records (peak_x, peak_y), the
    pointing game too."""
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
    peaks = {(r["image"], r["class"]): (float(r["peak_x"]), float(r["peak_y"]))
             for r in records if "peak_x" in r and "peak_y" in r}
    present = {b.label for boxes in truth.values() for b in boxes}
    classes = [c for c in CLASSES if c in present]
    scores = localization_scores(records, truth, classes, peaks=peaks or None)
    scored = set(truth)
    scores["films"] = len(scored)
    scores["films_without_predictions"] = len(scored - {r["image"] for r in records})
    return scores
