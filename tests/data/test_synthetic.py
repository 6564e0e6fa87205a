import csv

import cv2
import numpy as np
import pytest

from wsloc.cli import main
from wsloc.data.nih import load_metadata
from wsloc.data.synthetic import FINDINGS, ensure_synthetic, generate, render


def test_deterministic_by_seed():
    a, masks_a, _ = render(7, 11, 96)
    b, masks_b, _ = render(7, 11, 96)
    c, _, _ = render(8, 11, 96)
    assert np.array_equal(a, b) and masks_a.keys() == masks_b.keys()
    assert not np.array_equal(a, c)


def test_same_files_whatever_the_workers(tmp_path):
    one = generate(tmp_path / "one", n=12, size=64, seed=2, workers=1, progress=False)
    two = generate(tmp_path / "two", n=12, size=64, seed=2, workers=2, progress=False)
    for name in ("Data_Entry_2017_v2020.csv", "BBox_List_2017.csv", "test_list.txt"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    for png in (one / "images").iterdir():
        assert png.read_bytes() == (two / "images" / png.name).read_bytes()


def test_findings_change_only_the_pixels_under_their_masks():
    seen = set()
    for index in range(60):
        img, masks, _ = render(0, index, 96)
        base, none, _ = render(0, index, 96, findings=False)
        diff = np.abs(img.astype(int) - base.astype(int))
        if not masks:
            assert none == {} and diff.max() == 0
            continue
        union = np.zeros(img.shape, bool)
        for name, mask in masks.items():
            seen.add(name)
            assert mask.any(), name
            union |= mask
        near = cv2.dilate(union.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        assert diff[~near].max() <= 2  # outside: the same film (up to rounding)
        assert diff[union].mean() > 3  # inside: visibly changed
    assert seen == set(FINDINGS)


def test_layout_boxes_and_masks_agree(synth_root):
    rows = list(csv.reader(open(synth_root / "BBox_List_2017.csv")))
    assert rows[0] == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""]
    assert any(r[1] == "Infiltrate" for r in rows[1:])  # spelled as in the NIH release
    meta = load_metadata(synth_root)
    assert meta.official_split and all(p is not None for p in meta.paths.values())
    checked = 0
    for r in meta.records:
        assert {b.label for b in r.boxes} == set(r.labels)
        for box in r.boxes:
            mask = cv2.imread(str(synth_root / "masks" / f"{r.name[:-4]}__{box.label}.png"), 0)
            ys, xs = np.nonzero(mask)
            assert (box.x1, box.y1, box.x2, box.y2) == (xs.min(), ys.min(), xs.max() + 1,
                                                        ys.max() + 1)
            checked += 1
    assert checked > 40
    header = (synth_root / "Data_Entry_2017_v2020.csv").read_text().splitlines()[0]
    assert header.endswith("OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def test_ensure_reuses_and_cli(tmp_path, capsys):
    first = ensure_synthetic(n=6, size=64, seed=1, cache_root=tmp_path, progress=False)
    stamp = (first / "synth.json").stat().st_mtime_ns
    assert ensure_synthetic(n=6, size=64, seed=1, cache_root=tmp_path, progress=False) == first
    assert (first / "synth.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left
    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--n", "5", "--size", "64", "--workers", "1"]) == 0
    assert len(list((out / "images").iterdir())) == 5
    assert main(["synth", "--out", str(out), "--n", "5"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--size must be an int >= 64"):
        generate(tmp_path / "x", n=2, size=16)
