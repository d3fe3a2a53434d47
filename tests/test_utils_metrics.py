import math

import numpy as np
import pytest

from utils import metrics as M


def test_spearman_with_ties_matches_hand_ranks():
    pred = [0.1, 0.4, 0.4, 0.9]
    target = [1.0, 2.0, 3.0, 4.0]
    # ranks of pred: 1, 2.5, 2.5, 4 ; target ranks 1..4 -> pearson of those
    rp, rt = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    expected = np.sum((rp - rp.mean()) * (rt - rt.mean())) / np.sqrt(
        np.sum((rp - rp.mean()) ** 2) * np.sum((rt - rt.mean()) ** 2)
    )
    assert M.spearman(pred, target) == pytest.approx(expected)


def test_nan_targets_ignored_and_undefined_is_nan():
    assert M.mae([0.0, 1.0, 5.0], [0.5, np.nan, 4.0]) == pytest.approx(0.75)
    assert math.isnan(M.spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))
    assert math.isnan(M.pearson([1.0], [1.0]))
    assert M.r2([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


def test_task_metrics_names_and_values():
    logits = {
        "distance_score": np.array([-2.0, 0.0, 2.0, 1.0]),
        "peoplecount": np.array([[5, 0, 0, 0, 0], [0, 5, 0, 0, 0], [0, 0, 5, 0, 0], [0, 0, 0, 0, 5.0]]),
        "location_score": np.array([3.0, -3.0, 3.0, 0.1]),
    }
    targets = {
        "distance_score": np.array([0.1, 0.5, 0.9, np.nan]),
        "peoplecount": np.array([0, 1, 3, -1]),
        "location_score": np.array([1.0, 0.0, 0.0, np.nan]),
    }
    m = M.task_metrics(logits, targets, ["distance", "peoplecount", "location"])
    assert m["distance/spearman"] == pytest.approx(1.0)
    assert m["distance/n"] == 3
    assert m["peoplecount/accuracy"] == pytest.approx(2 / 3)
    assert m["location/accuracy"] == pytest.approx(2 / 3)
    assert m["mean_spearman"] == pytest.approx(1.0)


def _rated_pairs(n: int, noise: float, seed: int = 1):
    """Targets on the annotation grid (0.1 steps, ties), a few missing; predictions that follow
    them with Gaussian noise."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 11, n) / 10
    pred = target + rng.normal(0.0, noise, n)
    target[rng.random(n) < 0.1] = np.nan
    return pred, target


def test_each_bootstrap_resample_is_ranked_as_spearman_ranks_it():
    pred, target = _rated_pairs(120, 0.3)
    boot = M.bootstrap_spearmans(pred, target, resamples=60, seed=5)
    ok = np.isfinite(target)
    p, t = pred[ok], M.merge_ties(target[ok])
    draws = np.random.default_rng(5).integers(0, len(p), size=(60, len(p)))
    expected = [M.spearman(p[i], t[i]) for i in draws]
    np.testing.assert_allclose(boot, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("noise", [0.15, 0.4, 5.0])  # Spearman about 0.9, 0.6 and 0
def test_spearman_se_agrees_with_the_bonett_wright_approximation(noise):
    # Bonett & Wright (2000): var(atanh(r_s)) ~ (1 + r_s^2 / 2) / (n - 3), so by the delta method
    # SE(r_s) ~ (1 - r_s^2) sqrt((1 + r_s^2 / 2) / (n - 3)).  A bootstrap of 500 resamples
    # estimates an SE to within about 1/sqrt(1000) ~ 3 %; the approximation runs a little high at
    # high correlation with many ties.
    pred, target = _rated_pairs(600, noise)
    rho = M.spearman(pred, target)
    n = int(np.isfinite(target).sum())
    approx = (1 - rho**2) * math.sqrt((1 + rho**2 / 2) / (n - 3))
    se = M.spearman_se(pred, target)
    assert 0.75 * approx < se < 1.25 * approx, (rho, se, approx)


def test_spearman_se_is_reproducible_and_nan_when_undefined():
    pred, target = _rated_pairs(200, 0.3)
    assert M.spearman_se(pred, target) == M.spearman_se(pred, target)  # a fixed seed
    assert M.spearman_se(pred, target, seed=1) != M.spearman_se(pred, target)
    assert math.isnan(M.spearman_se([0.1, 0.2], [0.3, 0.4]))
    assert math.isnan(M.spearman_se([0.5] * 10, np.arange(10) / 10))  # constant predictions


def test_task_metrics_report_each_scores_standard_error_and_n():
    pred, target = _rated_pairs(300, 0.3)
    logits = {"valence_score": np.log(pred.clip(0.01, 0.99) / (1 - pred.clip(0.01, 0.99)))}
    out = M.task_metrics(logits, {"valence_score": target}, ["valence"])
    assert out["valence/n"] == np.isfinite(target).sum()
    assert out["valence/spearman_se"] == M.spearman_se(M.sigmoid(logits["valence_score"]), target)
    assert 0.01 < out["valence/spearman_se"] < 0.05
