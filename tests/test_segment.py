import numpy as np
import pytest
import torch

from wsloc.boxes import heatmap_masks
from wsloc.cam import normalize, to_frame
from wsloc.models import PixelNet, build_model
from wsloc.segment import (
    apply_image_prior,
    cam_masks,
    label_map,
    masks_of,
    pixel_probabilities,
    smooth,
    smoothed_label_map,
    superpixels,
)


def test_pixel_probabilities_are_the_softmax_with_background_at_zero():
    torch.manual_seed(1)
    d = torch.randn(3, 6, 6) * 3
    p = pixel_probabilities(d, (40, 52), (48, 48), (8.0, 3.5))
    assert p.shape == (4, 40, 52)
    assert torch.allclose(p.sum(0), torch.ones(40, 52), atol=1e-6)
    up = to_frame(d, (40, 52), (48, 48), (8.0, 3.5))
    # p(c | x) = exp(d_c) / (1 + Σ_j exp(d_j)), background = 1 / (1 + Σ_j exp(d_j))
    denom = 1 + up.exp().sum(0)
    assert torch.allclose(p[:3], up.exp() / denom, atol=1e-6)
    assert torch.allclose(p[3], 1 / denom, atol=1e-6)


def test_the_image_prior_weights_findings_and_drops_the_absent():
    p = torch.full((4, 2, 2), 0.25)
    w = apply_image_prior(p, torch.tensor([0.9, 0.4, 0.6]))
    assert torch.allclose(w[:, 0, 0], torch.tensor([0.225, 0.0, 0.15, 0.25]))
    w = apply_image_prior(p, torch.tensor([0.9, 0.4, 0.6]), None)
    assert torch.allclose(w[:, 0, 0], torch.tensor([0.225, 0.1, 0.15, 0.25]))


def test_smooth_is_the_mean_over_each_superpixel():
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.random((3, 20, 30)).astype(np.float32))
    segments = rng.integers(0, 7, (20, 30))
    segments[segments == 4] = 5  # a label with no pixel must not break anything
    got = smooth(probs, segments).numpy()
    want = np.empty_like(got)
    for k in range(3):
        for s in np.unique(segments):
            want[k][segments == s] = probs[k].numpy()[segments == s].mean()
    assert np.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="superpixels of shape"):
        smooth(probs, segments[:10])
    # the fast path labels each superpixel by the argmax of its means
    assert torch.equal(smoothed_label_map(probs, segments),
                       torch.from_numpy(want.argmax(0)))
    # and label_map is torch's argmax (the first on a tie)
    ties = torch.tensor([[[0.5, 0.2]], [[0.5, 0.7]], [[0.1, 0.7]]])
    assert torch.equal(label_map(probs), probs.argmax(0))
    assert label_map(ties).tolist() == [[0, 1]]


def test_superpixels_follow_the_film_and_label_maps_pick_the_largest():
    film = np.zeros((64, 64), np.float32)
    film[:, 32:] = 1.0  # two halves: no superpixel may straddle the edge
    seg = superpixels(film, n_segments=16, sigma=0)
    assert seg.shape == film.shape and seg.min() == 0
    for s in np.unique(seg):
        assert len(np.unique(film[seg == s])) == 1
    # a film larger than SLIC's working size is segmented small, labels scaled back
    big = np.zeros((600, 300), np.float32)
    big[:, 150:] = 1.0
    seg = superpixels(big, n_segments=16, sigma=0, max_side=256)
    assert seg.shape == big.shape and 8 <= len(np.unique(seg)) <= 32
    for s in np.unique(seg):
        assert len(np.unique(big[seg == s])) == 1
    with pytest.raises(ValueError, match="number of superpixels"):
        superpixels(film, n_segments=0)
    with pytest.raises(ValueError, match="compactness > 0 and sigma >= 0"):
        superpixels(film, compactness=0)
    probs = torch.tensor([[[0.6, 0.1]], [[0.3, 0.2]], [[0.1, 0.7]]])  # 2 findings + bg
    labels = label_map(probs)
    assert labels.tolist() == [[0, 2]]
    assert masks_of(labels, 2).tolist() == [[[True, False]], [[False, False]]]


def test_cam_masks_are_the_box_rule_as_masks():
    torch.manual_seed(2)
    cells = torch.randn(2, 5, 5)
    masks = cam_masks(cells, (33, 47), (40, 40), (8.0, 0.0), 128, keep=[True, False])
    heat = to_frame(normalize(cells), (33, 47), (40, 40), (8.0, 0.0))
    assert np.array_equal(masks[0], heatmap_masks(heat[0].numpy(), 128).astype(bool))
    assert not masks[1].any()


def test_pixel_model_planes_and_logits():
    model = build_model({"name": "pixel", "backbone": "resnet18", "weights": "none",
                         "transition_channels": 16, "head_channels": 8, "feature_stride": 8,
                         "r": 5.0}, 3).eval()
    assert isinstance(model, PixelNet)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
    s = model.pixel_scores
    assert s.shape == (2, 4, 8, 8)
    d = s[:, :3] - s[:, 3:]
    assert torch.allclose(model.class_maps, d)
    # the image logit is the LSE (r = 5) of each class's plane against background's
    want = torch.logsumexp(5 * d.flatten(2), -1) / 5 - np.log(64) / 5
    assert torch.allclose(logits, want, atol=1e-5)
    assert model.cell_geometry() == (8.0, 0.0)
    with pytest.raises(ValueError, match="model.pooling must be 'lse'"):
        build_model({"name": "pixel", "pooling": "max"}, 3)
    with pytest.raises(ValueError, match="feature_stride must be 4, 8 or 16"):
        build_model({"name": "pixel", "feature_stride": 32}, 3)
    with pytest.raises(ValueError, match="unknown model.name 'unet'"):
        build_model({"name": "unet"}, 3)
