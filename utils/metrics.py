"""Per-task metrics from gathered predictions (NumPy/pandas; no SciPy needed).

Inputs are whole-set arrays (the loop gathers every rank's predictions exactly once first), so
the numbers do not depend on the world size.  Missing targets (NaN, or -1 for classes) are
excluded per task; a metric that is undefined (fewer than two valid pairs, a constant input)
is NaN rather than an exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from utils.tasks import CATEGORICAL_TASKS, PEOPLECOUNT_CLASSES, SCORE_FEATURES


def _valid_pairs(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target lengths differ: {pred.shape} vs {target.shape}")
    ok = np.isfinite(target) & np.isfinite(pred)
    return pred[ok], target[ok]


def pearson(pred, target) -> float:
    p, t = _valid_pairs(pred, target)
    if len(p) < 2 or np.std(p) == 0 or np.std(t) == 0:
        return math.nan
    return float(np.corrcoef(p, t)[0, 1])


# Ratings are discrete (annotation scores in steps of 0.1, Likert ratings and their means), but
# they reach a rank correlation after float arithmetic: stored as float32, subtracted for an RDM,
# averaged over raters.  Values equal in exact arithmetic then differ by round-off (|0.6 - 0.4|
# and |0.8 - 0.6| in float32 are 2e-8 apart) and would get different ranks instead of sharing
# one.  Round-off of values in [0, 1] after a few operations stays below 1e-7; distinct ratings
# (and distinct differences or means of them) lie far more than 1e-6 apart.
TIE_TOLERANCE = 1e-6


def merge_ties(values, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """A float64 copy of ``values`` (any shape) in which each run of finite values whose sorted
    neighbours lie within ``tolerance`` of each other takes the run's smallest value, so values
    that are equal up to round-off tie when ranked.  NaN stays NaN.

    Runs are found from the gaps between sorted values rather than by rounding to a grid of
    step ``tolerance``: rounding would still split two equal values that straddle a grid point.
    Apply it to values derived from ratings, not to a model's continuous outputs, whose
    distinct values may lie closer together than the tolerance."""
    out = np.array(values, dtype=np.float64)
    flat = out.reshape(-1)
    finite = np.flatnonzero(np.isfinite(flat))
    if len(finite) == 0:
        return out
    order = finite[np.argsort(flat[finite], kind="stable")]
    ordered = flat[order]
    starts = np.r_[True, np.diff(ordered) > tolerance]
    flat[order] = ordered[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    return out


def spearman(pred, target) -> float:
    """Pearson correlation of average ranks (ties share their mean rank)."""
    p, t = _valid_pairs(pred, target)
    if len(p) < 2:
        return math.nan
    return pearson(pd.Series(p).rank().to_numpy(), pd.Series(t).rank().to_numpy())


# Bootstrap resamples for a validation Spearman's standard error: the SE estimate itself is then
# within a few percent (relative error about 1/sqrt(2 x resamples)), which is all a reader needs to
# tell a feature's signal from noise, at a cost that stays small next to the validation pass.
SE_RESAMPLES = 500
SE_SEED = 0  # fixed: the same predictions always get the same standard error
SE_CHUNK_VALUES = 4_000_000  # resampled values ranked at once (bounds the memory of large sets)


def _row_average_ranks(codes: np.ndarray, num_codes: int) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) within each row of an integer array
    whose values lie in [0, num_codes): per row, the count of each value and of all smaller ones
    (counting, not sorting, so it stays linear in the array's size)."""
    rows = codes.shape[0]
    keys = codes + num_codes * np.arange(rows)[:, None]
    counts = np.bincount(keys.reshape(-1), minlength=rows * num_codes).reshape(rows, num_codes)
    below = np.cumsum(counts, axis=1) - counts
    return np.take_along_axis(below, codes, axis=1) + (np.take_along_axis(counts, codes, axis=1) + 1) / 2.0


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    dx = x - x.mean(axis=1, keepdims=True)
    dy = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (dx * dy).sum(axis=1) / np.where(denominator > 0, denominator, 1.0), np.nan)


