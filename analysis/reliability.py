"""How well people agree with each other, and how close the model (or GPT) comes to them.

Definitions (all correlations are Spearman, ties sharing their mean rank; one feature at a time;
only videos that the model was evaluated on take part, so the ceiling and the model's
correlation describe the same videos).  Every human-derived value (a rater's rating, a mean
over raters, a split-half mean) and the GPT annotations are ranked after
``utils.metrics.merge_ties``, so ratings equal up to float round-off tie; the model's own
outputs are continuous and ranked as they are.

* **model vs mean human**: correlation over videos of the model's output with the mean
  rating of all raters of that video.
* **model to individual**: for each rater with at least ``min_videos`` rated videos, the
  correlation of the model with that rater's ratings; the plain mean over raters.
* **human pairwise**: for each pair of raters who rated at least ``min_videos`` videos in
  common, their correlation over those videos; the plain mean over pairs.  This is the
  human counterpart of "model to individual": how well one person predicts another.
* **human leave-one-out**: each rater against the mean of all other raters of the same
  videos; the mean over raters.
* **split-half reliability**: raters are split at random into two halves (sizes differ by at
  most one), each video's mean rating is taken within each half, and the two halves' means
  are correlated over the videos both halves rated; the correlation r is corrected to the
  full panel with Spearman-Brown, 2r / (1 + r).  The corrected values of ``n_splits``
  seeded random splits are averaged.  This is the reliability of the mean rating: the
  correlation to expect between the mean ratings of two independent panels of this size.
* **noise ceiling** = sqrt(split-half reliability): the correlation that a model knowing
  the true (noise-free) value of every video would reach with the mean rating, on average.
  A model cannot beat it except by chance, so **fraction of ceiling** = (model vs mean
  human) / ceiling reads as the model's correlation with what people agree on; 1.0 = as
  good as the ratings allow.  (The reliability itself is *not* used as the ceiling: a
  perfect model's expected correlation with a noisy mean is its square root, which is
  larger, so "fraction of reliability" overstates any model, up to 1/sqrt(reliability).)

Reading them side by side: "model to individual" may exceed "human pairwise" without the
model being superhuman (a noise-free predictor correlates with one rater at about the square
root of two raters' correlation); "human leave-one-out" is how well a typical rater predicts
the others' mean, the natural yardstick for "model vs mean human".

Only the long form (one rating per person) supports the rater-level quantities; from a
wide-form table of means only "vs mean human" can be computed, and the rest is reported as
unavailable.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from utils.metrics import merge_ties, spearman

WIDE_NOTE = "unavailable: the human table holds mean ratings only (wide form), not individual ratings"


def rating_matrix(ratings: pd.DataFrame, task: str) -> pd.DataFrame:
    """Videos x raters matrix of one feature's ratings (NaN = not rated; a repeated rating averaged)."""
    rows = ratings[ratings["task"] == task]
    matrix = rows.pivot_table(index="video_key", columns="subject", values="rating", aggfunc="mean")
    return pd.DataFrame(merge_ties(matrix.to_numpy(dtype=np.float64)), index=matrix.index, columns=matrix.columns)


def spearman_brown(r: float, factor: float = 2.0) -> float:
    """Reliability of a panel ``factor`` times as large as one with reliability ``r``."""
    if not math.isfinite(r) or r <= -1:
        return math.nan
    return factor * r / (1 + (factor - 1) * r)


