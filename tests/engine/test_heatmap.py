import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from tests.data.test_dicom import write_dicom
from tests.engine.test_train import TINY
from wsloc.cli import main
from wsloc.config import load_config
from wsloc.engine.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("heat")
    mp = pytest.MonkeyPatch()
    mp.setenv("WSLOC_CACHE", str(base / "cache"))
    try:
        yield train(load_config(None, TINY + ["model.feature_stride=8"]), out=base / "run",
                    progress=False)
    finally:
        mp.undo()


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
