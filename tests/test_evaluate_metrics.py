"""Evaluation metrics against hand-computed values (utils.metrics additions)."""

import math

import numpy as np
import pytest

from utils import metrics as M


def test_weighted_metrics_hand_computed():
    pred, target, w = [0.2, 0.4, 0.9], [0.0, 0.5, 1.0], [1.0, 2.0, 1.0]
    assert M.weighted_mae(pred, target, w) == pytest.approx((0.2 + 2 * 0.1 + 0.1) / 4)
    assert M.weighted_rmse(pred, target, w) == pytest.approx(math.sqrt((0.04 + 2 * 0.01 + 0.01) / 4))
    # weighted mean of t = 0.5; ss_tot = 0.25 + 0 + 0.25; ss_res = 0.07
    assert M.weighted_r2(pred, target, w) == pytest.approx(1 - 0.07 / 0.5)
    # weighted Pearson by hand: weights normalised to 1/4, 1/2, 1/4
    wn = np.array(w) / 4
    p, t = np.array(pred), np.array(target)
    dp, dt = p - (wn * p).sum(), t - (wn * t).sum()
    expected = (wn * dp * dt).sum() / math.sqrt((wn * dp**2).sum() * (wn * dt**2).sum())
    assert M.weighted_pearson(pred, target, w) == pytest.approx(expected)


def test_weighted_ranks_hand_computed():
    # sorted: 1 (w 2) -> 0 + 2/2; 2 (w .5) -> 2 + .25; the two 3s share weight 2 -> 2.5 + 1
    assert M.weighted_ranks([3, 1, 3, 2], [1, 2, 1, 0.5]).tolist() == [3.5, 1.0, 3.5, 2.25]


def test_integer_weights_equal_repeated_pairs():
    rng = np.random.default_rng(0)
    pred = rng.random(12)
    target = np.round(rng.random(12), 1)  # the 0.1 grid makes ties, as in the real table
    w = rng.integers(0, 4, size=12).astype(float)
    rep_p, rep_t = np.repeat(pred, w.astype(int)), np.repeat(target, w.astype(int))
    assert M.weighted_spearman(pred, target, w) == pytest.approx(M.spearman(rep_p, rep_t))
    assert M.weighted_pearson(pred, target, w) == pytest.approx(M.pearson(rep_p, rep_t))
    assert M.weighted_mae(pred, target, w) == pytest.approx(M.mae(rep_p, rep_t))
    assert M.weighted_rmse(pred, target, w) == pytest.approx(M.rmse(rep_p, rep_t))
    assert M.weighted_r2(pred, target, w) == pytest.approx(M.r2(rep_p, rep_t))


def test_weighted_metrics_drop_nan_and_zero_weight_and_refuse_negative():
    assert M.weighted_mae([0.0, 1.0, 5.0], [0.5, np.nan, 4.0], [1.0, 1.0, 0.0]) == pytest.approx(0.5)
    assert math.isnan(M.weighted_mae([0.1], [0.2], [0.0]))
    assert math.isnan(M.weighted_spearman([0.1, 0.2], [0.3, 0.4], [1.0, 0.0]))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        M.weighted_mae([0.1], [0.2], [-1.0])


def test_unweighted_r2_rmse_hand_computed():
    pred, target = [0.1, 0.5, 0.7, 1.0], [0.0, 0.5, 1.0, 1.0]
    ss_res = 0.01 + 0 + 0.09 + 0
    ss_tot = sum((t - 0.625) ** 2 for t in target)
    assert M.r2(pred, target) == pytest.approx(1 - ss_res / ss_tot)
    assert M.rmse(pred, target) == pytest.approx(math.sqrt(ss_res / 4))


def test_roc_auc_with_ties_hand_computed():
    # positives {0.4, 0.8}, negatives {0.1, 0.4}: pairs 1 + 0.5 (tie) + 1 + 1 = 3.5 of 4
    scores = [0.1, 0.4, 0.4, 0.8, 0.3]
    labels = [0, 0, 1, 1, np.nan]
    assert M.roc_auc(scores, labels) == pytest.approx(0.875)
    assert M.roc_auc([0.2, 0.2], [0, 1]) == pytest.approx(0.5)
    assert math.isnan(M.roc_auc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="0 or 1"):
        M.roc_auc([0.1, 0.2], [0, 2])


def test_roc_auc_agrees_with_scikit_learn_when_installed():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # many ties
    assert M.roc_auc(s, y) == pytest.approx(sk.roc_auc_score(y, s))


def test_macro_f1_and_confusion_matrix_hand_computed():
    pred = [0, 1, 1, 2, 4]
    target = [0, 1, 2, 2, -1]  # the last target is unknown
    # class 0: F1 1; class 1: tp 1 fp 1 -> 2/3; class 2: tp 1 fn 1 -> 2/3
    assert M.macro_f1(pred, target) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    cm = M.confusion_matrix(pred, target, 5)
    assert cm == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    # a class only predicted (never annotated) still counts, with F1 0
    assert M.macro_f1([0, 3], [0, 0]) == pytest.approx((1 * 2 / 3 + 0) / 2)


def test_evaluation_metrics_report_and_failed_rows():
    nan = np.nan
    probs = {
        "distance_score": np.array([0.1, 0.6, 0.8, 0.3, nan]),  # last video failed to load
        "peoplecount": np.array(
            [[0.9, 0.1, 0, 0, 0], [0, 0.8, 0.2, 0, 0], [0, 0.6, 0.4, 0, 0], [0, 0, 0, 0, 1.0], [nan] * 5]
        ),
        "location_score": np.array([0.9, 0.2, 0.7, 0.4, nan]),
    }
    targets = {
        "distance_score": np.array([0.0, 0.5, 1.0, nan, 0.2]),
        "distance_confidence": np.array([1.0, 0.5, 0.0, 0.0, 1.0]),
        "peoplecount": np.array([0, 1, 2, 4, 3]),
        "location_score": np.array([1.0, 0.0, 0.0, 1.0, 0.0]),
    }
    r = M.evaluation_metrics(probs, targets, ["distance", "peoplecount", "location"])
    d = r["distance"]
    assert d["n"] == 3 and d["spearman"] == pytest.approx(1.0)
    assert d["mae"] == pytest.approx((0.1 + 0.1 + 0.2) / 3)
    assert d["weighted_n"] == 2 and d["weighted_mae"] == pytest.approx((0.1 * 1 + 0.1 * 0.5) / 1.5)
    pc = r["peoplecount"]
    assert pc["n"] == 4 and pc["accuracy"] == pytest.approx(3 / 4)
    assert pc["confusion_matrix"][2] == [0, 1, 0, 0, 0] and pc["classes"][-1] == "many"
    loc = r["location"]
    assert loc["n"] == 4 and loc["accuracy"] == pytest.approx(2 / 4)
    # positives (Outdoor) {0.9, 0.4} vs negatives {0.2, 0.7}: 1 + 1 + 1 + 0 = 3 of 4
    assert loc["roc_auc"] == pytest.approx(0.75)
    assert r["overall"]["mean_spearman"] == pytest.approx(1.0)
