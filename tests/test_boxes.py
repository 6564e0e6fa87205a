import numpy as np
import pytest
import torch

from wsloc.boxes import cell_box_arrays, cell_boxes, heatmap_boxes, heatmap_masks
from wsloc.cam import normalize, to_frame


def _reference_boxes(heatmap, t):
    """Regions from scipy.ndimage (8-connected), independent of OpenCV."""
    from scipy import ndimage

    mask = np.rint(heatmap * 255) > t
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = sl
        out.append((xs.start, ys.start, xs.stop, ys.stop,
                    float(heatmap[labels == k].max())))
    return sorted(out)


def test_two_regions_and_their_peaks():
    heat = np.zeros((40, 60), np.float32)
    heat[5:10, 3:8] = 0.5  # 127.5 -> 128: above 60, not 180
    heat[20:30, 40:55] = 0.9
    heat[25, 50] = 1.0
    boxes = heatmap_boxes(heat, (60, 180))
    got = sorted((b.threshold, b.x1, b.y1, b.x2, b.y2, b.score) for b in boxes)
    assert got == [(60, 3, 5, 8, 10, 0.5), (60, 40, 20, 55, 30, 1.0), (180, 40, 20, 55, 30, 1.0)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t", [60, 128, 180])
def test_regions_match_scipy(seed, t):
    pytest.importorskip("scipy")
    import cv2

    rng = np.random.default_rng(seed)
    heat = cv2.GaussianBlur(rng.random((64, 80)).astype(np.float32), (0, 0), 3)
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    got = sorted((b.x1, b.y1, b.x2, b.y2, b.score) for b in heatmap_boxes(heat, (t,)))
    ref = _reference_boxes(heat, t)
    assert len(got) == len(ref) > 0
    for g, r in zip(got, ref):
        assert g == pytest.approx(r)
    assert heatmap_masks(heat, t).sum() == (np.rint(heat * 255) > t).sum()


def test_a_constant_map_has_no_box_and_bad_input_is_an_error():
    assert heatmap_boxes(np.zeros((8, 8))) == []
    with pytest.raises(ValueError, match=r"box thresholds must be in \[0, 255\), got \[300\]"):
        heatmap_boxes(np.zeros((8, 8)), (300,))
    with pytest.raises(ValueError, match=r"non-empty \[H, W\] array, got shape \(8,\)"):
        heatmap_boxes(np.zeros(8))


def test_cell_boxes_worked_by_hand():
    # one row of three cells at net x = 0, 10, 20 (stride 10, offset 0): a tent peaking at
    # the middle cell. At threshold 60 the level is 60.5/255 = 0.23725: the tent crosses it
    # at x = 2.3725 and 17.6275, so pixels 3..17 are in (x1 = 3, x2 = 18 exclusive); at 180,
    # 180.5/255 = 0.70784: pixels 8..12. One row of cells holds its value all the way up
    # and down, so the box spans the whole height.
    cells = torch.tensor([[[0.0, 1.0, 0.0]]])
    (boxes,) = cell_boxes(cells, [(10, 30)], (10, 30), (10.0, 0.0))
    assert [tuple(b) for b in boxes] == [(3.0, 0.0, 18.0, 10.0, 1.0, 60),
                                        (8.0, 0.0, 13.0, 10.0, 1.0, 180)]
    # the same net input from a film twice as wide: film pixel p sits at net x
    # (p + 0.5) / 2 - 0.5, so the crossings land at 5.245 and 35.755: pixels 6..35
    (boxes,) = cell_boxes(cells, [(10, 60)], (10, 30), (10.0, 0.0))
    assert (boxes[0].x1, boxes[0].x2) == (6.0, 36.0)
    # the pixel route, on the very map to_frame draws, agrees
    heat = to_frame(cells, (10, 60), (10, 30), (10.0, 0.0))[0].numpy()
    assert [tuple(b)[:4] for b in heatmap_boxes(heat)] == [tuple(b)[:4] for b in boxes]


def _blobs(rng, s):
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    m = np.zeros((s, s), np.float32)
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.random(2) * s
        sig = 0.5 + rng.random() * s / 3
        m += rng.random() * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig ** 2))
    return m


def test_cell_boxes_hold_the_pixel_route_on_random_maps():
    """The cell route against OpenCV labelling the map drawn at the film's pixels, on 300
    random smooth maps of every stride, offset, film shape: the same regions, and boxes that
    contain the pixel route's and exceed them by at most a pixel — all but a few, where
    the pixel rows and columns miss a thin region's tip (the cell route finds the tip
    itself, between the film's pixel centres) or a saddle splits a region in two."""
    rng = np.random.default_rng(0)
    maps = same_count = sides = within_1px = 0
    for trial in range(300):
        s = int(rng.integers(3, 16))
        stride, offset = [(4.0, 1.5), (8.0, 3.5), (16.0, 0.0), (32.0, 0.0)][trial % 4]
        net = (int(stride * s), int(stride * s))
        frame = (int(rng.integers(40, 700)), int(rng.integers(40, 700)))
        cells = normalize(torch.from_numpy(_blobs(rng, s))[None])
        got = cell_boxes(cells, [frame], net, (stride, offset))[0]
        ref = heatmap_boxes(to_frame(cells, frame, net, (stride, offset))[0].numpy())
        maps += 1
        if len(got) != len(ref):
            continue
        same_count += 1
        for a, b in zip(sorted(got, key=lambda b: (b.threshold, b.score)),
                        sorted(ref, key=lambda b: (b.threshold, b.score))):
            assert a.threshold == b.threshold and a.score == pytest.approx(b.score, abs=0.05)
            assert a.x1 <= b.x1 and a.y1 <= b.y1 and a.x2 >= b.x2 and a.y2 >= b.y2, (a, b)
            for d in (b.x1 - a.x1, a.x2 - b.x2, b.y1 - a.y1, a.y2 - b.y2):
                sides += 1
                within_1px += d <= 1
    assert same_count >= 0.98 * maps
    assert within_1px >= 0.99 * sides


def test_cell_box_arrays_match_cell_boxes_and_check_their_input():
    rng = np.random.default_rng(3)
    cells = normalize(torch.from_numpy(np.stack([_blobs(rng, 12) for _ in range(6)])))
    frames = [(200 + 10 * i, 300 - 10 * i) for i in range(6)]
    lists = cell_boxes(cells, frames, (96, 96), (8.0, 3.5))
    which, values, levels = cell_box_arrays(cells, frames, (96, 96), (8.0, 3.5))
    flat = [(k, *b) for k, boxes in enumerate(lists) for b in boxes]
    assert flat == [(k, *v, t) for k, v, t in zip(which.tolist(), values.T.tolist(),
                                                 levels.tolist())]
    assert all(b.x2 <= frames[k][1] and b.y2 <= frames[k][0]
               for k, boxes in enumerate(lists) for b in boxes)
    assert cell_boxes(torch.zeros(2, 4, 4), [(8, 8)] * 2, (32, 32), (8.0, 0.0)) == [[], []]
    with pytest.raises(ValueError, match="3 cell maps but 2 frames"):
        cell_boxes(torch.zeros(3, 4, 4), [(8, 8)] * 2, (32, 32), (8.0, 0.0))
    with pytest.raises(ValueError, match=r"non-empty \[K, S_h, S_w\] array"):
        cell_boxes(torch.zeros(4, 4), [(8, 8)], (32, 32), (8.0, 0.0))
