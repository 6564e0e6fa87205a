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
def runs(tmp_path_factory):
    """A tiny pixel model and a tiny ChestX-ray8 model, trained on the same synthetic set."""
    base = tmp_path_factory.mktemp("seg")
    mp = pytest.MonkeyPatch()
    mp.setenv("WSLOC_CACHE", str(base / "cache"))
    try:
        pixel = train(load_config(None, TINY + ["model.name=pixel", "model.feature_stride=8",
                                                "model.head_channels=8", "model.r=5"]),
                      out=base / "pixel", progress=False)
        cam = train(load_config(None, TINY + ["model.feature_stride=8"]), out=base / "cam",
                    progress=False)
        yield pixel, cam
    finally:
        mp.undo()


def _synthetic(run):
    return next((run.parent / "cache" / "wsloc").glob("synthetic-*"))


def test_segment_writes_masks_overlays_boxes_and_lists_failures(runs, tmp_path, capsys):
    pixel, _ = runs
    root = _synthetic(pixel)
    films = tmp_path / "films"
    films.mkdir()
    names = sorted(p.name for p in (root / "images").iterdir())[:4]
    for n in names:
        shutil.copy(root / "images" / n, films / n)
    wide = cv2.resize(cv2.imread(str(root / "images" / names[0]), 0), (90, 70))
    cv2.imwrite(str(films / "wide.png"), wide)
    write_dicom(films / "scan.dcm", np.tile(np.linspace(0, 4000, 50), (40, 1)))
    (films / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    # two epochs leave background ahead everywhere; lower its plane, so that the findings
    # take the film's pixels and every film gets masks
    ckpt = torch.load(pixel / "best.pt", weights_only=True)
    ckpt["model"]["head.6.bias"][-1] -= 5.0
    torch.save(ckpt, tmp_path / "eager.pt")
    out = tmp_path / "out"
    code = main(["segment", "--checkpoint", str(tmp_path / "eager.pt"), str(films), "--out",
                 str(out), "--min-probability", "0", "--superpixels", "50"])
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err
    assert "broken.png" in (out / "failed.txt").read_text()
    assert len(list((out / "overlays").iterdir())) == 6
    # min-probability 0: every finding is called present; each mask is 0/255 at the film's
    # own size, and the masks of a film cover it without overlapping (each pixel takes one
    # label, and background has lost everywhere)
    sizes = {n[:-4]: (64, 64) for n in names} | {"wide": (70, 90), "scan": (40, 50)}
    masks = sorted((out / "masks").iterdir())
    assert masks
    by_film: dict[str, np.ndarray] = {}
    for path in masks:
        stem, label = path.stem.split("__")
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert m.shape == sizes[stem] and set(np.unique(m)) <= {0, 255} and m.any()
        by_film[stem] = by_film.get(stem, 0) + (m > 0)
    assert set(by_film) == set(sizes)
    assert all(v.min() == v.max() == 1 for v in by_film.values())
    boxes = json.loads((out / "boxes.json").read_text())
    for b in boxes:  # each box surrounds a region of its mask
        stem = b["image"].rsplit(".", 1)[0]
        m = cv2.imread(str(out / "masks" / f"{stem}__{b['class']}.png"), 0) > 0
        x1, y1, x2, y2 = (int(b[k]) for k in ("x1", "y1", "x2", "y2"))
        inside = m[y1:y2, x1:x2]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_segment_with_a_chestxray8_checkpoint_writes_its_cam_masks(runs, tmp_path):
    from wsloc.cam import cell_geometry, normalize, to_frame
    from wsloc.data import read_image
    from wsloc.data.transforms import build_transform
    from wsloc.engine.common import load_trained

    _, cam = runs
    film_path = sorted((_synthetic(cam) / "images").iterdir())[2]
    out = tmp_path / "out"
    assert main(["segment", "--checkpoint", str(cam / "best.pt"), str(film_path), "--out",
                 str(out), "--min-probability", "0", "--cam-threshold", "128"]) == 0
    model, _, classes, _ = load_trained(cam / "best.pt")
    film = read_image(film_path)
    with torch.no_grad():
        model(torch.from_numpy(build_transform("eval", 64)(image=film)["image"])[None, None])
    heat = to_frame(normalize(model.class_maps[0]), film.shape, (64, 64),
                    cell_geometry(model.backbone))
    for c, label in enumerate(classes):
        want = (np.rint(heat[c].numpy() * 255) > 128)
        path = out / "masks" / f"{film_path.stem}__{label}.png"
        got = cv2.imread(str(path), 0) > 0 if path.exists() else np.zeros_like(want)
        assert np.array_equal(got, want), label


def test_evaluate_reports_mask_iou_as_voc_does(runs, tmp_path):
    from sklearn.metrics import jaccard_score

    from wsloc.data import ChestXray14, collate, read_image
    from wsloc.engine.common import load_trained
    from wsloc.engine.segment import STAGES, Segmenter

    pixel, cam = runs
    res = main(["evaluate", "--checkpoint", str(pixel / "best.pt"), "--out",
                str(tmp_path / "ev"), "--compare", str(cam / "best.pt")])
    assert res == 0
    doc = json.loads((tmp_path / "ev" / "segmentation.json").read_text())
    assert list(doc["stages"]) == list(STAGES)
    assert "mask IoU" in (tmp_path / "ev" / "results.md").read_text()
    # the VOC IoU of one finding is the Jaccard index of all the split's pixels at once
    model, cfg, classes, _ = load_trained(pixel / "best.pt")
    root = _synthetic(pixel)
    ds = ChestXray14(root, split="test", classes=classes, image_size=64,
                     transform=__import__("wsloc.data.transforms", fromlist=["x"])
                     .build_transform("eval", 64))
    seg = Segmenter(model, classes, (64, 64), "pixel")
    pred, truth = {s: [] for s in STAGES}, []
    c = classes.index("Effusion")
    for item in (ds[i] for i in range(len(ds))):
        probs, planes = seg.forward(collate([item])["image"])
        film = read_image(ds.meta.paths[item["id"]])
        path = root / "masks" / f"{item['id'][:-4]}__Effusion.png"
        t = cv2.imread(str(path), 0) > 127 if path.exists() else np.zeros(film.shape, bool)
        truth.append(t.ravel())
        for s, m in seg.masks(film, probs[0], planes[0]).items():
            pred[s].append(m[c].ravel())
    for s in STAGES:
        want = jaccard_score(np.concatenate(truth), np.concatenate(pred[s]), zero_division=0)
        got = doc["stages"][s]["iou"]["Effusion"]
        assert got == pytest.approx(want, abs=1e-9) or (got is None and want == 0)
    # a ChestX-ray8 checkpoint gets its CAM masks at 60, 128 and 180 on the same films
    assert main(["evaluate", "--checkpoint", str(cam / "best.pt"), "--out",
                 str(tmp_path / "ev2")]) == 0
    doc2 = json.loads((tmp_path / "ev2" / "segmentation.json").read_text())
    assert list(doc2["stages"]) == ["CAM > 60", "CAM > 128", "CAM > 180"]
    assert doc2["images"] == doc["images"] == len(ds)
    # --compare scored the ChestX-ray8 model's masks on the same films, beside the pixel's
    assert doc["compare"]["stages"] == doc2["stages"]
    assert "ChestX-ray8 CAM masks, findings with p ≥ 0.5: CAM > 180" in (
        tmp_path / "ev" / "results.md").read_text()


def test_wrong_model_types_are_clear_errors(runs, tmp_path, capsys):
    pixel, cam = runs
    film = next((_synthetic(pixel) / "images").iterdir())
    assert main(["heatmap", "--checkpoint", str(pixel / "best.pt"), str(film), "--out",
                 str(tmp_path / "h")]) == 2
    assert "takes a ChestX-ray8 checkpoint, got model 'pixel'" in capsys.readouterr().err
    from wsloc.bench import segment

    with pytest.raises(ValueError, match="takes a pixel-model checkpoint"):
        segment.run(checkpoint=cam / "best.pt", frames=(64,), n=1, out_dir=tmp_path / "b")


def test_a_gradient_method_on_a_pixel_checkpoint_is_a_clear_error(runs, tmp_path, capsys):
    pixel, _ = runs
    assert main(["evaluate", "--checkpoint", str(pixel / "best.pt"), "--method", "gradcam",
                 "--out", str(tmp_path / "e")]) == 2
    assert (f"{pixel / 'best.pt'}: --method 'gradcam' needs a ChestX-ray8 model (its "
            "transition features and prediction layer); a PixelNet has only 'cam'"
            in capsys.readouterr().err)
    assert not (tmp_path / "e").exists()  # refused before anything ran


def test_without_masks_the_boxes_filled_are_the_truth(runs, tmp_path):
    """NIH has boxes, not masks: each finding is scored on the films with boxes of it."""
    from wsloc.engine.common import load_trained, make_dataset
    from wsloc.engine.segment import segment_split

    pixel, _ = runs
    root = tmp_path / "nomasks"
    shutil.copytree(_synthetic(pixel), root, ignore=shutil.ignore_patterns("masks"))
    model, cfg, classes, _ = load_trained(pixel / "best.pt")
    ds = make_dataset(cfg, root, "test", "eval")
    got = segment_split(model, ds, cfg, 8, progress=False)
    boxed = [r for r in ds.records if r.boxes]
    assert got["truth"] == "boxes" and got["images"] == len(boxed) > 0
    # by hand, for each finding: Jaccard over the films that have a box of it, the boxes
    # filled (the synthetic set's boxes are in its films' own 64² pixels)
    from sklearn.metrics import jaccard_score

    from wsloc.data import read_image
    from wsloc.data.transforms import build_transform
    from wsloc.engine.segment import Segmenter

    seg = Segmenter(model, classes, (64, 64), "pixel")
    final = seg.stages[-1]
    for c, label in enumerate(classes):
        films = [r for r in boxed if any(b.label == label for b in r.boxes)]
        if not films:
            assert got["stages"][final]["iou"][label] is None
            continue
        pred, truth = [], []
        for r in films:
            film = read_image(ds.meta.paths[r.name])
            x = torch.from_numpy(build_transform("eval", 64)(image=film)["image"])[None, None]
            probs, planes = seg.forward(x)
            pred.append(seg.masks(film, probs[0], planes[0], [final])[final][c].ravel())
            t = np.zeros(film.shape, bool)
            for b in r.boxes:
                if b.label == label:
                    t[round(b.y1):round(b.y2), round(b.x1):round(b.x2)] = True
            truth.append(t.ravel())
        want = jaccard_score(np.concatenate(truth), np.concatenate(pred), zero_division=0)
        assert got["stages"][final]["iou"][label] == pytest.approx(want, abs=1e-9), label
