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