def bootstrap_spearmans(pred, target, resamples: int = SE_RESAMPLES, seed: int = SE_SEED) -> np.ndarray:
    """Spearman of each of ``resamples`` bootstrap resamples of the valid (pred, target) pairs:
    each resample draws n pairs with replacement (``numpy.random.default_rng(seed)``, one row of
    ``integers(0, n, (resamples, n))``), and is ranked on its own (ties share their mean rank), as
    ``spearman`` would rank it.  NaN for a resample whose ranks are constant; empty below 2 pairs."""
    p, t = _valid_pairs(pred, target)
    n = len(p)
    if n < 2:
        return np.zeros(0)
    # Ranking a resample only needs the order of the values, so integer codes (equal values share
    # a code) stand in for them and let one sort rank many resamples at once.
    p_codes, t_codes = np.unique(p, return_inverse=True)[1], np.unique(t, return_inverse=True)[1]
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    out = np.empty(resamples)
    step = max(1, SE_CHUNK_VALUES // n)
    for start in range(0, resamples, step):
        rows = draws[start : start + step]
        out[start : start + len(rows)] = _row_pearson(
            _row_average_ranks(p_codes[rows], n), _row_average_ranks(t_codes[rows], n)
        )
    return out


def spearman_se(pred, target, resamples: int = SE_RESAMPLES, seed: int = SE_SEED) -> float:
    """Bootstrap standard error of ``spearman(pred, target)``: the standard deviation of the
    resamples' Spearman (``bootstrap_spearmans``), resampling clips with a fixed seed.  NaN below
    3 valid pairs or when no resample is defined."""
    boot = bootstrap_spearmans(pred, target, resamples, seed)
    boot = boot[np.isfinite(boot)]
    if len(_valid_pairs(pred, target)[0]) < 3 or len(boot) < 2:
        return math.nan
    return float(np.std(boot, ddof=1))


def mae(pred, target) -> float:
    p, t = _valid_pairs(pred, target)
    return float(np.mean(np.abs(p - t))) if len(p) else math.nan


def rmse(pred, target) -> float:
    p, t = _valid_pairs(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2))) if len(p) else math.nan


def r2(pred, target) -> float:
    p, t = _valid_pairs(pred, target)
    if len(p) < 2:
        return math.nan
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0:
        return math.nan
    return 1.0 - float(np.sum((p - t) ** 2)) / ss_tot


def accuracy(pred_class, target_class) -> float:
    pred_class = np.asarray(pred_class).reshape(-1)
    target_class = np.asarray(target_class).reshape(-1)
    ok = target_class >= 0
    return float(np.mean(pred_class[ok] == target_class[ok])) if ok.any() else math.nan


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def task_metrics(logits: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], tasks) -> dict[str, float]:
    """Validation metrics from whole-set logits and targets, named ``<task>/<metric>``.

    Scores: Spearman with its bootstrap standard error (``spearman_se``), Pearson, MAE of
    sigmoid(score logit); ``n`` valid targets.
    peoplecount: accuracy of the argmax class.  location: accuracy at p(Outdoor) >= 0.5.
    ``mean_spearman`` averages the score tasks' Spearman (ignoring undefined ones).
    """
    out: dict[str, float] = {}
    spearmans = []
    for task in tasks:
        if task in SCORE_FEATURES:
            pred = sigmoid(logits[f"{task}_score"])
            target = merge_ties(targets[f"{task}_score"])
            out[f"{task}/spearman"] = spearman(pred, target)
            out[f"{task}/spearman_se"] = spearman_se(pred, target)
            out[f"{task}/pearson"] = pearson(pred, target)
            out[f"{task}/mae"] = mae(pred, target)
            out[f"{task}/n"] = float(np.isfinite(target).sum())
            if not math.isnan(out[f"{task}/spearman"]):
                spearmans.append(out[f"{task}/spearman"])
        elif task == "peoplecount":
            target = np.asarray(targets["peoplecount"]).astype(np.int64)
            out["peoplecount/accuracy"] = accuracy(np.argmax(logits["peoplecount"], axis=1), target)
            out["peoplecount/n"] = float((target >= 0).sum())
        elif task == "location":
            target = np.asarray(targets["location_score"], dtype=np.float64)
            ok = np.isfinite(target)
            pred = (sigmoid(logits["location_score"]) >= 0.5).astype(np.int64)
            out["location/accuracy"] = accuracy(np.where(ok, pred, 0), np.where(ok, target, -1).astype(np.int64))
            out["location/n"] = float(ok.sum())
        else:
            raise ValueError(f"unknown task {task!r} (known: {SCORE_FEATURES + CATEGORICAL_TASKS})")
    out["mean_spearman"] = float(np.mean(spearmans)) if spearmans else math.nan
    return out


