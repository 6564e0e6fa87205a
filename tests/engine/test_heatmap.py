import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.data.test_dicom import write_dicom
from tests.engine.tiny import tiny_run
from wsloc.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with tiny_run(tmp_path_factory, "heat") as run_dir:
        yield run_dir


def _synthetic(run):
    return next((run.parent / "cache" / "wsloc").glob("synthetic-*"))


def test_heatmap_writes_overlays_boxes_and_lists_failures(run, tmp_path, capsys):
    root = _synthetic(run)
    films = tmp_path / "films"
    (films / "sub").mkdir(parents=True)
    names = sorted(p.name for p in (root / "images").iterdir())[:3]
    for n in names:
        shutil.copy(root / "images" / n, films / "sub" / n)
    wide = cv2.resize(cv2.imread(str(root / "images" / names[0]), 0), (90, 70))
    cv2.imwrite(str(films / "wide.png"), wide)  # non-square: boxes in its own 90×70 frame
    write_dicom(films / "scan.dcm", np.tile(np.linspace(0, 4000, 50), (40, 1)))
    (films / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    code = main(["heatmap", "--checkpoint", str(run / "best.pt"), str(films), "--out", str(out),
                 "--all-classes", "--save-maps", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1  # one input failed; the others were processed
    assert "broken.png" in captured.err and "PNG is truncated" in captured.err
    assert "broken.png" in (out / "failed.txt").read_text()
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        [f"{n[:-4]}.png" for n in names] + ["wide.png", "scan.png"])
    boxes = json.loads((out / "boxes.json").read_text())
    sizes = {n: (64, 64) for n in names} | {"wide.png": (70, 90), "scan.dcm": (40, 50)}
    assert {b["image"] for b in boxes} == set(sizes)
    for b in boxes:
        h, w = sizes[b["image"]]
        assert 0 <= b["x1"] < b["x2"] <= w and 0 <= b["y1"] < b["y2"] <= h
        assert b["threshold"] in (60, 180) and 0 <= b["score"] <= 1
        assert 0 <= b["probability"] <= 1
    # every class of every film has a map of the film's size, in [0, 1]: the map its boxes
    # were drawn from, so boxing its pixels finds them again (to a pixel)
    from wsloc.boxes import heatmap_boxes

    heat = np.load(out / "maps" / "wide__Effusion.npy")
    assert heat.shape == (70, 90) and 0 <= heat.min() < 0.05 and 0.95 < heat.max() <= 1
    _same_regions([b for b in boxes if b["image"] == "wide.png" and b["class"] == "Effusion"],
                  heatmap_boxes(heat))
    overlay = cv2.imread(str(out / "overlays" / "wide.png"))
    assert overlay.shape[0] == 70 and overlay.shape[1] > 8 * 90  # the film + 8 class panels


def _same_regions(written, pixel_boxes):
    """Boxes written (records) against those OpenCV finds on the map's pixels: every pixel
    box lies inside a written box of its threshold, and the pixel boxes inside each written
    box span it to a pixel (a saddle may split one cell region into two pixel regions)."""
    assert written and pixel_boxes
    for p in pixel_boxes:
        assert any(w["threshold"] == p.threshold and w["x1"] <= p.x1 and w["y1"] <= p.y1
                   and w["x2"] >= p.x2 and w["y2"] >= p.y2 for w in written), p
    for w in written:
        inside = [p for p in pixel_boxes if p.threshold == w["threshold"] and w["x1"] <= p.x1
                  and w["y1"] <= p.y1 and w["x2"] >= p.x2 and w["y2"] >= p.y2]
        assert inside, w
        span = (min(p.x1 for p in inside), min(p.y1 for p in inside),
                max(p.x2 for p in inside), max(p.y2 for p in inside))
        assert max(abs(a - w[k]) for a, k in zip(span, ("x1", "y1", "x2", "y2"))) <= 1, w


def test_heatmap_boxes_come_from_the_same_forward_pass(run, tmp_path):
    """The boxes written are those of the model's own class maps, mapped to the film: the
    cell route's exactly, and the pixel route's on the map drawn at the film's size to a
    pixel."""
    from wsloc.boxes import cell_boxes, heatmap_boxes
    from wsloc.cam import cell_geometry, normalize, to_frame
    from wsloc.data import read_image
    from wsloc.data.transforms import build_transform
    from wsloc.engine.common import load_trained

    root = _synthetic(run)
    name = sorted(p.name for p in (root / "images").iterdir())[5]
    out = tmp_path / "out"
    assert main(["heatmap", "--checkpoint", str(run / "best.pt"), str(root / "images" / name),
                 "--out", str(out), "--all-classes"]) == 0
    got = [b for b in json.loads((out / "boxes.json").read_text()) if b["class"] == "Mass"]
    model, cfg, classes, _ = load_trained(run / "best.pt")
    film = read_image(root / "images" / name)
    x = torch.from_numpy(build_transform("eval", 64)(image=film)["image"])[None, None]
    with torch.no_grad():
        model(x)
    c = classes.index("Mass")
    geometry = cell_geometry(model.backbone)
    cells = normalize(model.class_maps[0, c][None])
    want = cell_boxes(cells, [film.shape], (64, 64), geometry)[0]
    assert [(b["x1"], b["y1"], b["x2"], b["y2"]) for b in got] == [
        (b.x1, b.y1, b.x2, b.y2) for b in want] and got
    _same_regions(got, heatmap_boxes(to_frame(cells, film.shape, (64, 64), geometry)[0].numpy()))


def test_heatmap_refuses_bad_arguments(run, tmp_path, capsys):
    assert main(["heatmap", "--checkpoint", str(run / "best.pt"), str(tmp_path / "nope.png"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "input not found" in capsys.readouterr().err
    film = next((_synthetic(run) / "images").iterdir())
    assert main(["heatmap", "--checkpoint", str(tmp_path / "x.pt"), str(film),
                 "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _boxes_of(maps, c, frame, model):
    """The boxes (x1, y1, x2, y2, threshold) of class c's cell map, by the cell route,
    sorted (a batch of maps may list a map's regions in another order)."""
    from wsloc.boxes import cell_boxes
    from wsloc.cam import normalize

    cells = normalize(maps[0, c][None])
    return sorted((b.x1, b.y1, b.x2, b.y2, b.threshold)
                  for b in cell_boxes(cells, [frame], (64, 64), model.cell_geometry())[0])


def test_heatmap_by_gradcam_boxes_the_grad_cam_of_the_transition(run, tmp_path):
    from wsloc.cam import grad_cam
    from wsloc.data import read_image
    from wsloc.data.transforms import build_transform
    from wsloc.engine.common import load_trained

    root = _synthetic(run)
    name = sorted(p.name for p in (root / "images").iterdir())[5]
    out = tmp_path / "out"
    assert main(["heatmap", "--checkpoint", str(run / "best.pt"), str(root / "images" / name),
                 "--out", str(out), "--all-classes", "--method", "gradcam", "--save-maps"]) == 0
    got = json.loads((out / "boxes.json").read_text())
    model, cfg, classes, _ = load_trained(run / "best.pt")
    film = read_image(root / "images" / name)
    x = torch.from_numpy(build_transform("eval", 64)(image=film)["image"])[None, None]
    probs, maps = grad_cam(model, x, model.transition)  # the reference: by hand, all classes
    assert {b["class"] for b in got} == set(classes)
    for c, label in enumerate(classes):
        mine = [b for b in got if b["class"] == label]
        assert sorted((b["x1"], b["y1"], b["x2"], b["y2"], b["threshold"]) for b in mine) == (
            _boxes_of(maps, c, film.shape, model))
        assert all(b["probability"] == pytest.approx(float(probs[0, c]), abs=1e-6)
                   for b in mine)
    from wsloc.cam import normalize, to_frame

    heat = np.load(out / "maps" / f"{name[:-4]}__Mass.npy")
    want = to_frame(normalize(maps[0, classes.index("Mass")][None]), film.shape, (64, 64),
                    model.cell_geometry())[0].numpy()
    np.testing.assert_allclose(heat, want, atol=1e-6)


USER_METHODS = """
from wsloc.cam import cell_maps


def gradcam_again(model, x):
    return cell_maps(model, x, "gradcam")


def one_cell_short(model, x):
    probs, maps = cell_maps(model, x, "cam")
    return probs, maps[..., 1:, 1:]
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    import sys

    (tmp_path / "wsloc_test_engine_cams.py").write_text(USER_METHODS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "wsloc_test_engine_cams"
    sys.modules.pop("wsloc_test_engine_cams", None)


@pytest.fixture(scope="module")
def gradcam_eval(run):
    from wsloc.engine.evaluate import evaluate

    with pytest.warns(UserWarning):  # the tiny test split lacks some findings
        return evaluate(run / "best.pt", method="gradcam", progress=False)


def test_evaluate_by_gradcam_scores_its_boxes_by_the_protocol(run, gradcam_eval, capsys):
    from wsloc.cam import grad_cam
    from wsloc.engine.common import load_trained, make_dataset

    out = run / "eval-test-gradcam"  # the default folder names the method
    assert gradcam_eval["out"] == str(out) and gradcam_eval["method"] == "gradcam"
    assert json.loads((out / "metrics.json").read_text())["method"] == "gradcam"
    loc = json.loads((out / "localization.json").read_text())
    assert loc["method"] == "gradcam"
    table = (out / "results.md").read_text()
    assert "Localization: heatmaps by Grad-CAM on the transition features, `--method " \
           "gradcam`." in table and "| 0.5 | wsloc gradcam Acc. |" in table
    # the boxes written are those of the transition's Grad-CAM, by hand, for a film
    boxes = json.loads((out / "boxes.json").read_text())
    model, cfg, classes, _ = load_trained(run / "best.pt")
    dataset = make_dataset(cfg, _synthetic(run), "test", cfg["data"]["eval_transform"])
    item = next(dataset[i] for i, r in enumerate(dataset.records) if r.boxes)
    _, maps = grad_cam(model, item["image"][None], model.transition)
    for c, label in enumerate(classes):
        mine = sorted((b["x1"], b["y1"], b["x2"], b["y2"], b["threshold"]) for b in boxes
                      if b["image"] == item["id"] and b["class"] == label)
        assert mine == _boxes_of(maps, c, tuple(item["frame"]), model)
    # ... and scored as any method's boxes are: `wsloc score-boxes` gives the same figures
    root = _synthetic(run)
    capsys.readouterr()
    assert main(["score-boxes", "--pred", str(out / "boxes.json"), "--gt",
                 str(root / "BBox_List_2017.csv"), "--images", str(root / "test_list.txt"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for kind in ("iou", "iobb", "afp_iou", "afp_iobb", "pointing"):
        assert again[kind] == loc[kind]


def test_evaluate_by_a_user_method_from_its_module(run, gradcam_eval, user_module, tmp_path):
    out = tmp_path / "ev"
    with pytest.warns(UserWarning):
        assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--out", str(out),
                     "--method", f"{user_module}:gradcam_again"]) == 0
    # the same maps by the plug-in path: the same boxes, the same scores
    loc = json.loads((out / "localization.json").read_text())
    want = json.loads((Path(gradcam_eval["out"]) / "localization.json").read_text())
    assert loc.pop("method") == f"{user_module}:gradcam_again" and want.pop("method")
    assert loc == want
    assert (out / "boxes.json").read_text() == (
        Path(gradcam_eval["out"]) / "boxes.json").read_text()
    assert "`wsloc_test_engine_cams:gradcam_again` (a user's method)" in (
        out / "results.md").read_text()


def test_wrong_methods_are_clear_errors_before_any_work(run, user_module, tmp_path, capsys):
    film = str(next((_synthetic(run) / "images").iterdir()))
    ckpt = str(run / "best.pt")
    assert main(["evaluate", "--checkpoint", ckpt, "--out", str(tmp_path / "e"),
                 "--method", "wsloc_no_such_module:cams"]) == 2
    err = capsys.readouterr().err
    assert "--method 'wsloc_no_such_module:cams': cannot import module" in err
    assert not (tmp_path / "e").exists()  # nothing ran
    assert main(["heatmap", "--checkpoint", ckpt, film, "--out", str(tmp_path / "h"),
                 "--method", "gradcam+"]) == 2
    assert "--method 'gradcam+' is not known; valid: cam, gradcam, gradcam++, layercam" in (
        capsys.readouterr().err)
    assert main(["heatmap", "--checkpoint", ckpt, film, "--out", str(tmp_path / "h2"),
                 "--method", f"{user_module}:one_cell_short"]) == 2
    assert (f"--method '{user_module}:one_cell_short' must return (probabilities [1, 8], "
            "maps [1, 8, 8, 8]) on the model's cell grid" in capsys.readouterr().err)
