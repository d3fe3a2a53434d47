"""The analysis numbers equal other people's code on small generated data with tied, discrete
ratings and NaN-masked targets: scipy.stats for every correlation, scikit-learn's
RidgeCV(alpha_per_target=True) for the encoding model (same folds, same standardisation),
scipy's correlation distance for the layer RDMs.  scipy and scikit-learn come with MLflow
(pinned in requirements-dev.txt); the project's own code never imports them."""

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from align_fixtures import write_feature_dir
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.metrics import f1_score, mean_absolute_error, r2_score, roc_auc_score

import align_features
from analysis.gram import RELATIVE_SD_FLOOR
from analysis.human_ratings import load_human_ratings
from analysis.reliability import compare_with_humans
from analysis.rsa import rating_rdm, rsa_spearman, upper_triangle
from utils.metrics import TIE_TOLERANCE, evaluation_metrics, merge_ties

N = 40


def scipy_spearman(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


# --------------------------------------------------------------------------- ties


def test_rating_rdm_ties_hold_and_rsa_equals_scipy_on_the_exact_gaps():
    # hand-made scores in tenths, stored as float32 as build_targets returns them: 0.2 apart occurs
    # as |0.6 - 0.4|, |0.8 - 0.6|, |0.3 - 0.1| ... which float arithmetic makes slightly different
    tenths = np.array([0, 2, 4, 6, 8, 10, 3, 5, 7, 1, 9, 6, 4])
    ratings = (tenths / 10).astype(np.float32)
    exact = pdist(tenths[:, None], "cityblock")  # integer gaps: ties are exact
    gaps = upper_triangle(rating_rdm(ratings))
    assert len(np.unique(gaps)) == len(np.unique(exact)) == 11
    assert np.array_equal(rankdata(gaps), rankdata(exact))
    x = np.random.default_rng(0).normal(size=(len(tenths), 20)) + tenths[:, None] * 0.3
    layer = pdist(x, "correlation")
    assert rsa_spearman(squareform(layer), rating_rdm(ratings)) == pytest.approx(
        spearmanr(layer, exact).statistic, abs=1e-12
    )


def test_merge_ties_joins_round_off_but_not_distinct_values():
    values = np.array([0.2, 0.2 + 3e-8, np.nan, 0.1 + 0.1 + 1e-16, 0.3, 0.3 - 2e-7, 0.5])
    merged = merge_ties(values)
    assert np.isnan(merged[2]) and np.isnan(values[2])
    assert merged[0] == merged[1] == merged[3] and merged[4] == merged[5]
    assert len(np.unique(merged[np.isfinite(merged)])) == 3
    assert merge_ties(np.array([0.1, 0.1 + 10 * TIE_TOLERANCE])).tolist() == [0.1, 0.1 + 10 * TIE_TOLERANCE]
    assert merge_ties(np.array([])).shape == (0,)


# --------------------------------------------------------------------------- align_features.py


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """40 extracted videos (one failed), two layers (one float16 with a constant column), annotation
    scores in tenths (ties) for valence (all videos) and distance (a third of them NaN)."""
    root = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(N, 3))
    pool = (latent @ rng.normal(size=(3, 50)) + 0.5 * rng.normal(size=(N, 50))).astype(np.float32)
    pool[:, 7] = 2.5  # constant: no usable standard deviation in any fold
    stem = rng.normal(size=(N, 3, 2, 2)).astype(np.float16)
    stem[:, 0, 0, 0] += latent[:, 1].astype(np.float16)
    status = ["ok"] * N
    status[5] = "error"
    names = [f"clips/v{i:02d}.mp4" for i in range(N)]
    features = write_feature_dir(root / "features", names, {"pool": pool, "stem": stem}, status=status)
    table = pd.DataFrame({"video_name": names})
    valence = np.clip(np.rint(5 + 2 * latent[:, 0] + rng.normal(size=N)), 0, 10)
    distance = np.clip(np.rint(5 + 2 * latent[:, 1] + rng.normal(size=N)), 0, 10)
    distance[rng.permutation(N)[: N // 3]] = np.nan
    table["valence_score"], table["distance_score"] = valence / 10, distance / 10
    table["valence_confidence"] = table["distance_confidence"] = 0.8
    table.to_csv(root / "annotations.csv", index=False)
    out = root / "out"
    args = ["--features", features, "--annotations", root / "annotations.csv", "--tasks", "valence,distance"]
    args += ["--output", out, "--folds", 4, "--seed", 1, "--device", "cpu", "--no-plots"]
    assert align_features.main([str(a) for a in args]) == 0
    tenths = pd.DataFrame({"valence": valence, "distance": distance}, index=[f"v{i:02d}" for i in range(N)])
    return out, {"pool": pool, "stem": stem.reshape(N, -1)}, tenths


def analysed(out, layers, tenths):
    """The analysed videos' features per layer, exact targets in tenths and folds, in rdms/ order."""
    keys = pd.read_csv(out / "rdms" / "videos.csv")["video_key"].tolist()
    rows = [int(k[1:]) for k in keys]
    predictions = pd.read_csv(out / "predictions.csv")
    folds = predictions[predictions["feature"] == "valence"].set_index("video_key")["fold"].reindex(keys).to_numpy()
    x = {name: array[rows].astype(np.float64) for name, array in layers.items()}
    return keys, x, tenths.loc[keys], folds, predictions


def test_layer_rdms_equal_scipys_correlation_distance(aligned):
    out, layers, tenths = aligned
    keys, x, _, _, _ = analysed(out, layers, tenths)
    assert len(keys) == N - 1
    for name, features in x.items():
        expected = squareform(pdist(features, "correlation"))
        np.testing.assert_allclose(np.load(out / "rdms" / f"{name}.npy"), expected, atol=2e-6)


def test_rsa_equals_scipy_spearman_of_scipy_rdms_with_exact_ties(aligned):
    out, layers, tenths = aligned
    _, x, exact, _, _ = analysed(out, layers, tenths)
    rsa = pd.read_csv(out / "rsa.csv").set_index(["layer", "feature"])
    for name, features in x.items():
        for feature in ("valence", "distance"):
            rated = exact[feature].notna().to_numpy()
            expected = spearmanr(
                pdist(features[rated], "correlation"), pdist(exact[feature].to_numpy()[rated, None], "cityblock")
            ).statistic
            assert rsa.loc[(name, feature), "rsa"] == pytest.approx(expected, abs=1e-6), (name, feature)
            assert rsa.loc[(name, feature), "n"] == rated.sum()


def sklearn_heldout(features, y, folds, alphas_relative):
    """Held-out predictions and the relative α per fold of RidgeCV(alpha_per_target=True), fitted
    per fold on the training videos' standardisation (population sd, unusable columns dropped)."""
    predictions, chosen = np.full(len(y), np.nan), []
    rated = np.isfinite(y)
    for f in range(int(folds.max()) + 1):
        fit_rows = folds != f
        mean, sd = features[fit_rows].mean(axis=0), features[fit_rows].std(axis=0)
        usable = (sd > 0) & (sd > RELATIVE_SD_FLOOR * np.abs(mean))
        z = (features[:, usable] - mean[usable]) / sd[usable]
        train, test = rated & fit_rows, rated & ~fit_rows
        centred = z[train] - z[train].mean(axis=0)
        scale = (centred**2).sum() / train.sum()  # trace(K) / m: the grid is relative to it
        model = RidgeCV(alphas=np.asarray(alphas_relative) * scale, alpha_per_target=True)
        model.fit(z[train], y[train, None])
        predictions[test] = np.ravel(model.predict(z[test]))
        chosen.append(float(np.ravel(model.alpha_)[0]) / scale)
    return predictions, chosen


def test_encoding_predictions_and_scores_equal_scikit_learn_and_scipy(aligned):
    out, layers, tenths = aligned
    keys, x, exact, folds, predictions = analysed(out, layers, tenths)
    doc = json.loads((out / "alignment.json").read_text())
    assert doc["settings"]["tie_tolerance"] == TIE_TOLERANCE
    alignment = pd.read_csv(out / "alignment.csv").set_index(["layer", "feature"])
    for name, features in x.items():
        for feature in ("valence", "distance"):
            y = exact[feature].to_numpy() / 10
            reference, alphas = sklearn_heldout(features, y, folds, doc["settings"]["alphas_relative"])
            ours = predictions[predictions["feature"] == feature].set_index("video_key")[name]
            rated = np.isfinite(y)
            np.testing.assert_allclose(ours.reindex(np.asarray(keys)[rated]), reference[rated], atol=2e-6)
            per_fold = doc["layers"][name]["per_fold"][feature]
            assert per_fold["alpha_per_fold"] == pytest.approx(alphas, rel=1e-9), (name, feature)
            in_fold = [(folds == f) & rated for f in range(4)]
            pearsons = [pearsonr(reference[k], y[k]).statistic for k in in_fold]
            spearmans = [spearmanr(reference[k], y[k]).statistic for k in in_fold]
            assert per_fold["pearson_per_fold"] == pytest.approx(pearsons, abs=1e-6)
            assert per_fold["spearman_per_fold"] == pytest.approx(spearmans, abs=1e-6)
            assert alignment.loc[(name, feature), "pearson"] == pytest.approx(np.mean(pearsons), abs=1e-6)
            assert alignment.loc[(name, feature), "spearman"] == pytest.approx(np.mean(spearmans), abs=1e-6)


# --------------------------------------------------------------------------- evaluate.py's metrics


def test_evaluation_metrics_equal_scipy_and_scikit_learn_with_tied_and_missing_targets():
    rng = np.random.default_rng(4)
    n = 60
    tenths = rng.integers(0, 11, n).astype(np.float64)
    tenths[rng.permutation(n)[:9]] = np.nan
    target = (tenths / 10).astype(np.float32)  # tied scores, as build_targets returns them
    pred = np.clip(tenths / 10 + rng.normal(0, 0.2, n), 0, 1)
    pred[3] = np.nan  # a video that failed to load
    confidence = rng.integers(1, 4, n).astype(np.float32)
    location = (rng.random(n) < 0.5).astype(np.float32)
    location[:4] = np.nan
    p_out = np.clip(location + rng.normal(0, 0.5, n), 0, 1).round(1)  # ties in the score too
    people = rng.integers(0, 5, n)
    p_people = rng.dirichlet(np.ones(5), n)
    targets = {
        "valence_score": target,
        "valence_confidence": confidence,
        "location_score": location,
        "peoplecount": people,
    }
    probs = {"valence_score": pred, "location_score": p_out, "peoplecount": p_people}
    report = evaluation_metrics(probs, targets, ["valence", "location", "peoplecount"])
    v = report["valence"]
    ok = np.isfinite(pred) & np.isfinite(tenths)
    exact = tenths[ok] / 10
    assert v["spearman"] == pytest.approx(spearmanr(pred[ok], tenths[ok]).statistic, abs=1e-12)
    assert v["pearson"] == pytest.approx(pearsonr(pred[ok], exact).statistic, abs=1e-6)
    assert v["mae"] == pytest.approx(mean_absolute_error(exact, pred[ok]), abs=1e-6)
    assert v["r2"] == pytest.approx(r2_score(exact, pred[ok]), abs=1e-6)
    # integer confidences = repeated pairs: the weighted Spearman is scipy's on the repeated data
    repeats = confidence[ok].astype(int)
    assert v["weighted_spearman"] == pytest.approx(
        spearmanr(np.repeat(pred[ok], repeats), np.repeat(tenths[ok], repeats)).statistic, abs=1e-12
    )
    assert v["weighted_pearson"] == pytest.approx(
        pearsonr(np.repeat(pred[ok], repeats), np.repeat(exact, repeats)).statistic, abs=1e-6
    )
    known = np.isfinite(location)
    assert report["location"]["roc_auc"] == pytest.approx(roc_auc_score(location[known], p_out[known]), abs=1e-12)
    assert report["peoplecount"]["macro_f1"] == pytest.approx(
        f1_score(people, p_people.argmax(axis=1), average="macro"), abs=1e-12
    )


# --------------------------------------------------------------------------- human agreement


def test_human_agreement_equals_scipy_on_tied_likert_ratings(tmp_path):
    """Hand-made long-form ratings: rater counts differ between videos, so equal means are
    reached through different sums (a: 2, 3 and b: 1, 4, 2, 3 both average 2.5)."""
    ratings = {  # video -> {rater: Likert}
        "a": {"r1": 2, "r2": 3},
        "b": {"r1": 1, "r2": 4, "r3": 2, "r4": 3},
        "c": {"r1": 5, "r3": 4, "r4": 4},
        "d": {"r2": 1, "r3": 1, "r4": 2},
        "e": {"r1": 3, "r2": 3, "r3": 1, "r4": 3},
        "f": {"r1": 4, "r2": 5, "r4": 4},
        "g": {"r1": 2, "r2": 2, "r3": 3, "r4": 3},
        "h": {"r2": 4, "r3": 5},
    }
    lines = ["subjectID,video_name,question_name,likert_response"]
    lines += [f"{s},{v}.mp4,valence,{x}" for v, by in ratings.items() for s, x in by.items()]
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    human = load_human_ratings(str(tmp_path / "long.csv"))
    videos = list(ratings)
    model = pd.DataFrame({"valence": [0.3, 0.1, 0.9, 0.2, 0.5, 0.8, 0.4, 0.7]}, index=videos)
    gpt = pd.DataFrame({"valence": [0.5, 0.5, 0.9, 0.1, 0.5, 0.7, 0.4, 0.7]}, index=videos)
    v = compare_with_humans(human.ratings, True, model, gpt, n_splits=40, seed=2)["valence"]

    raters = ["r1", "r2", "r3", "r4"]
    unit = {v_: {s: Fraction(x - 1, 4) for s, x in by.items()} for v_, by in ratings.items()}
    mean = np.array([float(sum(by.values()) / len(by)) for by in unit.values()])  # exact means
    matrix = pd.DataFrame([[float(unit[v_][s]) if s in unit[v_] else np.nan for s in raters] for v_ in videos])
    m, g = model["valence"].to_numpy(), gpt["valence"].to_numpy()
    assert v["model_vs_mean_human"] == pytest.approx(spearmanr(m, mean).statistic, abs=1e-12)
    assert v["gpt_vs_mean_human"] == pytest.approx(spearmanr(g, mean).statistic, abs=1e-12)
    assert v["model_vs_gpt"] == pytest.approx(spearmanr(m, g).statistic, abs=1e-12)
    individual = [scipy_spearman(m, matrix[j]) for j in range(4)]
    assert v["model_to_individual"] == pytest.approx(np.mean(individual), abs=1e-12)
    pairs = [scipy_spearman(matrix[i], matrix[j]) for i in range(4) for j in range(i + 1, 4)]
    assert v["human_pairwise"] == pytest.approx(np.mean(pairs), abs=1e-12) and v["human_pairs"] == 6
    leave_one_out = []
    for s in raters:
        rated = [v_ for v_ in videos if s in unit[v_] and len(unit[v_]) > 1]
        rest = [float(sum(x for r, x in unit[v_].items() if r != s) / (len(unit[v_]) - 1)) for v_ in rated]
        leave_one_out.append(spearmanr([float(unit[v_][s]) for v_ in rated], rest).statistic)
    assert v["human_leave_one_out"] == pytest.approx(np.mean(leave_one_out), abs=1e-12)
    # the documented split-halves: default_rng(seed).permutation of the raters, halves' exact means
    rng, corrected = np.random.default_rng(2), []
    for _ in range(40):
        order = rng.permutation(4)
        halves = [[raters[i] for i in order[:2]], [raters[i] for i in order[2:]]]
        means = [[_exact_mean(unit[v_], half) for v_ in videos] for half in halves]
        both = [i for i in range(len(videos)) if means[0][i] is not None and means[1][i] is not None]
        if len(both) < 3:  # min_videos
            continue
        r = spearmanr([means[0][i] for i in both], [means[1][i] for i in both]).statistic
        if math.isfinite(r):
            corrected.append(2 * r / (1 + r))
    assert v["split_half_reliability"] == pytest.approx(np.mean(corrected), abs=1e-12)
    assert v["noise_ceiling"] == pytest.approx(math.sqrt(np.mean(corrected)), abs=1e-12)


def _exact_mean(by_rater: dict, half: list[str]) -> float | None:
    values = [x for s, x in by_rater.items() if s in half]
    return float(sum(values) / len(values)) if values else None