# ------------------------------------------------------------------------------------------------
# Evaluation metrics (evaluate.py): confidence-weighted score metrics, ROC AUC, macro-F1,
# confusion matrix, and the per-task report built from per-video probabilities.
#
# Weights are the annotated confidences.  Every weighted metric treats an integer weight w as
# w copies of the pair, so weight 2 means exactly "counted twice" (the tests check this against
# the unweighted functions on repeated data).  Pairs with weight 0 (or NaN) drop out.
# ------------------------------------------------------------------------------------------------
def _valid_weighted(pred, target, weight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    weight = np.asarray(weight, dtype=np.float64).reshape(-1)
    if not pred.shape == target.shape == weight.shape:
        raise ValueError(f"prediction, target and weight lengths differ: {pred.shape}, {target.shape}, {weight.shape}")
    if np.any(weight < 0):
        raise ValueError("weights must be >= 0 (they are annotated confidences in [0, 1])")
    ok = np.isfinite(pred) & np.isfinite(target) & np.isfinite(weight) & (weight > 0)
    return pred[ok], target[ok], weight[ok]


def weighted_pearson(pred, target, weight) -> float:
    p, t, w = _valid_weighted(pred, target, weight)
    if len(p) < 2:
        return math.nan
    w = w / w.sum()
    dp, dt = p - np.sum(w * p), t - np.sum(w * t)
    var_p, var_t = np.sum(w * dp * dp), np.sum(w * dt * dt)
    if var_p <= 0 or var_t <= 0:
        return math.nan
    return float(np.sum(w * dp * dt) / math.sqrt(var_p * var_t))


def weighted_ranks(values, weight) -> np.ndarray:
    """Rank of each value in the weighted sample: the weight of all smaller values plus half the
    weight of its tie group (the mid-point of the group's share).  For integer weights this is
    the average rank in the data with each value repeated ``weight`` times, up to a constant
    shift (1/2), which correlations ignore."""
    values = np.asarray(values, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_w = values[order], weight[order]
    # tie groups in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    group_w = np.add.reduceat(sorted_w, starts)
    below = np.cumsum(group_w) - group_w
    group_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(values)]))
    ranks = np.empty_like(values)
    ranks[order] = below[group_of] + group_w[group_of] / 2.0
    return ranks


def weighted_spearman(pred, target, weight) -> float:
    """Weighted Pearson correlation of the weighted ranks (see ``weighted_ranks``)."""
    p, t, w = _valid_weighted(pred, target, weight)
    if len(p) < 2:
        return math.nan
    return weighted_pearson(weighted_ranks(p, w), weighted_ranks(t, w), w)


def weighted_mae(pred, target, weight) -> float:
    p, t, w = _valid_weighted(pred, target, weight)
    return float(np.sum(w * np.abs(p - t)) / w.sum()) if len(p) else math.nan


def weighted_rmse(pred, target, weight) -> float:
    p, t, w = _valid_weighted(pred, target, weight)
    return float(np.sqrt(np.sum(w * (p - t) ** 2) / w.sum())) if len(p) else math.nan


def weighted_r2(pred, target, weight) -> float:
    """1 - sum w (p - t)^2 / sum w (t - weighted mean of t)^2."""
    p, t, w = _valid_weighted(pred, target, weight)
    if len(p) < 2:
        return math.nan
    ss_tot = float(np.sum(w * (t - np.sum(w * t) / w.sum()) ** 2))
    if ss_tot <= 0:
        return math.nan
    return 1.0 - float(np.sum(w * (p - t) ** 2)) / ss_tot


def roc_auc(score, label) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula (ties count one half).

    ``label``: 1 = positive, 0 = negative, NaN = unknown (dropped).  NaN when a class is absent.
    """
    s, y = _valid_pairs(score, label)
    if np.any((y != 0) & (y != 1)):
        raise ValueError("roc_auc labels must be 0 or 1 (NaN = unknown)")
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(s).rank().to_numpy()  # average ranks: a tied pair contributes 1/2
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def confusion_matrix(pred_class, target_class, num_classes: int) -> list[list[int]]:
    """Counts, rows = annotated class, columns = predicted class; targets < 0 are unknown."""
    pred_class = np.asarray(pred_class, dtype=np.int64).reshape(-1)
    target_class = np.asarray(target_class, dtype=np.int64).reshape(-1)
    ok = target_class >= 0
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (target_class[ok], pred_class[ok]), 1)
    return matrix.tolist()


def macro_f1(pred_class, target_class) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN) over the classes that occur in
    the known targets or in the predictions for them (as scikit-learn's default); NaN if none."""
    pred_class = np.asarray(pred_class, dtype=np.int64).reshape(-1)
    target_class = np.asarray(target_class, dtype=np.int64).reshape(-1)
    ok = target_class >= 0
    p, t = pred_class[ok], target_class[ok]
    classes = np.union1d(p, t)
    if len(classes) == 0:
        return math.nan
    scores = []
    for c in classes:
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    return float(np.mean(scores))


def score_metrics(pred, target, confidence=None) -> dict[str, float]:
    """Spearman, Pearson, MAE, RMSE, R^2 (and the confidence-weighted ones) of one score task.

    Annotated scores equal up to round-off share one rank (``merge_ties``)."""
    target = merge_ties(target)
    out = {
        "n": float(len(_valid_pairs(pred, target)[0])),  # valid targets of videos with a prediction
        "spearman": spearman(pred, target),
        "pearson": pearson(pred, target),
        "mae": mae(pred, target),
        "rmse": rmse(pred, target),
        "r2": r2(pred, target),
    }
    if confidence is not None:
        _, _, w = _valid_weighted(pred, target, confidence)
        out.update(
            {
                "weighted_n": float(len(w)),
                "weight_sum": float(w.sum()),
                "weighted_spearman": weighted_spearman(pred, target, confidence),
                "weighted_pearson": weighted_pearson(pred, target, confidence),
                "weighted_mae": weighted_mae(pred, target, confidence),
                "weighted_rmse": weighted_rmse(pred, target, confidence),
                "weighted_r2": weighted_r2(pred, target, confidence),
            }
        )
    return out


def evaluation_metrics(probs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], tasks) -> dict[str, dict]:
    """The evaluation report from whole-set per-video *probabilities* (not logits).

    ``probs``: output name -> probabilities (sigmoid / softmax already applied, views already
    averaged); rows of videos that failed to load are NaN and drop out like missing targets.
    Returns ``{task: {metric: value}}`` plus ``"overall"``:
    scores: n, spearman, pearson, mae, rmse, r2 and weighted_* (weights = annotated confidence);
    peoplecount: n, accuracy, macro_f1, confusion_matrix (5x5 list, rows = annotated class),
    classes; location: n, accuracy (p(Outdoor) >= 0.5), roc_auc (of p(Outdoor)).
    """
    report: dict[str, dict] = {}
    for task in tasks:
        if task in SCORE_FEATURES:
            pred = np.asarray(probs[f"{task}_score"], dtype=np.float64)
            conf = targets.get(f"{task}_confidence")
            report[task] = score_metrics(pred, targets[f"{task}_score"], conf)
        elif task == "peoplecount":
            p = np.asarray(probs["peoplecount"], dtype=np.float64)
            ok_pred = np.all(np.isfinite(p), axis=1)
            target = np.where(ok_pred, np.asarray(targets["peoplecount"]).astype(np.int64), -1)
            pred_class = np.argmax(np.where(ok_pred[:, None], p, 0.0), axis=1)
            report[task] = {
                "n": float((target >= 0).sum()),
                "accuracy": accuracy(pred_class, target),
                "macro_f1": macro_f1(pred_class, target),
                "confusion_matrix": confusion_matrix(pred_class, target, p.shape[1]),
                "classes": list(PEOPLECOUNT_CLASSES)[: p.shape[1]],
            }
        elif task == "location":
            p_out = np.asarray(probs["location_score"], dtype=np.float64)
            target = np.asarray(targets["location_score"], dtype=np.float64)
            target = np.where(np.isfinite(p_out), target, np.nan)
            ok = np.isfinite(target)
            pred_class = (np.nan_to_num(p_out) >= 0.5).astype(np.int64)
            report[task] = {
                "n": float(ok.sum()),
                "accuracy": accuracy(pred_class, np.where(ok, target, -1).astype(np.int64)),
                "roc_auc": roc_auc(p_out, target),
            }
        else:
            raise ValueError(f"unknown task {task!r} (known: {SCORE_FEATURES + CATEGORICAL_TASKS})")
    spearmans = [report[t]["spearman"] for t in tasks if t in SCORE_FEATURES]
    weighted = [
        report[t]["weighted_spearman"] for t in tasks if t in SCORE_FEATURES and "weighted_spearman" in report[t]
    ]
    report["overall"] = {
        "mean_spearman": _nanmean(spearmans),
        "mean_weighted_spearman": _nanmean(weighted),
    }
    return report


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan
