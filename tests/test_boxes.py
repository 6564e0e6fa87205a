import numpy as np
import pytest

from wsloc.boxes import heatmap_boxes, heatmap_masks


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