def split_half_reliability(
    matrix: pd.DataFrame, n_splits: int = 100, seed: int = 0, min_videos: int = 3
) -> dict[str, float]:
    """Mean Spearman-Brown corrected split-half correlation over ``n_splits`` random splits."""
    values = matrix.to_numpy(dtype=np.float64)
    n_raters = values.shape[1]
    nan = {
        "split_half_r": math.nan,
        "split_half_reliability": math.nan,
        "split_half_sd": math.nan,
        "split_half_splits": 0,
    }
    if n_raters < 2:
        return nan
    rng = np.random.default_rng(seed)
    raw, corrected = [], []
    for _ in range(n_splits):
        order = rng.permutation(n_raters)
        half_a, half_b = order[: n_raters // 2], order[n_raters // 2 :]
        with np.errstate(invalid="ignore"), _quiet_nanmean():
            mean_a = np.nanmean(values[:, half_a], axis=1)
            mean_b = np.nanmean(values[:, half_b], axis=1)
        both = np.isfinite(mean_a) & np.isfinite(mean_b)
        if both.sum() < min_videos:
            continue
        r = spearman(merge_ties(mean_a[both]), merge_ties(mean_b[both]))
        if math.isfinite(r):
            raw.append(r)
            corrected.append(spearman_brown(r))
    if not corrected:
        return nan
    return {
        "split_half_r": float(np.mean(raw)),
        "split_half_reliability": float(np.nanmean(corrected)),
        "split_half_sd": float(np.nanstd(corrected)),
        "split_half_splits": len(corrected),
    }


def pairwise_rater_correlation(matrix: pd.DataFrame, min_videos: int = 3) -> tuple[float, int]:
    """(mean correlation over rater pairs with >= ``min_videos`` common videos, number of pairs)."""
    if matrix.shape[1] < 2:
        return math.nan, 0
    corr = matrix.corr(method="spearman", min_periods=min_videos).to_numpy()
    upper = corr[np.triu_indices_from(corr, k=1)]
    upper = upper[np.isfinite(upper)]
    return (float(upper.mean()), int(len(upper))) if len(upper) else (math.nan, 0)


def leave_one_out_correlation(matrix: pd.DataFrame, min_videos: int = 3) -> tuple[float, int]:
    """(mean over raters of corr(rater, mean of the other raters), number of raters used)."""
    values = matrix.to_numpy(dtype=np.float64)
    rated = np.isfinite(values)
    totals, counts = np.nansum(values, axis=1), rated.sum(axis=1)
    found = []
    for j in range(values.shape[1]):
        others = counts - 1
        ok = rated[:, j] & (others > 0)
        if ok.sum() < min_videos:
            continue
        rest = (totals[ok] - values[ok, j]) / others[ok]
        r = spearman(values[ok, j], merge_ties(rest))
        if math.isfinite(r):
            found.append(r)
    return (float(np.mean(found)), len(found)) if found else (math.nan, 0)


def correlation_to_individuals(pred: pd.Series, matrix: pd.DataFrame, min_videos: int = 3) -> tuple[float, int]:
    """(mean over raters of corr(prediction, rater), number of raters with >= ``min_videos`` videos)."""
    p = pred.reindex(matrix.index).to_numpy(dtype=np.float64)
    found = []
    for column in matrix.columns:
        r_values = matrix[column].to_numpy(dtype=np.float64)
        ok = np.isfinite(p) & np.isfinite(r_values)
        if ok.sum() < min_videos:
            continue
        r = spearman(p[ok], r_values[ok])
        if math.isfinite(r):
            found.append(r)
    return (float(np.mean(found)), len(found)) if found else (math.nan, 0)


def fraction_of_ceiling(r: float, ceiling: float) -> float:
    """A correlation with the mean rating as a fraction of the noise ceiling (NaN without a ceiling)."""
    return r / ceiling if math.isfinite(ceiling) and ceiling > 0 else math.nan


def compare_feature(
    matrix: pd.DataFrame,
    individual: bool,
    predictors: Mapping[str, pd.Series],
    n_splits: int = 100,
    seed: int = 0,
    min_videos: int = 3,
) -> dict:
    """Human agreement and each predictor's agreement with people, for one feature.

    ``matrix``: videos x raters (or one column of means when ``individual`` is False), already
    restricted to the compared videos.  ``predictors``: name (``model``, ``gpt``) -> values
    per video (already oriented like the human feature).
    """
    with _quiet_nanmean():
        mean_rating = matrix.mean(axis=1, skipna=True)
    mean_rating = pd.Series(merge_ties(mean_rating.to_numpy(dtype=np.float64)), index=mean_rating.index)
    out: dict = {"n_videos": int(mean_rating.notna().sum())}
    if individual:
        out["n_raters"] = int(matrix.shape[1])
        out["ratings_per_video"] = float(matrix.notna().sum(axis=1).mean()) if len(matrix) else math.nan
        out["human_pairwise"], out["human_pairs"] = pairwise_rater_correlation(matrix, min_videos)
        out["human_leave_one_out"], _ = leave_one_out_correlation(matrix, min_videos)
        out.update(split_half_reliability(matrix, n_splits, seed, min_videos))
        rel = out["split_half_reliability"]
        out["noise_ceiling"] = math.sqrt(rel) if math.isfinite(rel) and rel > 0 else math.nan
    else:
        out["noise_ceiling_note"] = WIDE_NOTE
    for name, pred in predictors.items():
        p = pred.reindex(mean_rating.index).astype(np.float64)
        out[f"{name}_n_videos"] = int((p.notna() & mean_rating.notna()).sum())
        r = spearman(p.to_numpy(), mean_rating.to_numpy())
        out[f"{name}_vs_mean_human"] = r
        if individual:
            out[f"{name}_to_individual"], _ = correlation_to_individuals(p, matrix, min_videos)
            out[f"{name}_fraction_of_ceiling"] = fraction_of_ceiling(r, out["noise_ceiling"])
    if "model" in predictors and "gpt" in predictors:
        out["model_vs_gpt"] = spearman(
            predictors["model"].reindex(mean_rating.index).to_numpy(dtype=np.float64),
            predictors["gpt"].reindex(mean_rating.index).to_numpy(dtype=np.float64),
        )
    return out


def compare_with_humans(
    ratings: pd.DataFrame,
    individual: bool,
    model: pd.DataFrame,
    gpt: pd.DataFrame | None = None,
    n_splits: int = 100,
    seed: int = 0,
    min_videos: int = 3,
) -> dict[str, dict]:
    """Per feature: the human and model (and GPT) agreement numbers of :func:`compare_feature`.

    ``ratings``: long table with ``subject, video_key, task, direction, rating`` (as
    ``analysis.human_ratings.HumanRatings.ratings``).  ``model`` / ``gpt``: index video_key,
    one column per model task with values in the model's own orientation (for ``location``
    p(Outdoor) / 1 = Outdoor); features with direction -1 are compared as 1 - value.
    Only videos with a model value take part.
    """
    report = {}
    for task in dict.fromkeys(ratings["task"]):
        rows = ratings[ratings["task"] == task]
        direction = int(rows["direction"].iloc[0])
        if task not in model.columns:
            report[task] = {"question": str(rows["question"].iloc[0]), "note": "the model has no output for this task"}
            continue
        model_values = model[task].dropna()
        matrix = rating_matrix(rows, task)
        matrix = matrix.loc[matrix.index.intersection(model_values.index)]
        predictors = {"model": _orient(model_values, direction)}
        if gpt is not None and task in gpt.columns:
            gpt_values = gpt[task].dropna()
            gpt_values = pd.Series(merge_ties(gpt_values.to_numpy(dtype=np.float64)), index=gpt_values.index)
            predictors["gpt"] = _orient(gpt_values, direction)
        entry = {
            "question": str(rows["question"].iloc[0]),
            "compared_as": "1 - model output" if direction < 0 else "model output",
            "human_rated_videos": int(rows["video_key"].nunique()),
        }
        entry.update(compare_feature(matrix, individual, predictors, n_splits, seed, min_videos))
        report[task] = entry
    return report


def _orient(values: pd.Series, direction: int) -> pd.Series:
    return 1.0 - values if direction < 0 else values


@contextlib.contextmanager
def _quiet_nanmean():
    """Silence numpy's "mean of empty slice" warning: an unrated video is expected, not an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield
