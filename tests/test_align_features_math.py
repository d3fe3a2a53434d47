"""The numbers behind align_features.py: cross-validated ridge from per-fold kernels, its
leak-freedom, RDMs and RSA (analysis/gram.py, analysis/ridge_cv.py, analysis/rsa.py)."""

import math

import numpy as np
import pytest
import torch

import analysis.gram
import analysis.ridge_cv
from analysis.gram import accumulate_grams
from analysis.ridge_cv import (
    DEFAULT_ALPHAS,
    assign_folds,
    centred_blocks,
    cross_validated_ridge,
    fit_predict_fold,
    fold_mean_correlation,
    loo_mse,
)
from analysis.rsa import correlation_rdm, rating_rdm, rsa_spearman, upper_triangle
from utils.metrics import pearson, spearman


def chunks(x, width):
    return [x[:, i : i + width] for i in range(0, x.shape[1], width)]


def heldout(x, y, folds, width=97):
    """Held-out predictions of one target through the pipeline align_features.py runs."""
    grams = accumulate_grams(chunks(np.asarray(x, dtype=np.float32), width), folds)
    return cross_validated_ridge(grams.fold_kernels, folds, np.asarray(y, dtype=np.float64)[:, None])[0][:, 0]


def latent_features(n, d, seed):
    """Features driven by 5 latent factors (like a network layer: strongly correlated columns)
    plus independent noise, on very different scales and offsets per column; D >> N."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 5))
    x = latent @ rng.normal(size=(5, d)) + 0.5 * rng.normal(size=(n, d))
    x = x * rng.uniform(0.1, 10, d) + rng.uniform(-5, 5, d)
    return latent, x


def score(pred, y, folds):
    return fold_mean_correlation(pred, y, folds, pearson)[0]


def test_folds_are_seeded_balanced_and_cover_every_video():
    folds = assign_folds(23, 5, seed=3)
    assert sorted(np.bincount(folds)) == [4, 4, 5, 5, 5]
    assert np.array_equal(folds, assign_folds(23, 5, seed=3))
    assert not np.array_equal(folds, assign_folds(23, 5, seed=4))
    with pytest.raises(ValueError, match="2 <= folds <= videos"):
        assign_folds(3, 5, seed=0)


def test_gram_matrices_are_the_standardised_and_raw_products_whatever_the_chunking():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(30, 40)) * 3 + 1).astype(np.float32)
    x[:, 7] = 2.5  # constant column: no weight
    folds = assign_folds(30, 3, seed=0)
    one = accumulate_grams([x], folds)
    many = accumulate_grams(chunks(x, 6), folds)
    for a, b in ((one.fold_kernels, many.fold_kernels), (one.raw, many.raw), (one.row_sums, many.row_sums)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)
    x64 = x.astype(np.float64)
    for f in range(3):
        train = folds != f
        mean, sd = x64[train].mean(0), x64[train].std(0)
        z = np.where(sd > 0, (x64 - mean) / np.where(sd > 0, sd, 1), 0.0)
        np.testing.assert_allclose(one.fold_kernels[f], z @ z.T, rtol=1e-9, atol=1e-8)
    assert one.num_columns == 40 and list(one.kept_columns) == [39, 39, 39]
    np.testing.assert_allclose(one.raw, x64 @ x64.T, rtol=1e-10)


def test_kernel_ridge_equals_primal_ridge_on_training_standardised_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 12)) * rng.uniform(0.5, 3, 12) + 4
    y = x @ rng.normal(size=12) + rng.normal(size=40)
    folds = assign_folds(40, 4, seed=0)
    grams = accumulate_grams([x.astype(np.float32)], folds)
    xs = x.astype(np.float32).astype(np.float64)
    train, test = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    pred, alpha = fit_predict_fold(grams.fold_kernels[0], train, test, y[:, None], alphas=[0.3])
    mean, sd = xs[train].mean(0), xs[train].std(0)
    z_train, z_test = (xs[train] - mean) / sd, (xs[test] - mean) / sd
    penalty = 0.3 * np.trace(z_train @ z_train.T) / len(train)  # the relative α's scale
    beta = np.linalg.solve(z_train.T @ z_train + penalty * np.eye(12), z_train.T @ (y[train] - y[train].mean()))
    np.testing.assert_allclose(pred[:, 0], y[train].mean() + z_test @ beta, rtol=1e-8, atol=1e-8)
    assert alpha[0] == 0.3


def test_efficient_leave_one_out_equals_refitting_without_each_video():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(15, 30))
    y = z[:, 0] + rng.normal(size=15)
    k = z @ z.T
    all_rows = np.arange(15)
    k_c, _ = centred_blocks(k, all_rows, all_rows[:1])
    eigvals, eigvecs = np.linalg.eigh(k_c)
    yc = (y - y.mean())[:, None]
    for alpha in (0.1, 10.0, 1000.0):
        brute = []
        for i in range(15):
            rest = np.delete(all_rows, i)
            # refit on the other 14 (centred on them, own intercept), predict the left-out one
            kr, kt = centred_blocks(k, rest, np.array([i]))
            coef = np.linalg.solve(kr + alpha * np.eye(14), y[rest] - y[rest].mean())
            brute.append((y[i] - (y[rest].mean() + kt @ coef)[0]) ** 2)
        fast = loo_mse(np.clip(eigvals, 0, None), eigvecs, yc, np.array([alpha]))[0, 0]
        assert fast == pytest.approx(np.mean(brute), rel=1e-8)


def test_recovers_a_planted_linear_relation():
    latent, x = latent_features(150, 2000, seed=3)
    rng = np.random.default_rng(4)
    y = latent @ np.array([1.0, -0.5, 0.3, 0.0, 0.2]) + 0.2 * rng.normal(size=150)
    folds = assign_folds(150, 5, seed=0)
    pred = heldout(x, y, folds)
    assert score(pred, y, folds) > 0.9
    assert fold_mean_correlation(pred, y, folds, spearman)[0] > 0.85


def test_shuffled_targets_give_about_zero():
    """Under the null each fold's correlation has mean 0 (its test targets are independent of
    the model) and sd about 1 / sqrt(30) = 0.18 per fold, 0.08 for the mean of 5 folds.  Bounds:
    every run |r| < 0.35 and the mean of 20 shuffles |mean| < 0.08, both about 4.4 sd."""
    latent, x = latent_features(150, 2000, seed=3)
    y = latent[:, 0]
    folds = assign_folds(150, 5, seed=0)
    grams = accumulate_grams(chunks(x.astype(np.float32), 500), folds)
    rng = np.random.default_rng(5)
    shuffled = np.stack([rng.permutation(y) for _ in range(20)], axis=1)
    pred, _ = cross_validated_ridge(grams.fold_kernels, folds, shuffled)  # 20 targets, one decomposition per fold
    r = np.array([score(pred[:, j], shuffled[:, j], folds) for j in range(20)])
    assert np.all(np.abs(r) < 0.35), r
    assert abs(r.mean()) < 0.08, r.mean()
    # the pooled correlation of the same predictions is biased negative (why scores are per fold)
    pooled = np.array([pearson(pred[:, j], shuffled[:, j]) for j in range(20)])
    assert pooled.mean() < r.mean() - 0.05


# ----------------------------------------------------------------------------- no leaks


def fold_zero_prediction_moves(pipeline, seed=6):
    """Does the prediction of one fold-0 video change when only what it may not see changes?

    It may not see (a) the features of the *other* fold-0 videos, which a standardisation fitted
    on all videos would use, nor (b) the targets of fold 0, which an α chosen on the test fold
    would use.  Everything else (its own features, all training videos) stays the same."""
    latent, x = latent_features(60, 300, seed)
    y = latent[:, 0] + 0.3 * np.random.default_rng(seed).normal(size=60)
    folds = assign_folds(60, 4, seed=0)
    watched = np.flatnonzero(folds == 0)[0]
    others = (folds == 0) & (np.arange(60) != watched)
    before = pipeline(x, y, folds)[watched]
    x2, y2 = x.copy(), y.copy()
    x2[others] = x2[others] * 7 + 20
    y2[folds == 0] = 10 * np.random.default_rng(seed + 1).normal(size=int((folds == 0).sum()))
    after = pipeline(x2, y2, folds)[watched]
    return not math.isclose(before, after, rel_tol=1e-9, abs_tol=1e-9)


def test_no_information_from_the_test_fold_reaches_its_predictions():
    assert not fold_zero_prediction_moves(heldout)
    assert not fold_zero_prediction_moves(heldout, seed=8)
    # and the check is not blind: the same prediction does follow the training targets
    latent, x = latent_features(60, 300, 6)
    folds = assign_folds(60, 4, seed=0)
    watched = np.flatnonzero(folds == 0)[0]
    y = latent[:, 0]
    y2 = np.where(folds == 1, y + 1.0, y)
    assert not math.isclose(heldout(x, y, folds)[watched], heldout(x, y2, folds)[watched], rel_tol=1e-6)


def test_the_leak_check_catches_standardisation_fitted_on_all_videos(monkeypatch):
    real = analysis.gram.standardisation
    monkeypatch.setattr(analysis.gram, "standardisation", lambda x, train: real(x, torch.ones_like(train)))
    assert fold_zero_prediction_moves(heldout)


def test_the_leak_check_catches_alpha_chosen_on_the_test_fold(monkeypatch):
    real = analysis.ridge_cv.fit_predict_fold

    def alpha_by_test_error(kernel, train, test, targets, alphas=DEFAULT_ALPHAS):
        fits = [real(kernel, train, test, targets, alphas=[a]) for a in alphas]
        errors = [((pred - targets[test]) ** 2).mean() for pred, _ in fits]
        return fits[int(np.argmin(errors))]

    monkeypatch.setattr(analysis.ridge_cv, "fit_predict_fold", alpha_by_test_error)
    assert fold_zero_prediction_moves(heldout)


# ----------------------------------------------------------------------------- RDMs and RSA


def test_layer_rdm_is_one_minus_pearson_symmetric_with_zero_diagonal():
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(25, 4, 3, 5)) + rng.normal(size=(25, 1, 1, 1))).astype(np.float16).reshape(25, -1)
    grams = accumulate_grams(chunks(x.astype(np.float32), 7), assign_folds(25, 2, seed=0))
    rdm = correlation_rdm(grams.raw, grams.row_sums, grams.num_columns)
    np.testing.assert_allclose(rdm, 1 - np.corrcoef(x.astype(np.float64)), atol=1e-10)
    assert np.array_equal(rdm, rdm.T) and np.all(np.diag(rdm) == 0)
    assert np.all((rdm >= 0) & (rdm <= 2))


def test_rsa_is_spearman_over_the_upper_triangle():
    values = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    rdm = rating_rdm(values)
    assert np.array_equal(rdm, rdm.T) and np.all(np.diag(rdm) == 0)
    assert rdm[0, 3] == pytest.approx(0.8)
    assert rsa_spearman(rdm, rdm**2) == pytest.approx(1.0)  # monotone transform: same ranks
    other = rating_rdm(np.array([0.9, 0.1, 0.3, 0.2, 0.8]))
    expected = spearman(upper_triangle(rdm), upper_triangle(other))
    assert rsa_spearman(rdm, other) == pytest.approx(expected) and len(upper_triangle(rdm)) == 10
