"""What align_features.py reads: the extract_features.py directory (analysis/extracted_features.py)
and human ratings with every feature kept (load_human_ratings(all_features=True))."""

import json

import numpy as np
import pandas as pd
import pytest
from align_fixtures import write_feature_dir

from analysis.extracted_features import FeatureDirError, open_feature_dir
from analysis.human_ratings import HumanRatingsError, load_human_ratings


@pytest.fixture
def feature_dir(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"v{i}.mp4" for i in range(6)]
    layers = {
        "conv": rng.normal(size=(6, 3, 2, 2, 2)).astype(np.float16),
        "pooled": rng.normal(size=(6, 5)).astype(np.float32),
    }
    return write_feature_dir(tmp_path / "f", names, layers, status=["ok", "error", "ok", "pending", "ok", "ok"]), layers


def test_reads_layers_as_rows_by_columns_in_chunks(feature_dir):
    root, layers = feature_dir
    features = open_feature_dir(root)
    assert features.layers == ["conv", "pooled"]
    assert features.status_counts() == {"ok": 4, "error": 1, "pending": 1}
    assert features.ok_rows.tolist() == [0, 2, 4, 5]
    matrix = features.matrix("conv")
    assert matrix.shape == (6, 24) and isinstance(matrix, np.memmap)  # read on use, not loaded
    rows = features.ok_rows
    blocks = list(features.column_chunks("conv", rows, max_bytes=8 * 4 * 5))  # 5 columns per block
    assert [b.shape for b in blocks] == [(4, 5)] * 4 + [(4, 4)]
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(
        np.concatenate(blocks, axis=1), layers["conv"].reshape(6, -1)[rows].astype(np.float32)
    )


def test_incomplete_extraction_is_refused_unless_allowed(tmp_path):
    root = write_feature_dir(
        tmp_path / "f", ["a", "b"], {"x": np.zeros((2, 3), np.float32)}, status=["ok", "pending"], complete=False
    )
    with pytest.raises(FeatureDirError, match=r"not complete .*1 ok, 0 error, 1 pending.*--allow-incomplete"):
        open_feature_dir(root)
    assert open_feature_dir(root, allow_incomplete=True).ok_rows.tolist() == [0]


def edit_json(root, **changes):
    meta = json.loads((root / "features.json").read_text())
    meta.update(changes)
    (root / "features.json").write_text(json.dumps(meta))


def edit_index(root, row, column, value):
    index = pd.read_csv(root / "index.csv", dtype=str, keep_default_na=False)
    index.loc[row, column] = value
    index.to_csv(root / "index.csv", index=False)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: (r / "features.json").unlink(), r"no features.json"),
        (lambda r: edit_json(r, format_version=2), r"format_version 2; this version reads 1 only"),
        (lambda r: edit_json(r, num_videos=7), r"layer 'conv' has shape \[6, 3, 2, 2, 2\]; expected \[7, ...\]"),
        (lambda r: edit_index(r, 2, "row", "7"), r"index.csv: data row 3, column 'row': '7'; rows must be 0 .. 5"),
        (lambda r: edit_index(r, 4, "status", "done"), r"data row 5, column 'status': 'done'"),
        (lambda r: edit_index(r, 0, "video_name", ""), r"data row 1, column 'video_name' is empty"),
        (lambda r: (r / "pooled.npy").unlink(), r"layer 'pooled': file 'pooled.npy' does not exist"),
    ],
)
def test_broken_directories_are_refused_naming_file_row_and_column(feature_dir, breakage, message):
    root, _ = feature_dir
    breakage(root)
    with pytest.raises(FeatureDirError, match=message):
        open_feature_dir(root)


def test_array_not_as_declared_and_nan_in_an_ok_row_name_the_layer_and_row(feature_dir):
    root, layers = feature_dir
    np.save(root / "pooled.npy", layers["pooled"].astype(np.float16))
    features = open_feature_dir(root)
    with pytest.raises(
        FeatureDirError,
        match=r"pooled.npy: layer 'pooled' is float16\[6, 5\] but features.json says "
        r"float32\[6, 5\]",
    ):
        features.matrix("pooled")
    broken = layers["conv"].copy()
    broken[4, 0, 0, 0, 1] = np.nan
    np.save(root / "conv.npy", broken)
    with pytest.raises(FeatureDirError, match=r"layer 'conv', row 4 \('v4.mp4'\) has status ok but holds NaN"):
        list(features.column_chunks("conv", features.ok_rows, 1 << 20))


def test_human_ratings_keep_every_feature_when_asked(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("video_name,indoor,cooperation,How Funny\na.mp4,1,2,3\nb.mp4,5,4,1\n")
    default = load_human_ratings(path)
    assert default.tasks == ["location"] and default.unmatched == {"cooperation": 2}
    every = load_human_ratings(path, all_features=True, invert=["how funny"])
    assert every.tasks == ["location", "cooperation", "how_funny"]
    assert every.unmatched == {} and every.unknown == {}
    assert every.question_for("how_funny") == "How Funny" and every.direction_for("cooperation") == 1
    r = every.ratings.set_index(["video_key", "task"])["rating"]
    assert r[("a", "cooperation")] == pytest.approx(0.25)
    assert r[("b", "how_funny")] == pytest.approx(1.0)  # Likert 1 -> 0, inverted
    clash = tmp_path / "clash.csv"
    clash.write_text("video_name,indoor,location\na.mp4,1,2\n")
    with pytest.raises(HumanRatingsError, match="'indoor' and 'location' both map to the model's 'location'"):
        load_human_ratings(clash, all_features=True)
