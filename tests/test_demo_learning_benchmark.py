"""benchmarks/demo_learning.py's summary: Spearman per feature, its bootstrap standard error, accuracies."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.demo_learning import final_validation, summarize  # noqa: E402
from datasets.demo import FEATURES  # noqa: E402
from evaluate import TARGET_PREFIX  # noqa: E402


def test_summary_of_known_predictions(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = {}
    for feature in FEATURES:
        target = rng.integers(0, 11, n) / 10
        if feature == "distance":
            pred = target.copy()  # perfect ranks
        elif feature == "object":
            pred = -target  # reversed
        else:
            pred = rng.random(n)  # unrelated
        if feature == "joint":
            target[: n // 2] = np.nan  # only some clips have a score
        frame[f"{feature}_score"], frame[TARGET_PREFIX + f"{feature}_score"] = pred, target
    frame["peoplecount"] = ["2"] * n
    frame[TARGET_PREFIX + "peoplecount"] = ["2"] * (n // 4) + ["3"] * (n - n // 4)
    path = tmp_path / "predictions_all.csv"
    pd.DataFrame(frame).to_csv(path, index=False)

    summary = summarize(path, resamples=300)
    f = summary["features"]
    assert f["distance"]["spearman"] == pytest.approx(1.0) and f["distance"]["se"] < 1e-12
    assert f["object"]["spearman"] == pytest.approx(-1.0)
    assert f["joint"]["n"] == n // 2 and f["valence"]["n"] == n
    # unrelated predictions: near 0, and the bootstrap SE near the textbook 1/sqrt(n)
    assert abs(f["valence"]["spearman"]) < 0.15
    assert 0.6 / math.sqrt(n) < f["valence"]["se"] < 1.5 / math.sqrt(n)
    assert 0.6 / math.sqrt(n // 2) < f["joint"]["se"] < 1.5 / math.sqrt(n // 2)
    assert summary["mean_spearman"] == pytest.approx(np.mean([v["spearman"] for v in f.values()]))
    assert 0 < summary["mean_spearman_se"] < 0.05
    assert summary["peoplecount_accuracy"] == 0.25


def test_the_runs_own_last_validation_is_read_beside_the_held_out_figures(tmp_path):
    records = [
        {"time": 1.0, "step": 45, "metrics": {"val/valence/spearman": 0.4, "val/valence/spearman_se": 0.05}},
        {"time": 2.0, "step": 90, "metrics": {"train/loss": 0.3}},
        {"time": 3.0, "step": 90, "metrics": {"val/valence/spearman": 0.8, "val/valence/spearman_se": 0.02}},
        {"time": 3.0, "step": 90, "metrics": {"val/valence/n": 500.0}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert final_validation(tmp_path, ["valence", "joint"]) == {"valence": {"spearman": 0.8, "se": 0.02, "n": 500.0}}
    assert final_validation(tmp_path / "missing", ["valence"]) == {}
