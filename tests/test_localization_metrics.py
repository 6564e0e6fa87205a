"""The paper's localization protocol on a case worked out by hand."""

import json

import numpy as np
import pytest

from wsloc.cli import main
from wsloc.data.nih import Box
from wsloc.metrics import IOBB_THRESHOLDS, IOU_THRESHOLDS, box_overlaps, localization_scores

GT = {"a.png": [Box("Nodule", 10, 10, 20, 20), Box("Mass", 50, 50, 90, 90)],
      "b.png": [Box("Nodule", 0, 0, 10, 10)]}
PRED = [
    # a/Nodule: ∩ 8×8 = 64, ∪ 136 -> IoU 0.4706, IoBB 64/100 = 0.64
    {"image": "a.png", "class": "Nodule", "x1": 12, "y1": 12, "x2": 22, "y2": 22,
     "peak_x": 15, "peak_y": 15},
    {"image": "a.png", "class": "Nodule", "x1": 100, "y1": 100, "x2": 110, "y2": 110},  # FP
    # a/Mass: ∩ 10×10 = 100, ∪ 1900 -> IoU 0.0526, IoBB 100/400 = 0.25 exactly
    {"image": "a.png", "class": "Mass", "x1": 40, "y1": 40, "x2": 60, "y2": 60,
     "peak_x": 89.5, "peak_y": 60},
    {"image": "b.png", "class": "Mass", "x1": 0, "y1": 0, "x2": 5, "y2": 5},  # no Mass on b
    {"image": "b.png", "class": "Nodule", "x1": 40, "y1": 40, "x2": 60, "y2": 60,
     "peak_x": 50, "peak_y": 50},  # b's Nodule is missed
]
# by hand: Nodule localized on a while T < 0.4706 (IoU) / T < 0.64 (IoBB), never on b
NODULE_IOU = {0.1: .5, 0.2: .5, 0.3: .5, 0.4: .5, 0.5: 0, 0.6: 0, 0.7: 0}
NODULE_IOBB = {0.1: .5, 0.25: .5, 0.5: .5, 0.75: 0, 0.9: 0}
MASS_IOBB = {0.1: 1, 0.25: 0, 0.5: 0, 0.75: 0, 0.9: 0}  # 0.25 is not > 0.25
# false positives per image with the finding: Nodule on a, b: 2 (T below the match) or 3
NODULE_AFP_IOU = {t: (2 if t < 0.4706 else 3) / 2 for t in IOU_THRESHOLDS}


def _check(scores):
    for t in IOU_THRESHOLDS:
        assert scores["iou"][t]["Nodule"] == pytest.approx(NODULE_IOU[t])
        assert scores["iou"][t]["Mass"] == 0
        assert scores["afp_iou"][t]["Nodule"] == pytest.approx(NODULE_AFP_IOU[t])
        # a's Mass box never matches; b.png's is on a film without Mass: not counted
        assert scores["afp_iou"][t]["Mass"] == 1
    for t in IOBB_THRESHOLDS:
        assert scores["iobb"][t]["Nodule"] == pytest.approx(NODULE_IOBB[t])
        assert scores["iobb"][t]["Mass"] == MASS_IOBB[t]
        assert scores["iobb"][t]["mean"] == pytest.approx((NODULE_IOBB[t] + MASS_IOBB[t]) / 2)
    assert scores["pointing"] == {"Mass": 1.0, "Nodule": 0.5, "mean": 0.75}
    assert scores["boxes"] == {"Mass": 1, "Nodule": 2}


def test_hand_worked_case():
    peaks = {(p["image"], p["class"]): (p["peak_x"], p["peak_y"]) for p in PRED
             if "peak_x" in p}
    _check(localization_scores(PRED, GT, ["Atelectasis", "Mass", "Nodule"], peaks=peaks))


def test_overlaps_against_a_loop():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (20, 2))
    pred = np.concatenate([a, a + rng.uniform(1, 30, (20, 2))], 1)
    b = rng.uniform(0, 50, (15, 2))
    gt = np.concatenate([b, b + rng.uniform(1, 30, (15, 2))], 1)
    iou, iobb = box_overlaps(pred, gt)
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            w = max(0.0, min(p[2], g[2]) - max(p[0], g[0]))
            h = max(0.0, min(p[3], g[3]) - max(p[1], g[1]))
            area_p = (p[2] - p[0]) * (p[3] - p[1])
            area_g = (g[2] - g[0]) * (g[3] - g[1])
            assert iou[i, j] == pytest.approx(w * h / (area_p + area_g - w * h))
            assert iobb[i, j] == pytest.approx(w * h / area_p)


