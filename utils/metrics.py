"""Per-task metrics from gathered predictions (NumPy/pandas; no SciPy needed).

Inputs are whole-set arrays (the loop gathers every rank's predictions exactly once first), so
the numbers do not depend on the world size.  Missing targets (NaN, or -1 for classes) are
excluded per task; a metric that is undefined (fewer than two valid pairs, a constant input)
is NaN rather than an exception.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from utils.tasks import CATEGORICAL_TASKS, SCORE_FEATURES


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


def spearman(pred, target) -> float:
    """Pearson correlation of average ranks (ties share their mean rank)."""
    p, t = _valid_pairs(pred, target)
    if len(p) < 2:
        return math.nan
    return pearson(pd.Series(p).rank().to_numpy(), pd.Series(t).rank().to_numpy())


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


def task_metrics(logits: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
                 tasks) -> dict[str, float]:
    """Validation metrics from whole-set logits and targets, named ``<task>/<metric>``.

    Scores: Spearman, Pearson, MAE of sigmoid(score logit); ``n`` valid targets.
    peoplecount: accuracy of the argmax class.  location: accuracy at p(Outdoor) >= 0.5.
    ``mean_spearman`` averages the score tasks' Spearman (ignoring undefined ones).
    """
    out: dict[str, float] = {}
    spearmans = []
    for task in tasks:
        if task in SCORE_FEATURES:
            pred = sigmoid(logits[f"{task}_score"])
            target = np.asarray(targets[f"{task}_score"], dtype=np.float64)
            out[f"{task}/spearman"] = spearman(pred, target)
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
