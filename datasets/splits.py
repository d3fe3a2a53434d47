"""Train/val/test splits of an annotation table.

Three ways, chosen by :func:`assign_splits` (``method``):

* ``"hash"``: each video goes to a split by a stable hash of ``salt + video_name`` (BLAKE2b,
  first 8 bytes -> a number u in [0, 1)): test if u >= 1 - test_fraction, val if
  u >= 1 - test_fraction - val_fraction, else train. Defaults: val 0.1, test 0.1 (so
  0.8/0.1/0.1). A video's split depends on its name and the salt only: not on row order,
  on other rows, on the world size or on any RNG state, and it stays put when rows are
  added.
* ``"column"``: the table says; a ``split`` column with ``train``/``val``/``test`` (case and
  surrounding spaces ignored); anything else is an error naming the rows.
* ``"random42"``: the earlier Lightning version's 90/10 train/val split, reproduced exactly. It called
  ``torch.utils.data.random_split(dataset, [int(0.9 * n), n - int(0.9 * n)],
  generator=torch.Generator().manual_seed(42))`` on the whole table in CSV row order, i.e.
  train = the first ``int(0.9 * n)`` entries of ``torch.randperm(n, generator)``, val = the
  rest. Same table, same row order, same torch ``randperm`` -> same split. It has no test
  split, and ``val_fraction``/``test_fraction`` do not apply to it.
* ``"auto"``: ``"column"`` when the table has a ``split`` column, else ``"hash"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_SALT = "moments-annotations-split-v1"
LEGACY_TRAIN_FRACTION = 0.9
LEGACY_SEED = 42
SPLIT_COLUMN = "split"
SPLIT_METHODS = ("hash", "column", "random42", "auto")


class SplitError(ValueError):
    """Bad split specification or split column; the message names the rows."""


def hash_unit(video_name: str, salt: str = DEFAULT_SALT) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``video_name`` alone."""
    digest = hashlib.blake2b(f"{salt}\0{video_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not 0.0 <= f <= 1.0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise SplitError(f"fractions must be three numbers (train, val, test) in [0, 1] summing to 1, got {fractions}")
    return values  # type: ignore[return-value]


def hash_splits(
    video_names: Iterable[str], fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT
) -> np.ndarray:
    """Split name (``train``/``val``/``test``) per video for (train, val, test) ``fractions``."""
    _, val, test = _check_fractions(fractions)
    units = np.array([hash_unit(str(name), salt) for name in video_names], dtype=np.float64)
    labels = np.full(len(units), "train", dtype=object)
    # Cut from the top, so the test set of a fixed test fraction does not move when only
    # the val fraction changes.
    labels[units >= 1.0 - test - val] = "val"
    labels[units >= 1.0 - test] = "test"
    return labels


def column_splits(values: Iterable[object], column: str = SPLIT_COLUMN, source: str = "annotation table") -> np.ndarray:
    """Validated split names from a ``split`` column (row numbers in errors are 1-based data rows)."""
    labels = np.array([str(v).strip().lower() if isinstance(v, str) else v for v in values], dtype=object)
    bad = [i for i, label in enumerate(labels) if label not in SPLIT_NAMES]
    if bad:
        listed = ", ".join(f"row {i + 1}: {labels[i]!r}" for i in bad[:5])
        raise SplitError(
            f"{source}: column {column!r} must be one of {list(SPLIT_NAMES)}; {len(bad)} row(s) are not "
            f"(1-based data rows, header not counted): {listed}{' ...' if len(bad) > 5 else ''}"
        )
    return labels


def legacy_random_split(
    n: int, train_fraction: float = LEGACY_TRAIN_FRACTION, seed: int = LEGACY_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) of the earlier ``random_split`` with ``manual_seed(seed)``.

    Written out instead of calling ``random_split`` so the rule is visible: lengths
    ``int(train_fraction * n)`` and the rest, taken in order from one ``torch.randperm``.
    """
    train_size = int(train_fraction * n)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return permutation[:train_size].astype(np.int64), permutation[train_size:].astype(np.int64)


def legacy_splits(n: int, train_fraction: float = LEGACY_TRAIN_FRACTION, seed: int = LEGACY_SEED) -> np.ndarray:
    labels = np.full(n, "train", dtype=object)
    labels[legacy_random_split(n, train_fraction, seed)[1]] = "val"
    return labels


def assign_splits(
    table: pd.DataFrame,
    method: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    salt: str = DEFAULT_SALT,
    seed: int = LEGACY_SEED,
    train_fraction: float = LEGACY_TRAIN_FRACTION,
    source: str = "annotation table",
) -> pd.Series:
    """Split name per row of ``table`` (a Series aligned with it, named ``split``).

    ``method``: "hash" (uses ``val_fraction``, ``test_fraction``, ``salt``), "column",
    "random42" (uses ``seed`` and ``train_fraction``, the earlier 42 / 0.9) or "auto"; see
    the module docstring. ``table`` needs ``video_name`` ("hash") or ``split`` ("column").
    """
    if method not in SPLIT_METHODS:
        raise SplitError(f"split method must be one of {SPLIT_METHODS}, got {method!r}")
    if method == "auto":
        method = "column" if SPLIT_COLUMN in table else "hash"
    if method == "column":
        if SPLIT_COLUMN not in table:
            raise SplitError(f"{source}: split method 'column' needs a {SPLIT_COLUMN!r} column")
        labels = column_splits(table[SPLIT_COLUMN], source=source)
    elif method == "random42":
        labels = legacy_splits(len(table), train_fraction, seed)
    else:
        fractions = (max(0.0, 1.0 - val_fraction - test_fraction), val_fraction, test_fraction)
        labels = hash_splits(table["video_name"], fractions, salt)
    return pd.Series(labels, index=table.index, name=SPLIT_COLUMN, dtype=object)


def split_indices(labels: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
    """Row indices (int64, ascending) of each split name in ``labels``; every split present."""
    labels = np.asarray(labels, dtype=object)
    return {name: np.flatnonzero(labels == name).astype(np.int64) for name in SPLIT_NAMES}


def select_split(
    table: pd.DataFrame,
    split: str,
    *,
    method: str | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    trained_with: Mapping | None = None,
    source: str = "annotation table",
) -> tuple[np.ndarray, pd.Series, dict]:
    """Rows of one split (``train``/``val``/``test``, or ``all``) of ``table`` for a trained model.

    What is not given (``None``) is taken from ``trained_with`` (a training checkpoint's config:
    ``split``, ``val_fraction``, ``test_fraction``), so by default a model is looked at on the
    split it was trained with; failing that ``auto`` and 0.1 / 0.1.  Returns the row indices,
    every row's split label, and how the split was made (``from_checkpoint``: the checkpoint
    chose the method).
    """
    if split not in (*SPLIT_NAMES, "all"):
        raise SplitError(f"split must be one of {[*SPLIT_NAMES, 'all']}, got {split!r}")
    config = trained_with or {}
    method_used = method or config.get("split") or "auto"
    val = val_fraction if val_fraction is not None else config.get("val_fraction", 0.1)
    test = test_fraction if test_fraction is not None else config.get("test_fraction", 0.1)
    labels = assign_splits(table, method=method_used, val_fraction=val, test_fraction=test, source=source)
    rows = np.arange(len(table)) if split == "all" else np.flatnonzero((labels == split).to_numpy())
    how = {
        "method": method_used,
        "val_fraction": val,
        "test_fraction": test,
        "from_checkpoint": method is None and "split" in config,
    }
    return rows, labels, how
