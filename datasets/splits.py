"""Train/val/test splits of an annotation table.

Three ways, chosen by :func:`assign_splits` (``method``):

* ``"hash"`` (default when the table has no ``split`` column): each video goes to a split by
  a stable hash of ``salt + video_name`` (BLAKE2b, first 8 bytes -> a number u in [0, 1)):
  train if u < f_train, val if u < f_train + f_val, else test. Default fractions 0.8/0.1/0.1.
  A video's split depends on its name and the salt only: not on row order, on other rows,
  on the world size or on any RNG state, and it stays put when rows are added.
* ``"column"`` (default when a ``split`` column exists): the table says; values
  ``train``/``val``/``test`` (case and surrounding spaces ignored), anything else is an error
  naming the rows.
* ``"legacy"``: the earlier version's 90/10 train/val split, reproduced exactly. It called
  ``torch.utils.data.random_split(dataset, [int(0.9 * n), n - int(0.9 * n)],
  generator=torch.Generator().manual_seed(42))`` on the whole table in CSV row order, i.e.
  train = the first ``int(0.9 * n)`` entries of ``torch.randperm(n, generator)``, val = the
  rest. Same table, same order, same torch ``randperm`` -> same split. No test split.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_SALT = "moments-annotations-split-v1"
LEGACY_TRAIN_FRACTION = 0.9
LEGACY_SEED = 42
SPLIT_COLUMN = "split"
SPLIT_METHODS = ("auto", "hash", "column", "legacy")


class SplitError(ValueError):
    """Bad split specification or split column; the message names the rows."""


def hash_unit(video_name: str, salt: str = DEFAULT_SALT) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``video_name`` alone."""
    digest = hashlib.blake2b(f"{salt}\0{video_name}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not 0.0 <= f <= 1.0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise SplitError(f"fractions must be three numbers (train, val, test) in [0, 1] summing to 1, got {fractions}")
    return values  # type: ignore[return-value]


def hash_splits(
    video_names: Iterable[str], fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT
) -> np.ndarray:
    """Split name (``train``/``val``/``test``) per video, from :func:`hash_unit`."""
    train, val, _ = _check_fractions(fractions)
    units = np.array([hash_unit(str(name), salt) for name in video_names], dtype=np.float64)
    labels = np.full(len(units), "test", dtype=object)
    labels[units < train + val] = "val"
    labels[units < train] = "train"
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
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
    seed: int = LEGACY_SEED,
    train_fraction: float = LEGACY_TRAIN_FRACTION,
    source: str = "annotation table",
) -> np.ndarray:
    """Split name per row of ``table`` (which needs ``video_name``; ``split`` for "column").

    ``method``: "auto" (the ``split`` column if present, else "hash"), "hash", "column" or
    "legacy"; see the module docstring. ``fractions``/``salt`` are used by "hash",
    ``seed``/``train_fraction`` by "legacy".
    """
    if method not in SPLIT_METHODS:
        raise SplitError(f"split method must be one of {SPLIT_METHODS}, got {method!r}")
    if method == "auto":
        method = "column" if SPLIT_COLUMN in table else "hash"
    if method == "column":
        if SPLIT_COLUMN not in table:
            raise SplitError(f"{source}: split method 'column' needs a {SPLIT_COLUMN!r} column")
        return column_splits(table[SPLIT_COLUMN], source=source)
    if method == "legacy":
        return legacy_splits(len(table), train_fraction, seed)
    return hash_splits(table["video_name"], fractions, salt)


def split_indices(labels: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
    """Row indices (int64, ascending) of each split name in ``labels``; every split present."""
    labels = np.asarray(labels, dtype=object)
    return {name: np.flatnonzero(labels == name).astype(np.int64) for name in SPLIT_NAMES}
