"""The per-layer entries of features.json: what each stored array holds and how it is shaped."""

from __future__ import annotations

from typing import Any

import numpy as np

from .layers import LayerInfo
from .pooling import axes, pooled_shape
from .store import layer_file


def stored_shape(info: LayerInfo, pool_mode: str, project_dim: int | None) -> tuple[tuple[int, ...], bool]:
    """One video's shape on disk for ``--pool``/``--project-dim``, and whether it is a projection
    (only layers whose pooled size exceeds ``project_dim`` are projected)."""
    kept = pooled_shape(info.shape, pool_mode)
    if project_dim is not None and int(np.prod(kept)) > project_dim:
        return (project_dim,), True
    return kept, False


def head_columns(info: LayerInfo) -> list[str]:
    """Column names of a concatenated head: ``distance_score``, ..., ``peoplecount[0]``, ..."""
    columns = []
    for qualified, width in info.parts:
        output = qualified.split(".", 1)[1]
        columns += [output] if width == 1 else [f"{output}[{i}]" for i in range(width)]
    return columns


def layer_entry(
    info: LayerInfo, num_videos: int, pool_mode: str, project_dim: int | None, dtype: str
) -> dict[str, Any]:
    shape, projected = stored_shape(info, pool_mode, project_dim)
    entry: dict[str, Any] = {
        "file": layer_file(info.name),
        "shape": [num_videos, *shape],
        "dtype": dtype,
        "axes": ["video", "component"] if projected else axes(info.shape, pool_mode),
        "module_output": list(info.shape),
        "projected": projected,
    }
    if len(info.parts) > 1:
        entry["columns"] = head_columns(info)
    return entry
