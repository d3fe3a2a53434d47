"""Splits: stable under row order, right fractions, the split column, the earlier seed-42 split."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from datasets.splits import (
    DEFAULT_SALT,
    SplitError,
    assign_splits,
    column_splits,
    hash_splits,
    hash_unit,
    legacy_random_split,
    split_indices,
)

NAMES = [f"clip_{i:05d}.mp4" for i in range(10_000)]


def test_hash_split_does_not_depend_on_row_order_or_other_rows():
    labels = dict(zip(NAMES, hash_splits(NAMES)))
    shuffled = list(np.random.default_rng(3).permutation(NAMES))
    assert dict(zip(shuffled, hash_splits(shuffled))) == labels
    subset = NAMES[::7]
    assert list(hash_splits(subset)) == [labels[n] for n in subset]
    table = pd.DataFrame({"video_name": shuffled}, index=np.arange(5, 10_005))
    split = assign_splits(table)  # auto -> hash without a split column
    assert split.name == "split" and split.index.equals(table.index)
    assert list(split) == [labels[n] for n in shuffled]
    assert list(assign_splits(table, method="hash")) == list(split)


def test_hash_split_fractions_on_10k_names():
    counts = pd.Series(hash_splits(NAMES)).value_counts(normalize=True)
    assert counts["train"] == pytest.approx(0.8, abs=0.02)
    assert counts["val"] == pytest.approx(0.1, abs=0.015)
    assert counts["test"] == pytest.approx(0.1, abs=0.015)
    counts = pd.Series(hash_splits(NAMES, fractions=(0.6, 0.0, 0.4))).value_counts(normalize=True)
    assert "val" not in counts and counts["train"] == pytest.approx(0.6, abs=0.02)
    table = pd.DataFrame({"video_name": NAMES})
    counts = assign_splits(table, val_fraction=0.2, test_fraction=0.05).value_counts(normalize=True)
    assert counts["val"] == pytest.approx(0.2, abs=0.015) and counts["test"] == pytest.approx(0.05, abs=0.01)
    everything_held_out = assign_splits(table, val_fraction=0.5, test_fraction=0.5)
    assert "train" not in set(everything_held_out)


def test_test_set_stays_put_when_only_val_fraction_changes():
    table = pd.DataFrame({"video_name": NAMES})
    a = assign_splits(table, method="hash", val_fraction=0.1, test_fraction=0.1)
    b = assign_splits(table, method="hash", val_fraction=0.25, test_fraction=0.1)
    assert (a == "test").equals(b == "test")


def test_hash_scheme_is_pinned():
    # Changing the hash or the salt would silently move videos between train and test.
    digest = hashlib.blake2b(f"{DEFAULT_SALT}\0abc.mp4".encode(), digest_size=8).digest()
    assert hash_unit("abc.mp4") == int.from_bytes(digest, "big") / 2**64
    assert DEFAULT_SALT == "moments-annotations-split-v1"
    assert hash_unit("abc.mp4", salt="other") != hash_unit("abc.mp4")
    assert 0.0 <= min(hash_unit(n) for n in NAMES[:500]) and max(hash_unit(n) for n in NAMES[:500]) < 1.0


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (-0.1, 0.6, 0.5)])
def test_bad_fractions(fractions):
    with pytest.raises(SplitError, match="fractions"):
        hash_splits(NAMES[:3], fractions=fractions)


def test_split_column_is_used_and_checked():
    table = pd.DataFrame({"video_name": ["a", "b", "c"], "split": ["train", " Val ", "test"]})
    assert list(assign_splits(table)) == ["train", "val", "test"]
    bad = pd.DataFrame({"video_name": list("abcd"), "split": ["train", "validation", np.nan, "test"]})
    with pytest.raises(SplitError) as error:
        assign_splits(bad, source="labels.csv")
    message = str(error.value)
    assert "labels.csv" in message and "row 2: 'validation'" in message and "row 3: nan" in message
    assert "2 row(s)" in message
    with pytest.raises(SplitError, match="needs a 'split' column"):
        assign_splits(pd.DataFrame({"video_name": ["a"]}), method="column")
    with pytest.raises(SplitError, match="method"):
        assign_splits(table, method="random")
    assert list(assign_splits(table.drop(columns="split").assign(split=["test"] * 3), method="column")) == ["test"] * 3
    assert list(column_splits(["TEST"])) == ["test"]


@pytest.mark.parametrize("n", [10, 1001, 43392])
def test_legacy_split_reproduces_torch_random_split_with_seed_42(n):
    train_size = int(0.9 * n)
    train, val = torch.utils.data.random_split(
        range(n), [train_size, n - train_size], generator=torch.Generator().manual_seed(42)
    )
    mine_train, mine_val = legacy_random_split(n)
    assert mine_train.tolist() == list(train.indices)
    assert mine_val.tolist() == list(val.indices)
    table = pd.DataFrame({"video_name": [f"v{i}" for i in range(n)], "split": "test"})
    labels = assign_splits(table, method="random42", val_fraction=0.3, test_fraction=0.3)  # fractions don't apply
    parts = split_indices(labels.to_numpy())
    assert parts["train"].tolist() == sorted(train.indices) and parts["val"].tolist() == sorted(val.indices)
    assert len(parts["test"]) == 0


def test_split_indices():
    parts = split_indices(np.array(["val", "train", "test", "train"], dtype=object))
    assert {k: v.tolist() for k, v in parts.items()} == {"train": [1, 3], "val": [0], "test": [2]}
    assert all(v.dtype == np.int64 for v in parts.values())
