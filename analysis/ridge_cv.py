"""k-fold cross-validated ridge regression from per-fold kernels, with α chosen inside each fold.

The model for fold f is fitted on the videos outside f only:

* features standardised with those videos' statistics (already in the kernel, see
  ``analysis.gram``), then centred again on the videos that have this target, so the
  intercept is unpenalised and equals the training mean of the target;
* α chosen from ``alphas`` by efficient leave-one-out over the training videos: one
  eigendecomposition K = U Λ U^T of the centred training kernel gives, for every α, the hat
  matrix H = 11^T/m + U Λ(Λ + α)^-1 U^T and the exact LOO residuals (y - ŷ)_i / (1 - H_ii)
  (the standardisation is held fixed within the fold);
* predictions for the test videos of f: ȳ + K_test,train U (Λ + α)^-1 U^T (y - ȳ).

So no value, target or statistic of a test fold enters its own prediction (tested with a
deliberately leaky variant).  ``alphas`` are relative: each is multiplied by trace(K)/m, the
mean squared norm of a centred training video (≈ the number of standardised columns), so one
grid suits a 64-wide and a million-wide layer.  Kernel ridge with a linear kernel is ridge
regression on the features; with N ≪ D it costs N^3 instead of D^3.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-4.0, 4.01, 0.5))
MIN_TRAIN = 3


def assign_folds(n: int, k: int, seed: int) -> np.ndarray:
    """Fold 0 .. k-1 for each of n videos: a seeded permutation dealt round-robin (sizes differ by ≤ 1)."""
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= folds <= videos, got {k} folds for {n} videos")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.empty(n, dtype=np.int64)
    folds[order] = np.arange(n) % k
    return folds


def centred_blocks(kernel: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train x train and test x train blocks, centred on the training videos' mean feature vector."""
    k_train = kernel[np.ix_(train, train)]
    k_test = kernel[np.ix_(test, train)]
    row_mean = k_train.mean(axis=1)
    grand = row_mean.mean()
    k_train = k_train - row_mean[:, None] - row_mean[None, :] + grand
    k_test = k_test - k_test.mean(axis=1)[:, None] - row_mean[None, :] + grand
    return k_train, k_test


def loo_mse(eigvals: np.ndarray, eigvecs: np.ndarray, yc: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """(len(alphas), targets) mean squared leave-one-out residual of centred targets ``yc``."""
    m = len(eigvals)
    proj = eigvecs.T @ yc
    squared = eigvecs**2
    out = np.empty((len(alphas), yc.shape[1]))
    for i, alpha in enumerate(alphas):
        shrink = eigvals / (eigvals + alpha)
        fitted = eigvecs @ (shrink[:, None] * proj)
        leverage = squared @ shrink + 1.0 / m
        residual = (yc - fitted) / np.maximum(1.0 - leverage, 1e-12)[:, None]
        out[i] = (residual**2).mean(axis=0)
    return out


def select_alpha(k_train: np.ndarray, y_train: np.ndarray, alphas) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per target: the relative α with the smallest LOO error on the training videos.

    Returns (chosen relative α per target, eigenvalues, eigenvectors, scale)."""
    eigvals, eigvecs = np.linalg.eigh(k_train)
    eigvals = np.clip(eigvals, 0.0, None)
    scale = float(eigvals.sum() / len(eigvals))
    relative = np.asarray(alphas, dtype=np.float64)
    yc = y_train - y_train.mean(axis=0)
    errors = loo_mse(eigvals, eigvecs, yc, relative * scale)
    return relative[np.argmin(errors, axis=0)], eigvals, eigvecs, scale


def fit_predict_fold(
    kernel: np.ndarray, train: np.ndarray, test: np.ndarray, targets: np.ndarray, alphas=DEFAULT_ALPHAS
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (len(test), t) for the test videos and the relative α chosen per target.

    ``targets``: (N, t), finite for every video in ``train`` and ``test``."""
    k_train, k_test = centred_blocks(kernel, train, test)
    y = targets[train]
    mean = y.mean(axis=0)
    chosen, eigvals, eigvecs, scale = select_alpha(k_train, y, alphas)
    if scale <= 0:  # no usable column: the best linear prediction is the training mean
        return np.broadcast_to(mean, (len(test), y.shape[1])).copy(), np.full(y.shape[1], math.nan)
    proj = eigvecs.T @ (y - mean)
    coef = eigvecs @ (proj / (eigvals[:, None] + chosen[None, :] * scale))
    return mean + k_test @ coef, chosen


def cross_validated_ridge(
    fold_kernels: np.ndarray, folds: np.ndarray, targets: np.ndarray, alphas=DEFAULT_ALPHAS, min_train: int = MIN_TRAIN
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out predictions (N, t) (NaN where a video has no target) and the relative α per fold
    and target (folds, t) (NaN where a fold was skipped: no test video or < ``min_train`` training videos).

    Targets that are present on the same videos share one eigendecomposition per fold."""
    targets = np.asarray(targets, dtype=np.float64)
    k = fold_kernels.shape[0]
    predictions = np.full(targets.shape, math.nan)
    chosen = np.full((k, targets.shape[1]), math.nan)
    present = np.isfinite(targets)
    groups: dict[bytes, list[int]] = {}
    for j in range(targets.shape[1]):
        groups.setdefault(present[:, j].tobytes(), []).append(j)
    for columns in groups.values():
        rated = present[:, columns[0]]
        for f in range(k):
            train = np.flatnonzero(rated & (folds != f))
            test = np.flatnonzero(rated & (folds == f))
            if len(test) == 0 or len(train) < min_train:
                continue
            pred, alpha = fit_predict_fold(fold_kernels[f], train, test, targets[:, columns], alphas)
            predictions[np.ix_(test, columns)] = pred
            chosen[f, columns] = alpha
    return predictions, chosen


def fold_mean_correlation(
    predictions: np.ndarray, targets: np.ndarray, folds: np.ndarray, correlation, min_videos: int = 3
) -> tuple[float, list[float]]:
    """(mean over folds, per fold) of ``correlation(prediction, target)`` within each fold's test videos.

    Why not one correlation over all held-out predictions pooled: each fold's predictions carry
    its own training mean, which is low where the fold's held-out targets are high, so pooled
    predictions of a strongly shrunk (uninformative) model correlate *negatively* with the
    targets: -0.14 on average over 200 simulated null data sets of 80 videos in 5 folds, where
    this per-fold mean gave 0.000 (± 0.012).  Within a fold that mean is one constant and drops
    out.  Folds with fewer than ``min_videos`` predicted videos give NaN."""
    per_fold = []
    for f in range(int(folds.max()) + 1):
        ok = (folds == f) & np.isfinite(predictions) & np.isfinite(targets)
        per_fold.append(correlation(predictions[ok], targets[ok]) if ok.sum() >= min_videos else math.nan)
    finite = [r for r in per_fold if math.isfinite(r)]
    return (float(np.mean(finite)) if finite else math.nan), per_fold
