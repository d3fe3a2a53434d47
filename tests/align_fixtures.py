"""A feature directory in the layout extract_features.py writes (analysis/extracted_features.py),
made with numpy, for the align_features.py tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def write_feature_dir(
    root: Path, names: list[str], layers: dict[str, np.ndarray], status: list[str] | None = None, complete: bool = True
) -> Path:
    """``layers``: name -> array (N, ...) (stored as its dtype); rows whose status is not ok become NaN."""
    root.mkdir(parents=True, exist_ok=True)
    status = status or ["ok"] * len(names)
    failed = np.array([s != "ok" for s in status])
    entries = {}
    for name, array in layers.items():
        array = np.array(array)
        array[failed] = np.nan
        np.save(root / f"{name}.npy", array)
        entries[name] = {"file": f"{name}.npy", "shape": list(array.shape), "dtype": str(array.dtype)}
    meta = {
        "format_version": 1,
        "complete": complete,
        "num_videos": len(names),
        "layers": entries,
        "pool": "none",
        "frames": 16,
        "size": 112,
        "views": "1x1",
        "checkpoint": "test.pt",
        "project_dim": None,
        "versions": {"numpy": np.__version__},
    }
    (root / "features.json").write_text(json.dumps(meta))
    pd.DataFrame(
        {
            "row": range(len(names)),
            "video_name": names,
            "path": [f"/videos/{n}" for n in names],
            "status": status,
            "error": ["" if s == "ok" else f"{s} in test" for s in status],
        }
    ).to_csv(root / "index.csv", index=False)
    return root


def long_ratings(
    path: Path, keys: list[str], truth: dict[str, np.ndarray], raters: int = 6, noise: float = 0.6, seed: int = 0
) -> Path:
    """Long-form Likert ratings: each rater reports round(truth + noise), clipped to 1-5."""
    rng = np.random.default_rng(seed)
    rows = []
    for question, values in truth.items():
        for s in range(raters):
            likert = np.clip(np.rint(values + rng.normal(0, noise, len(values))), 1, 5).astype(int)
            rows += [(f"rater{s}", f"{k}.mp4", question, int(x)) for k, x in zip(keys, likert)]
    pd.DataFrame(rows, columns=["subjectID", "video_name", "question_name", "likert_response"]).to_csv(
        path, index=False
    )
    return path
