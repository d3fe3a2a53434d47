"""Output tables and reports shared by ``evaluate.py`` and ``predict.py``.

Prediction CSV schema (one row per video, the annotation table's columns first):

    <key column(s)>                     video path (predict.py) or video_name (evaluate.py)
    <f>_score, <f>_confidence           per score feature, probabilities in [0, 1]
    peoplecount                         predicted class label: 0, 1, 2, 3 or many
    peoplecount_certain                 p(certain), in [0, 1]
    location_score                      Indoor / Outdoor (p(Outdoor) >= 0.5)
    location_confidence                 in [0, 1]
    peoplecount_p0 .. peoplecount_pmany class probabilities (sum to 1)
    location_p_outdoor                  p(Outdoor)
    error                               empty, or why the video could not be read (its
                                        prediction cells are then empty)

Only the columns of the model's tasks appear.  Numbers are written with 6 decimals.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.atomic import atomic_write, atomic_write_text
from utils.tasks import LOCATION_CLASSES, PEOPLECOUNT_CLASSES, SCORE_FEATURES, parse_tasks

FLOAT_FORMAT = "%.6f"


def prediction_columns_for_csv(tasks) -> list[str]:
    """Prediction column names, in the order written (see the module docstring)."""
    tasks = parse_tasks(tasks)
    cols: list[str] = []
    for task in tasks:
        if task in SCORE_FEATURES:
            cols += [f"{task}_score", f"{task}_confidence"]
        elif task == "peoplecount":
            cols += ["peoplecount", "peoplecount_certain"]
        elif task == "location":
            cols += ["location_score", "location_confidence"]
    if "peoplecount" in tasks:
        cols += [f"peoplecount_p{c}" for c in PEOPLECOUNT_CLASSES]
    if "location" in tasks:
        cols.append("location_p_outdoor")
    return cols


def prediction_frame(
    keys: Mapping[str, Sequence], probs: Mapping[str, np.ndarray], tasks, errors: Sequence[str | None]
) -> pd.DataFrame:
    """One row per item: ``keys`` columns first, then the predictions, then ``error``.

    ``probs``: output name -> per-item probabilities (NaN rows for failed items).
    """
    tasks = parse_tasks(tasks)
    n = len(errors)
    data: dict[str, Any] = {name: list(values) for name, values in keys.items()}
    failed = np.array([e is not None for e in errors], dtype=bool)

    def col(values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64).copy()
        values[failed] = np.nan
        return values

    for task in tasks:
        if task in SCORE_FEATURES:
            data[f"{task}_score"] = col(probs[f"{task}_score"])
            data[f"{task}_confidence"] = col(probs[f"{task}_confidence"])
        elif task == "peoplecount":
            p = np.asarray(probs["peoplecount"], dtype=np.float64)
            best = np.argmax(np.nan_to_num(p, nan=-1.0), axis=1)
            data["peoplecount"] = [None if failed[i] else PEOPLECOUNT_CLASSES[best[i]] for i in range(n)]
            data["peoplecount_certain"] = col(probs["peoplecount_certain"])
        elif task == "location":
            p_out = col(probs["location_score"])
            data["location_score"] = [None if failed[i] else LOCATION_CLASSES[int(p_out[i] >= 0.5)] for i in range(n)]
            data["location_confidence"] = col(probs["location_confidence"])
    if "peoplecount" in tasks:
        p = np.asarray(probs["peoplecount"], dtype=np.float64)
        for j, c in enumerate(PEOPLECOUNT_CLASSES):
            data[f"peoplecount_p{c}"] = col(p[:, j])
    if "location" in tasks:
        data["location_p_outdoor"] = col(probs["location_score"])
    data["error"] = list(errors)
    return pd.DataFrame(data, columns=[*keys, *prediction_columns_for_csv(tasks), "error"])


def per_video_values(keys: Sequence[str], probs: Mapping[str, np.ndarray], tasks) -> pd.DataFrame:
    """The model's value per task for human comparison: index = ``keys`` (video stems),
    columns = tasks with a single value (score features: p(score); location: p(Outdoor)).
    Failed videos (NaN) are dropped per column later; duplicated keys keep their first row."""
    data = {}
    for task in parse_tasks(tasks):
        if task in SCORE_FEATURES:
            data[task] = np.asarray(probs[f"{task}_score"], dtype=np.float64)
        elif task == "location":
            data[task] = np.asarray(probs["location_score"], dtype=np.float64)
    frame = pd.DataFrame(data, index=pd.Index(list(keys), name="video_key"))
    return frame[~frame.index.duplicated(keep="first")]


def to_json_safe(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars/arrays -> Python, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def flatten_metrics(report: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Finite numeric leaves as ``prefix/a/b`` -> float (for MLflow); lists and text skipped."""
    flat: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                flat[name] = float(value)
    return flat


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format=FLOAT_FORMAT))


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(to_json_safe(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    return Path(path)


def format_metrics_table(report: Mapping[str, Mapping[str, Any]], tasks: Iterable[str]) -> str:
    """A short plain-text table of the headline numbers, one line per task."""
    lines = []
    for task in tasks:
        m = report.get(task, {})
        if task in SCORE_FEATURES:
            keys = ("spearman", "pearson", "mae", "rmse", "r2", "weighted_spearman")
        elif task == "peoplecount":
            keys = ("accuracy", "macro_f1")
        else:
            keys = ("accuracy", "roc_auc")
        parts = [f"{k} {_fmt(m.get(k))}" for k in keys]
        lines.append(f"  {task:<14} n {int(m.get('n') or 0):>6}  " + "  ".join(parts))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "  n/a"
    return f"{value:.3f}"
