"""evaluate.py in one process: outputs, metrics consistency, human comparison, plots, MLflow."""

import json
import socket
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from eval_fixtures import save_tiny_checkpoint
from scipy import stats as scipy_stats

import evaluate
from datasets import assign_splits, build_targets, load_annotation_table
from utils.evaluation import prediction_columns_for_csv
from utils.metrics import TIE_TOLERANCE, evaluation_metrics
from utils.tasks import PEOPLECOUNT_CLASSES, TASKS
from utils.tracking import RunTracker


def base_args(tiny_demo, checkpoint, out, *extra):
    videos, annotations = tiny_demo
    return [
        "--checkpoint",
        str(checkpoint),
        "--videos",
        str(videos),
        "--annotations",
        str(annotations),
        "--output-dir",
        str(out),
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]


def human_table(names, path, seed=0):
    """Five raters; valence ratings follow a hidden per-video value, plus cooperation (no model output)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, len(names))
    rows = []
    for s in range(5):
        for name, t in zip(names, truth):
            rows.append((f"rater{s}", name, "valence", int(np.clip(t + rng.integers(-1, 2), 1, 5))))
            rows.append((f"rater{s}", name, "Indoor", int(rng.integers(1, 6))))
            rows.append((f"rater{s}", name, "cooperation", 3))
    pd.DataFrame(rows, columns=["subjectID", "video_name", "question_name", "likert_response"]).to_csv(
        path, index=False
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    train_dir = tmp_path_factory.mktemp("train")
    path = save_tiny_checkpoint(train_dir)
    # the training run's local metric mirror, as train_ddp.py's RunTracker writes it
    tracker = RunTracker(True, train_dir, None, "unused")
    for step in range(1, 7):
        tracker.log_metrics({"train/loss": 2.0 / step, "train/distance/loss": 1.0 / step, "train/lr": 1e-3}, step)
        if step % 3 == 0:
            tracker.log_metrics(
                {
                    "val/distance/spearman": 0.1 * step,
                    "val/distance/loss": 1.0 / step,
                    "val/mean_spearman": 0.05 * step,
                },
                step,
            )
    tracker.end("FINISHED")
    return path


def test_end_to_end_outputs_metrics_humans_plots_and_mlflow(tiny_demo, checkpoint, tmp_path):
    _, annotations = tiny_demo
    table, _ = load_annotation_table(annotations)
    human = human_table(table["video_name"][:30].tolist(), tmp_path / "human.csv")
    out = tmp_path / "eval"
    rc = evaluate.main(
        base_args(tiny_demo, checkpoint, out, "--split", "all", "--human-ratings", str(human), "--ceiling-splits", "20")
    )
    assert rc == 0
    # -- the predictions CSV: annotation schema, one row per video
    frame = pd.read_csv(out / "predictions_all.csv", keep_default_na=False, na_values=[""])
    cols = prediction_columns_for_csv(TASKS)
    assert list(frame.columns[: len(cols) + 2]) == ["video_name", *cols, "error"]
    assert frame["video_name"].tolist() == table["video_name"].tolist()
    probs_cols = [c for c in cols if c not in ("peoplecount", "location_score")]
    assert ((frame[probs_cols] >= 0) & (frame[probs_cols] <= 1)).all().all()
    assert np.allclose(frame[[f"peoplecount_p{c}" for c in PEOPLECOUNT_CLASSES]].sum(axis=1), 1, atol=1e-5)
    assert set(frame["location_score"]) <= {"Indoor", "Outdoor"}
    assert ((frame["location_p_outdoor"] >= 0.5) == (frame["location_score"] == "Outdoor")).all()
    assert np.allclose(frame["annotated_distance_score"], table["distance_score"].astype(float), equal_nan=True)
    # -- the metrics JSON equals metrics recomputed from the CSV (6 decimals there)
    result = json.loads((out / "metrics_all.json").read_text())
    targets = build_targets(table)
    probs = {
        c: frame[c].to_numpy(float)
        for c in frame.columns
        if c.endswith(("_score", "_confidence")) and not c.startswith("annotated_") and c != "location_score"
    }
    probs["location_score"] = frame["location_p_outdoor"].to_numpy(float)
    probs["peoplecount"] = frame[[f"peoplecount_p{c}" for c in PEOPLECOUNT_CLASSES]].to_numpy(float)
    again = evaluation_metrics(probs, targets, TASKS)
    for task in ("distance", "valence", "location"):
        for key, value in result["metrics"][task].items():
            assert value == pytest.approx(again[task][key], abs=1e-4), (task, key)
    assert result["metrics"]["peoplecount"]["confusion_matrix"] == again["peoplecount"]["confusion_matrix"]
    assert result["tie_tolerance"] == TIE_TOLERANCE
    for task in ("distance", "valence"):  # and scipy's, on the annotated scores (steps of 0.1: ties)
        pred, target = frame[f"{task}_score"].to_numpy(float), frame[f"annotated_{task}_score"].to_numpy(float)
        ok = np.isfinite(pred) & np.isfinite(target)
        assert result["metrics"][task]["spearman"] == pytest.approx(
            scipy_stats.spearmanr(pred[ok], target[ok]).statistic, abs=1e-4
        )
    # -- the human comparison
    h = result["human"]
    assert h["summary"]["no_model_output"] == {"cooperation": 150}
    assert h["summary"]["compared_videos"] == 30 and h["summary"]["raters"] == 5
    val = h["features"]["valence"]
    assert val["n_videos"] == 30 and val["n_raters"] == 5
    for key in (
        "model_vs_mean_human",
        "gpt_vs_mean_human",
        "noise_ceiling",
        "split_half_reliability",
        "model_fraction_of_ceiling",
        "human_pairwise",
        "model_to_individual",
        "gpt_fraction_of_ceiling",
    ):
        assert key in val and val[key] is not None, key
    assert val["split_half_reliability"] > 0.5  # the ratings share a strong hidden value
    assert h["features"]["location"]["compared_as"] == "1 - model output"
    human_csv = pd.read_csv(out / "human_all.csv")
    assert set(human_csv["feature"]) == {"valence", "location"}
    # -- plots
    plots = {p.name for p in (out / "plots_all").iterdir()}
    assert {
        "pred_vs_target_distance.png",
        "pred_vs_target_peoplecount.png",
        "pred_vs_target_location.png",
        "metrics_spearman.png",
        "human_comparison.png",
        "training_curves.png",
    } <= plots
    # -- MLflow: a new run in the default store under the output dir, artifacts beside it
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("social-vision-eval")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.metrics["all/distance/spearman"] == pytest.approx(result["metrics"]["distance"]["spearman"])
    assert "all/human/valence/model_fraction_of_ceiling" in run.data.metrics
    assert run.data.params["views"] == "1x1"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "eval/all")}
    assert {"eval/all/predictions_all.csv", "eval/all/metrics_all.json", "eval/all/plots"} <= logged
    assert (out / "mlartifacts").is_dir()
    info = json.loads((out / "info_all.json").read_text())
    assert info["mlflow"]["run_id"] == run.info.run_id and info["world_size"] == 1


def test_split_comes_from_the_checkpoint_and_empty_split_is_an_error(tiny_demo, checkpoint, tmp_path):
    _, annotations = tiny_demo
    table, _ = load_annotation_table(annotations)
    expected = table["video_name"][(assign_splits(table, method="hash") == "test").to_numpy()].tolist()
    out = tmp_path / "eval"
    wide = tmp_path / "wide.csv"  # the public study's layout: means only, Likert 1-5
    pd.DataFrame({"video_name": expected, "arousal": np.linspace(1, 5, len(expected)), "intimacy": 3.0}).to_csv(
        wide, index=False
    )
    assert (
        evaluate.main(base_args(tiny_demo, checkpoint, out, "--no-mlflow", "--no-plots", "--human-ratings", str(wide)))
        == 0
    )
    frame = pd.read_csv(out / "predictions_test.csv")
    assert frame["video_name"].tolist() == expected and set(frame["split"]) == {"test"}
    human = json.loads((out / "metrics_test.json").read_text())["human"]
    arousal = human["features"]["arousal"]
    assert arousal["n_videos"] == len(expected) and arousal["model_vs_mean_human"] is not None
    assert "unavailable" in arousal["noise_ceiling_note"] and "noise_ceiling" not in arousal
    assert human["summary"]["no_model_output"] == {"intimacy": len(expected)}
    with pytest.raises(SystemExit, match="split 'test' .* is empty .*random42"):
        evaluate.main(base_args(tiny_demo, checkpoint, out, "--split-method", "random42", "--no-mlflow"))


def test_bad_human_table_fails_before_any_video_is_decoded(tiny_demo, checkpoint, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("subjectID,video_name,question_name,likert_response\ns,a.mp4,valence,9\n")
    with pytest.raises(ValueError, match=r"bad.csv: row 1, column 'likert_response': 9 is outside"):
        evaluate.main(base_args(tiny_demo, checkpoint, tmp_path / "o", "--human-ratings", str(bad)))
    assert not (tmp_path / "o").exists()


def test_logs_into_the_training_run_without_touching_its_status(tiny_demo, tmp_path):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    client = mlflow.MlflowClient(f"sqlite:///{train_dir / 'mlflow.db'}")
    exp_id = client.create_experiment("social-vision", artifact_location=(train_dir / "art").as_uri())
    run_id = client.create_run(exp_id).info.run_id  # still RUNNING, as during training
    client.log_param(run_id, "lr", "0.001")
    for step in (1, 2, 3):
        client.log_metric(run_id, "train/loss", 1.0 / step, step=step)
        client.log_metric(run_id, "val/mean_spearman", 0.1 * step, step=step)
    checkpoint = save_tiny_checkpoint(train_dir, run_id=run_id)
    out = tmp_path / "eval"
    assert evaluate.main(base_args(tiny_demo, checkpoint, out, "--split", "val", "--run-id", "checkpoint")) == 0
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"lr": "0.001"}
    assert "eval_val/distance/spearman" in run.data.metrics  # training's own val/... left alone
    assert run.data.tags["eval.eval_val.checkpoint"] == str(checkpoint)
    assert len(client.search_runs([exp_id])) == 1
    logged = {a.path for a in client.list_artifacts(run_id, "eval/eval_val/plots")}
    assert "eval/eval_val/plots/training_curves.png" in logged  # curves from the run's MLflow history


def test_unreachable_mlflow_costs_a_warning_not_the_evaluation(tiny_demo, checkpoint, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    out = tmp_path / "eval"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = evaluate.main(
            base_args(tiny_demo, checkpoint, out, "--no-plots", "--tracking-uri", f"http://127.0.0.1:{port}")
        )
    assert rc == 0
    assert any("evaluation continues without MLflow" in str(w.message) for w in caught)
    assert (out / "metrics_test.json").exists() and (out / "predictions_test.csv").exists()
    assert json.loads((out / "info_test.json").read_text())["mlflow"] is None
