"""Noise ceiling and human agreement on synthetic ratings of known reliability."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.human_ratings import load_human_ratings
from analysis.reliability import (
    WIDE_NOTE,
    compare_feature,
    compare_with_humans,
    leave_one_out_correlation,
    pairwise_rater_correlation,
    spearman_brown,
    split_half_reliability,
)

VIDEOS, RATERS, SIGNAL_VAR, NOISE_VAR = 1500, 8, 1.0, 4.0


def spearman_of_normal(rho):
    """Spearman correlation of a bivariate normal with Pearson correlation rho."""
    return 6 / math.pi * math.asin(rho / 2)


@pytest.fixture(scope="module")
def panel():
    """Rating = true signal (variance 1) + independent rater noise (variance 4)."""
    rng = np.random.default_rng(0)
    signal = rng.normal(0, math.sqrt(SIGNAL_VAR), VIDEOS)
    ratings = signal[:, None] + rng.normal(0, math.sqrt(NOISE_VAR), (VIDEOS, RATERS))
    index = pd.Index([f"v{i}" for i in range(VIDEOS)], name="video_key")
    return signal, pd.DataFrame(ratings, index=index, columns=[f"s{j}" for j in range(RATERS)])


def test_spearman_brown():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.5, factor=4) == pytest.approx(0.8)
    assert math.isnan(spearman_brown(math.nan))


def test_split_half_reliability_matches_the_analytic_value(panel):
    _, matrix = panel
    # reliability of the mean of k raters: k s^2 / (k s^2 + n^2); a half panel has k / 2 raters
    half = (RATERS / 2) * SIGNAL_VAR / ((RATERS / 2) * SIGNAL_VAR + NOISE_VAR)
    full_pearson = RATERS * SIGNAL_VAR / (RATERS * SIGNAL_VAR + NOISE_VAR)
    assert spearman_brown(half) == pytest.approx(full_pearson)  # the correction is exact for Pearson
    expected = spearman_brown(spearman_of_normal(half))  # ranks of normal data: slightly lower
    got = split_half_reliability(matrix, n_splits=100, seed=0)
    assert got["split_half_splits"] == 100
    assert got["split_half_r"] == pytest.approx(spearman_of_normal(half), abs=0.03)
    assert got["split_half_reliability"] == pytest.approx(expected, abs=0.03)
    # seeded: the same splits give the same number
    assert split_half_reliability(matrix, n_splits=100, seed=0) == got


def test_rater_agreement_matches_the_analytic_values(panel):
    _, matrix = panel
    single = SIGNAL_VAR / (SIGNAL_VAR + NOISE_VAR)  # correlation of two raters
    mean_pair, pairs = pairwise_rater_correlation(matrix)
    assert pairs == RATERS * (RATERS - 1) // 2
    assert mean_pair == pytest.approx(spearman_of_normal(single), abs=0.02)
    # one rater vs the mean of the k - 1 others: cov s^2 over sqrt((s^2 + n^2)(s^2 + n^2 / (k - 1)))
    loo = SIGNAL_VAR / math.sqrt((SIGNAL_VAR + NOISE_VAR) * (SIGNAL_VAR + NOISE_VAR / (RATERS - 1)))
    got, raters = leave_one_out_correlation(matrix)
    assert raters == RATERS and got == pytest.approx(spearman_of_normal(loo), abs=0.02)


@pytest.mark.parametrize("truth_weight", [1.0, 0.5, 0.0])
def test_fraction_of_ceiling_reads_as_correlation_with_the_truth(panel, truth_weight):
    """A model correlating c with the true signal reaches about c of the noise ceiling."""
    signal, matrix = panel
    noise = np.random.default_rng(1).normal(0, 1, VIDEOS)
    c = truth_weight
    pred = c * signal + math.sqrt(1 - c * c) * noise  # corr(pred, signal) = c
    out = compare_feature(matrix, True, {"model": pd.Series(pred, index=matrix.index)}, n_splits=50)
    reliability = out["split_half_reliability"]
    assert out["noise_ceiling"] == pytest.approx(math.sqrt(reliability))
    assert out["model_fraction_of_ceiling"] == pytest.approx(c, abs=0.05)
    # a noise-free model reaches the single raters about as well as sqrt of the single reliability
    single = SIGNAL_VAR / (SIGNAL_VAR + NOISE_VAR)
    assert out["model_to_individual"] == pytest.approx(spearman_of_normal(c * math.sqrt(single)), abs=0.03)
    assert out["n_videos"] == VIDEOS and out["n_raters"] == RATERS and out["ratings_per_video"] == RATERS


def test_sparse_panel_still_estimates_reliability(panel):
    """Raters who each rate a random 60% of videos: about 4.8 ratings per video."""
    _, matrix = panel
    mask = np.random.default_rng(2).random(matrix.shape) < 0.6
    sparse = matrix.where(mask)
    got = split_half_reliability(sparse, n_splits=50)
    k = 0.6 * RATERS  # expected raters per video, so roughly:
    approx = k * SIGNAL_VAR / (k * SIGNAL_VAR + NOISE_VAR)
    assert got["split_half_reliability"] == pytest.approx(approx, abs=0.06)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_compare_with_humans_long_form_hand_checked(tmp_path):
    # two raters, four videos; "indoor" is compared with 1 - p(Outdoor)
    rows = ["subjectID,video_name,question_name,likert_response"]
    r1 = {"a": 1, "b": 2, "c": 4, "d": 5}
    r2 = {"a": 2, "b": 1, "c": 5, "d": 4}
    for s, ratings in (("s1", r1), ("s2", r2)):
        for v, x in ratings.items():
            rows.append(f"{s},{v}.mp4,valence,{x}")
            rows.append(f"{s},{v}.mp4,indoor,{x}")
    human = load_human_ratings(write(tmp_path, "long.csv", "\n".join(rows) + "\n"))
    model = pd.DataFrame(
        {"valence": [0.1, 0.2, 0.3, 0.4], "location": [0.9, 0.8, 0.7, 0.6]}, index=["a", "b", "c", "d", "e"][:4]
    )
    gpt = pd.DataFrame({"valence": [0.4, 0.3, 0.2, 0.1]}, index=["a", "b", "c", "d"])
    report = compare_with_humans(human.ratings, True, model, gpt, n_splits=10)
    v = report["valence"]
    # mean ratings a..d: 1.5, 1.5, 4.5, 4.5 (Likert) -> ranks 1.5, 1.5, 3.5, 3.5 vs model 1..4
    rp, rm = np.array([1, 2, 3, 4.0]), np.array([1.5, 1.5, 3.5, 3.5])
    expected = np.corrcoef(rp, rm)[0, 1]
    assert v["model_vs_mean_human"] == pytest.approx(expected)
    assert v["gpt_vs_mean_human"] == pytest.approx(-expected)
    assert v["model_to_individual"] == pytest.approx(
        0.8
    )  # rater 1 in model order (1.0), rater 2 two pairs swapped (0.6)
    assert v["human_pairwise"] == pytest.approx(0.6)  # r1 vs r2 ranks (1,2,3,4) vs (2,1,4,3)
    assert v["model_vs_gpt"] == pytest.approx(-1.0)
    assert v["n_videos"] == 4 and v["n_raters"] == 2
    loc = report["location"]
    assert loc["compared_as"] == "1 - model output"
    assert loc["model_vs_mean_human"] == pytest.approx(expected)  # 1 - p(Outdoor) rises like valence
    assert "gpt_vs_mean_human" not in loc


def test_compare_with_humans_wide_form_has_no_ceiling(tmp_path):
    human = load_human_ratings(write(tmp_path, "wide.csv", "video_name,arousal,valence\na,1,2\nb,2,3\nc,5,1\nz,3,3\n"))
    model = pd.DataFrame({"arousal": [0.2, 0.3, 0.9], "valence": [0.5, 0.6, 0.1]}, index=["a", "b", "c"])
    report = compare_with_humans(human.ratings, False, model)
    assert report["arousal"]["model_vs_mean_human"] == pytest.approx(1.0)
    assert report["arousal"]["n_videos"] == 3 and report["arousal"]["human_rated_videos"] == 4
    assert report["valence"]["noise_ceiling_note"] == WIDE_NOTE
    assert "noise_ceiling" not in report["valence"] and "model_fraction_of_ceiling" not in report["valence"]
