import numpy as np
import pytest

from wsloc.metrics import compute_auc, mean_auc


def _pairwise_auc(scores, labels):
    """AUC as the Mann–Whitney probability that a positive outscores a negative."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_the_pairwise_count():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 4)) < 0.3).astype(int)
    scores = rng.random((60, 4)) + labels * 0.4
    scores[:5, 0] = 0.5  # ties
    aucs = compute_auc(scores, labels)
    for c in range(4):
        assert aucs[c] == pytest.approx(_pairwise_auc(scores[:, c], labels[:, c]))
    assert mean_auc(aucs) == pytest.approx(aucs.mean())


def test_degenerate_class_is_nan_with_a_warning():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    with pytest.warns(UserWarning, match="AUC of Mass is undefined"):
        aucs = compute_auc(np.random.rand(3, 2), labels, ["Nodule", "Mass"])
    assert np.isnan(aucs[1]) and np.isfinite(aucs[0])
    assert mean_auc(aucs) == aucs[0] and np.isnan(mean_auc(np.array([np.nan])))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        compute_auc(np.zeros((3, 2)), np.zeros((3, 1)))


def test_nan_scores_name_the_class():
    scores = np.random.default_rng(0).random((20, 3))
    labels = (scores > 0.5).astype(float)
    scores[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"scores of Cardiomegaly contain NaN"):
        compute_auc(scores, labels, ["Atelectasis", "Cardiomegaly", "Effusion"])


def test_mask_iou_accumulates_over_images_as_voc_does():
    from sklearn.metrics import jaccard_score

    from wsloc.metrics import MaskIoU

    rng = np.random.default_rng(0)
    preds = [rng.random((3, 9, 11)) > 0.6 for _ in range(4)]
    truths = [rng.random((3, 9, 11)) > 0.7 for _ in range(4)]
    truths[2][1] = False  # an image without class 1: its predicted pixels still count
    preds[3][2] = False
    scores = MaskIoU(["a", "b", "c"])
    for p, t in zip(preds, truths):
        scores.update(p, t)
    got = scores.result()
    for k, name in enumerate("abc"):
        want = jaccard_score(np.concatenate([t[k].ravel() for t in truths]),
                             np.concatenate([p[k].ravel() for p in preds]))
        assert got["iou"][name] == pytest.approx(want)
    assert got["mean_iou"] == pytest.approx(np.mean(list(got["iou"].values())))
    # known: an image counts only for the classes whose truth it holds
    part = MaskIoU(["a", "b"])
    p = np.ones((2, 2, 2), bool)
    t = np.zeros((2, 2, 2), bool)
    t[0, 0] = True
    part.update(p, t, known=[True, False])
    assert part.result() == {"iou": {"a": 0.5, "b": None}, "mean_iou": 0.5}
    empty = MaskIoU(["a"])
    empty.update(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool))
    assert empty.result() == {"iou": {"a": None}, "mean_iou": None}
    with pytest.raises(ValueError, match="masks of shape"):
        empty.update(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool))
