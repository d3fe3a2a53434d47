import math

import numpy as np
import pytest

from utils import metrics as M


def test_spearman_with_ties_matches_hand_ranks():
    pred = [0.1, 0.4, 0.4, 0.9]
    target = [1.0, 2.0, 3.0, 4.0]
    # ranks of pred: 1, 2.5, 2.5, 4 ; target ranks 1..4 -> pearson of those
    rp, rt = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    expected = np.sum((rp - rp.mean()) * (rt - rt.mean())) / np.sqrt(
        np.sum((rp - rp.mean()) ** 2) * np.sum((rt - rt.mean()) ** 2)
    )
    assert M.spearman(pred, target) == pytest.approx(expected)


def test_nan_targets_ignored_and_undefined_is_nan():
    assert M.mae([0.0, 1.0, 5.0], [0.5, np.nan, 4.0]) == pytest.approx(0.75)
    assert math.isnan(M.spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))
    assert math.isnan(M.pearson([1.0], [1.0]))
    assert M.r2([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


def test_task_metrics_names_and_values():
    logits = {
        "distance_score": np.array([-2.0, 0.0, 2.0, 1.0]),
        "peoplecount": np.array([[5, 0, 0, 0, 0], [0, 5, 0, 0, 0], [0, 0, 5, 0, 0], [0, 0, 0, 0, 5.0]]),
        "location_score": np.array([3.0, -3.0, 3.0, 0.1]),
    }
    targets = {
        "distance_score": np.array([0.1, 0.5, 0.9, np.nan]),
        "peoplecount": np.array([0, 1, 3, -1]),
        "location_score": np.array([1.0, 0.0, 0.0, np.nan]),
    }
    m = M.task_metrics(logits, targets, ["distance", "peoplecount", "location"])
    assert m["distance/spearman"] == pytest.approx(1.0)
    assert m["distance/n"] == 3
    assert m["peoplecount/accuracy"] == pytest.approx(2 / 3)
    assert m["location/accuracy"] == pytest.approx(2 / 3)
    assert m["mean_spearman"] == pytest.approx(1.0)
