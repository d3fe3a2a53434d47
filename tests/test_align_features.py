"""align_features.py end to end: outputs, counts, the noise ceiling as evaluate.py computes it,
RDM files, the other target forms, refusals, MLflow."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from align_fixtures import long_ratings, write_feature_dir

import align_features
import evaluate
from analysis.human_ratings import load_human_ratings

N = 60
COLUMNS = ["layer", "feature", "pearson", "spearman", "ceiling", "fraction", "n"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """60 extracted videos (2 failed, 1 pending), rated by 6 people on valence (which the 'pool'
    layer encodes), indoor (which no layer encodes) and cooperation; 2 rated videos were never
    extracted and one extracted video was not rated."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(N, 3))
    pool = (latent @ rng.normal(size=(3, 40)) + 0.3 * rng.normal(size=(N, 40))).astype(np.float32)
    stem = rng.normal(size=(N, 4, 2, 3, 3)).astype(np.float16)
    status = ["ok"] * N
    status[7], status[11], status[30] = "error", "error", "pending"
    names = [f"yawning/v{i:02d}.mp4" for i in range(N)]
    features = write_feature_dir(root / "features", names, {"stem": stem, "pool": pool}, status=status)
    rated = [f"v{i:02d}" for i in range(N) if i != 20] + ["new1", "new2"]
    signal = np.append(np.delete(latent[:, 0], 20), [0.0, 0.0])
    truth = {
        "valence": 3 + 1.2 * signal / signal.std(),
        "indoor": 3 + rng.normal(size=len(rated)),
        "cooperation": 3 - signal / signal.std(),
    }
    ratings = long_ratings(root / "ratings.csv", rated, truth, raters=6, noise=0.7)
    return features, ratings, root


def run(*args):
    return align_features.main([str(a) for a in args])


@pytest.fixture(scope="module")
def long_run(study):
    features, ratings, root = study
    out = root / "out_long"
    assert run("--features", features, "--human-ratings", ratings, "--output", out, "--ceiling-splits", 30) == 0
    return out


def test_alignment_table_scores_and_counts(long_run, study):
    table = pd.read_csv(long_run / "alignment.csv")
    assert list(table.columns) == COLUMNS
    assert list(zip(table["layer"], table["feature"])) == [
        (layer, f) for layer in ("stem", "pool") for f in ("valence", "indoor", "cooperation")
    ]
    analysed = N - 3 - 1  # not ok: 3; not rated: 1
    assert (table["n"] == analysed).all()
    s = table.set_index(["layer", "feature"])
    assert s.loc[("pool", "valence"), "spearman"] > 0.6 and s.loc[("pool", "cooperation"), "spearman"] > 0.6
    assert abs(s.loc[("pool", "indoor"), "spearman"]) < 0.4 and abs(s.loc[("stem", "valence"), "spearman"]) < 0.4
    assert table["ceiling"].between(0.5, 1).all()
    np.testing.assert_allclose(table["fraction"], table["spearman"] / table["ceiling"], rtol=1e-5)
    doc = json.loads((long_run / "alignment.json").read_text())
    assert doc["counts"] == {
        "rows_ok": N - 3,
        "rows_error": 2,
        "rows_pending": 1,
        "analysed_videos": analysed,
        "ok_videos_without_targets": 1,
        "targets_without_features": 5,
        "targets_without_features_failed_or_pending": 3,
        "targets_not_in_index": 2,
    }
    assert doc["provenance"]["checkpoint"] == "test.pt"
    assert len(doc["layers"]["pool"]["per_fold"]["valence"]["alpha_per_fold"]) == 5
    predictions = pd.read_csv(long_run / "predictions.csv")
    assert len(predictions) == 3 * analysed and not predictions[["stem", "pool"]].isna().any().any()
    assert predictions.groupby("feature")["video_key"].nunique().eq(analysed).all()
    assert (long_run / "alignment.png").read_bytes()[:4] == b"\x89PNG"


def test_ceiling_is_evaluate_pys_on_the_same_ratings(long_run, study):
    _, ratings, _ = study
    table = pd.read_csv(long_run / "alignment.csv").set_index(["layer", "feature"])
    videos = pd.read_csv(long_run / "rdms" / "videos.csv")["video_name"].tolist()  # the analysed videos
    # evaluate.py's human comparison for a model that evaluated exactly these videos
    human = load_human_ratings(ratings)
    values = np.linspace(0, 1, len(videos))
    probs = {"valence_score": values, "location_score": values}
    args = argparse.Namespace(ceiling_splits=30, seed=0, min_videos=3, split="test")
    report, _ = evaluate.human_comparison(args, human, videos, probs, probs, ("valence", "location"), None)
    for feature, task in (("valence", "valence"), ("indoor", "location")):
        expected = report["features"][task]["noise_ceiling"]
        assert report["features"][task]["n_videos"] == len(videos)
        assert table.loc[("pool", feature), "ceiling"] == pytest.approx(expected, abs=1e-6)  # CSV keeps 6 decimals
        assert table.loc[("stem", feature), "ceiling"] == pytest.approx(expected, abs=1e-6)


def test_rdm_files_are_symmetric_with_zero_diagonal(long_run):
    videos = pd.read_csv(long_run / "rdms" / "videos.csv")
    for layer in ("stem", "pool"):
        rdm = np.load(long_run / "rdms" / f"{layer}.npy")
        assert rdm.shape == (len(videos), len(videos)) and rdm.dtype == np.float32
        assert np.array_equal(rdm, rdm.T) and np.all(np.diag(rdm) == 0)
    rsa = pd.read_csv(long_run / "rsa.csv")
    assert list(rsa.columns) == ["layer", "feature", "rsa", "n"] and rsa["rsa"].between(-1, 1).all()


def test_wide_form_has_no_ceiling(study, tmp_path):
    features, ratings, _ = study
    means = pd.read_csv(ratings).pivot_table(index="video_name", columns="question_name", values="likert_response")
    wide = tmp_path / "wide.csv"
    means.reset_index().to_csv(wide, index=False)
    assert run("--features", features, "--human-ratings", wide, "--output", tmp_path / "out", "--layers", "pool") == 0
    table = pd.read_csv(tmp_path / "out" / "alignment.csv")
    assert list(table["layer"].unique()) == ["pool"]
    assert table["ceiling"].isna().all() and table["fraction"].isna().all() and table["spearman"].notna().all()
    assert ",,," in (tmp_path / "out" / "alignment.csv").read_text().splitlines()[1]  # empty cells, not "nan"


def test_annotation_scores_as_targets(study, tmp_path):
    features, _, _ = study
    rng = np.random.default_rng(1)
    names = [f"yawning/v{i:02d}.mp4" for i in range(0, N, 2)] + ["other/x.mp4"]
    table = pd.DataFrame({"video_name": names})
    for task in ("valence", "distance"):
        table[f"{task}_score"] = rng.integers(0, 11, len(names)) / 10
        table[f"{task}_confidence"] = 0.9
    table.to_csv(tmp_path / "annotations.csv", index=False)
    assert (
        run(
            "--features",
            features,
            "--annotations",
            tmp_path / "annotations.csv",
            "--tasks",
            "valence,distance",
            "--output",
            tmp_path / "out",
            "--folds",
            3,
            "--no-plots",
        )
        == 0
    )
    result = pd.read_csv(tmp_path / "out" / "alignment.csv")
    assert list(result["feature"].unique()) == ["distance", "valence"] and result["ceiling"].isna().all()
    counts = json.loads((tmp_path / "out" / "alignment.json").read_text())["counts"]
    # 30 even-numbered videos + x.mp4 annotated; v30 is pending, x.mp4 was never extracted
    assert counts["analysed_videos"] == 29 and counts["targets_without_features"] == 2
    assert counts["targets_without_features_failed_or_pending"] == 1 and counts["targets_not_in_index"] == 1
    assert not (tmp_path / "out" / "alignment.png").exists()


def test_incomplete_extraction_refused_unless_allowed(study, tmp_path, capsys):
    _, ratings, _ = study
    rng = np.random.default_rng(2)
    names = [f"v{i:02d}.mp4" for i in range(N)]
    status = ["ok"] * 40 + ["pending"] * 20
    features = write_feature_dir(
        tmp_path / "partial", names, {"pool": rng.normal(size=(N, 8)).astype(np.float32)}, status=status, complete=False
    )
    with pytest.raises(SystemExit, match="not complete.*--allow-incomplete"):
        run("--features", features, "--human-ratings", ratings, "--output", tmp_path / "o")
    assert (
        run(
            "--features",
            features,
            "--human-ratings",
            ratings,
            "--output",
            tmp_path / "o",
            "--allow-incomplete",
            "--ceiling-splits",
            5,
            "--no-plots",
        )
        == 0
    )
    assert "20 pending rows not used" in capsys.readouterr().out
    assert (pd.read_csv(tmp_path / "o" / "alignment.csv")["n"] == 39).all()  # v20 is not rated


def test_bad_arguments_are_refused_with_a_message(study, tmp_path, monkeypatch):
    features, ratings, _ = study
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = ["--features", features, "--human-ratings", ratings, "--output", tmp_path / "o"]
    with pytest.raises(SystemExit, match=r"--layers \['head'\] not in"):
        run(*base, "--layers", "head")
    with pytest.raises(SystemExit, match="need at least 100"):
        run(*base, "--folds", 100)
    with pytest.raises(SystemExit, match="--max-gram-gb"):
        run(*base, "--max-gram-gb", 0.0001)
    with pytest.raises(SystemExit):  # argparse: --run-id needs a tracking URI
        run(*base, "--run-id", "abc")


def test_mlflow_new_run_and_existing_run_left_running(study, tmp_path):
    import mlflow

    features, ratings, _ = study
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [
        "--features",
        features,
        "--human-ratings",
        ratings,
        "--ceiling-splits",
        5,
        "--tracking-uri",
        uri,
        "--layers",
        "pool",
        "--no-plots",
    ]
    assert run(*base, "--output", tmp_path / "a") == 0
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("social-vision-align")
    (new,) = client.search_runs([exp.experiment_id])
    assert new.info.status == "FINISHED"
    table = pd.read_csv(tmp_path / "a" / "alignment.csv").set_index(["layer", "feature"])
    assert new.data.metrics["align/pool/valence/spearman"] == pytest.approx(
        table.loc[("pool", "valence"), "spearman"], abs=1e-6
    )
    assert "align/pool/indoor/ceiling" in new.data.metrics and "align/counts/analysed_videos" in new.data.metrics
    assert {a.path for a in client.list_artifacts(new.info.run_id, "align")} >= {
        "align/alignment.csv",
        "align/rsa.csv",
        "align/alignment.json",
        "align/predictions.csv",
    }
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not ./mlruns of the working directory
    training = client.create_run(exp.experiment_id)  # e.g. a training run still in progress
    assert run(*base, "--output", tmp_path / "b", "--run-id", training.info.run_id) == 0
    after = client.get_run(training.info.run_id)
    assert after.info.status == "RUNNING" and "align/pool/valence/pearson" in after.data.metrics


def test_real_extract_features_output_aligns(tiny_demo, tmp_path):
    """The two commands together: extract_features.py's directory is what align_features.py reads."""
    import extract_features

    videos, annotations = tiny_demo
    feats = tmp_path / "features"
    assert (
        extract_features.main(
            [
                "--random-init",
                "--depth",
                "18",
                "--videos",
                str(videos),
                "--annotations",
                str(annotations),
                "--split",
                "all",
                "--layers",
                "layer3,layer4",
                "--frames",
                "4",
                "--size",
                "32",
                "--output",
                str(feats),
                "--num-workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "align"
    assert (
        align_features.main(
            [
                "--features",
                str(feats),
                "--annotations",
                str(annotations),
                "--tasks",
                "valence,arousal",
                "--output",
                str(out),
                "--no-plots",
            ]
        )
        == 0
    )
    table = pd.read_csv(out / "alignment.csv")
    assert list(table.columns) == COLUMNS
    assert set(table["layer"]) == {"layer3", "layer4"} and set(table["feature"]) == {"valence", "arousal"}
    n_videos = len(pd.read_csv(annotations))
    assert table["n"].between(n_videos // 2, n_videos).all()  # rows with a valid target, all extracted
    assert np.isfinite(table["pearson"]).all() and table["ceiling"].isna().all()