def _write_gt(path):
    rows = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    for name, boxes in GT.items():
        for b in boxes:
            rows.append(f"{name},{b.label},{b.x1},{b.y1},{b.x2 - b.x1},{b.y2 - b.y1}")
    rows.append("c.png,Infiltrate,0,0,10,10")  # a film PRED never saw
    path.write_text("\n".join(rows) + "\n")


def test_score_boxes_cli(tmp_path, capsys):
    _write_gt(tmp_path / "gt.csv")
    (tmp_path / "pred.json").write_text(json.dumps(PRED))
    (tmp_path / "list.txt").write_text("a.png\nb.png\n")
    args = ["score-boxes", "--pred", str(tmp_path / "pred.json"), "--gt",
            str(tmp_path / "gt.csv")]
    assert main(args + ["--images", str(tmp_path / "list.txt"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["iou"]["0.4"]["Nodule"] == 0.5 and doc["iobb"]["0.25"]["Mass"] == 0
    assert doc["films"] == 2 and doc["films_without_predictions"] == 0
    # every film of the GT file: c.png's Infiltration is missed
    assert main(args + ["--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| 0.5 | pred Acc. |" in out and "1 of them without any predicted box" in out
    doc = json.loads((tmp_path / "out" / "localization.json").read_text())
    assert doc["iobb"]["0.1"]["Infiltration"] == 0
    assert "8-class ResNet-50" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize("content,message", [
    ("[{\"image\": \"a.png\"}]", r"record 0 lacks class, x1, y1, x2, y2"),
    ("{\"a\": 1}", r"expected a JSON list"),
    ("[{\"image\": \"a.png\", \"class\": \"Flu\", \"x1\": 0, \"y1\": 0, \"x2\": 1, \"y2\": 1}]",
     r"record 0 has unknown class 'Flu'"),
    ("[oops", r"not valid JSON"),
])
def test_score_boxes_names_the_bad_record(tmp_path, capsys, content, message):
    _write_gt(tmp_path / "gt.csv")
    (tmp_path / "pred.json").write_text(content)
    assert main(["score-boxes", "--pred", str(tmp_path / "pred.json"), "--gt",
                 str(tmp_path / "gt.csv")]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def _halved(record):
    """A record as `wsloc heatmap` writes it for a 512² copy of a 1024² film."""
    r = dict(record, width=512, height=512)
    for k in ("x1", "y1", "x2", "y2"):
        r[k] = record[k] / 2
    for k in ("peak_x", "peak_y"):
        if k in record:
            r[k] = (record[k] + 0.5) / 2 - 0.5  # the same pixel centre, at half the size
    return r


def test_score_boxes_scales_boxes_from_a_resized_copy(tmp_path, capsys):
    """NIH's boxes are in its 1024² pixels: boxes a model drew on a 512² copy (records that
    say their film's size) are scaled into that frame, unless told the GT is per image."""
    _write_gt(tmp_path / "gt.csv")
    (tmp_path / "pred.json").write_text(json.dumps(PRED))
    (tmp_path / "half.json").write_text(json.dumps([_halved(r) for r in PRED]))
    gt = ["--gt", str(tmp_path / "gt.csv"), "--json"]
    assert main(["score-boxes", "--pred", str(tmp_path / "pred.json"), *gt]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["score-boxes", "--pred", str(tmp_path / "half.json"), *gt]) == 0
    half = json.loads(capsys.readouterr().out)
    assert half.pop("films_rescaled") == 2 and full.pop("films_rescaled") == 0
    assert half == full
    assert main(["score-boxes", "--pred", str(tmp_path / "half.json"), *gt,
                 "--gt-frame", "1024", "1024"]) == 0
    assert json.loads(capsys.readouterr().out)["iou"] == full["iou"]
    assert main(["score-boxes", "--pred", str(tmp_path / "half.json"), *gt,
                 "--gt-frame", "image"]) == 0
    as_is = json.loads(capsys.readouterr().out)
    assert as_is["films_rescaled"] == 0 and as_is["iou"]["0.1"]["Nodule"] == 0.0
    assert main(["score-boxes", "--pred", str(tmp_path / "half.json"), *gt,
                 "--gt-frame", "wide"]) == 2
    assert "--gt-frame takes WIDTH HEIGHT or 'image'" in capsys.readouterr().err
