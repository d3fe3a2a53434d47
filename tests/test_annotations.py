"""Annotation tables: normalization of every messy raw value we know of, clean pass-through, targets."""

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from fixture_files import write_csv

from datasets.annotations import (
    NormalizationReport,
    build_targets,
    load_annotation_table,
    normalize_peoplecount,
)
from utils.tasks import SCORE_FEATURES

# Every location value seen in the raw files -> canonical value (None = unknown).
LOCATIONS = {
    "outdoor": "Outdoor",
    "Indoor": "Indoor",
    "outdoors": "Outdoor",
    "Outdoors": "Outdoor",
    "indoors": "Indoor",
    "underwater": None,
    "undetermined": None,
    "both": None,
    "Mixed": None,
    "Unknown": None,
    "Indoor/Outdoor": None,
    "Outdoor, Indoor": None,
    "Combination of Indoor and Outdoor": None,
    "": None,
}
# Every people-count value seen in the raw files -> canonical value (None = unknown).
PEOPLECOUNTS = {
    "2.0": "2",
    "'3'": "3",
    "3": "3",
    "50.0": "many",
    "1000.0": "many",
    "0": "0",
    "1.0": "1",
    "many": "many",
    "Many": "many",
    "numerous": "many",
    "Numerous": "many",
    "multiple": "many",
    "3 or more": "many",
    "15-20": "many",
    "over 50": "many",
    "hundreds": "many",
    "uncertain, likely many": None,
    "difficult to estimate due to crowd": "many",
    "": None,
}
REFUSAL = "I'm sorry, I can't assist with that."


def messy_raw_table(path):
    """One raw file holding every messy value, one row per value (the lists are padded)."""
    n = max(len(LOCATIONS), len(PEOPLECOUNTS))
    locations = (list(LOCATIONS) * 2)[:n]
    counts = (list(PEOPLECOUNTS) * 2)[:n]
    header = ["video_name", "model", "model_response"]
    for f in SCORE_FEATURES:
        header += [f"model_{f}_score", f"model_{f}_confidence", f"model_{f}_explanation"]
    header += [
        "model_peoplecount",
        "model_peoplecount_certain",
        "model_location",
        "model_location_confidence",
        "model_location_explanation",
    ]
    scores = ["0.7", "1.3", "-0.2", "0.26", "0.25", "", "0.94", "1"]
    confidences = ["0.9", "", "1.5", "0.33", "-1", "0.8", "nan", "0.1"]
    certain = ["True", "False", "", "true", "0"]
    rows = []
    for i in range(n):
        row = [f"video_{i:02d}.mp4", "gpt-4o", "{...}"]
        for j, _ in enumerate(SCORE_FEATURES):
            row += [scores[(i + j) % len(scores)], confidences[(i + j) % len(confidences)], REFUSAL if i == 0 else "ok"]
        row += [counts[i], certain[i % len(certain)], locations[i], confidences[i % len(confidences)], "expl"]
        rows.append(row)
    return write_csv(path, header, rows), locations, counts, scores, confidences, certain


def expected_number(text, confidence):
    if text.strip().lower() in ("", "nan"):
        return 0.0 if confidence else math.nan
    return round(min(max(float(text), 0.0), 1.0), 1)  # Python round is half-to-even too


def test_every_messy_raw_value_is_normalized(tmp_path):
    path, locations, counts, scores, confidences, certain = messy_raw_table(tmp_path / "raw.csv")
    table, report = load_annotation_table(path)

    assert list(table["video_name"]) == [f"video_{i:02d}.mp4" for i in range(len(locations))]
    assert [None if pd.isna(v) else v for v in table["location_score"]] == [LOCATIONS[v] for v in locations]
    assert [None if pd.isna(v) else v for v in table["peoplecount"]] == [PEOPLECOUNTS[v] for v in counts]

    for j, f in enumerate(SCORE_FEATURES):
        want_score = [expected_number(scores[(i + j) % len(scores)], False) for i in range(len(locations))]
        want_conf = [expected_number(confidences[(i + j) % len(confidences)], True) for i in range(len(locations))]
        np.testing.assert_array_equal(table[f"{f}_score"].to_numpy(), np.array(want_score))
        np.testing.assert_array_equal(table[f"{f}_confidence"].to_numpy(), np.array(want_conf))
    assert table["location_confidence"].notna().all()

    # certain: parsed, then True wherever the count is many
    for i, value in enumerate(table["peoplecount_certain"]):
        raw = certain[i % len(certain)].lower()
        if PEOPLECOUNTS[counts[i]] == "many":
            assert value is True or value == True  # noqa: E712 (pandas BooleanDtype scalar)
        elif raw in ("true", "false", "0"):
            assert bool(value) == (raw == "true")
        else:
            assert pd.isna(value)

    # explanations kept, refusals included; unrelated raw columns ignored and reported
    assert table["distance_explanation"].iat[0] == REFUSAL
    assert "location_explanation" in table and "model_response" not in table and "model" not in table
    assert report.ignored_columns == {path: ["model", "model_response"]}

    # every unmappable non-empty value is counted, nothing else
    want_unmapped = {
        "location_score": Counter(v for v in locations if v and LOCATIONS[v] is None),
        "peoplecount": Counter(v for v in counts if v and PEOPLECOUNTS[v] is None),
    }
    assert report.unmapped == want_unmapped
    assert report.unmapped["peoplecount"] == Counter({"uncertain, likely many": 1})
    assert report.total_unmapped == sum(sum(c.values()) for c in want_unmapped.values())
    assert report.recoded["location_score"][("outdoors", "Outdoor")] == locations.count("outdoors")
    assert report.recoded["peoplecount"][("difficult to estimate due to crowd", "many")] == 1
    assert ("Indoor", "Indoor") not in report.recoded["location_score"]
    assert report.rows == len(table) and report.files == [path]
    assert report.clipped["distance_score"] == sum(
        1 for i in range(len(table)) if scores[i % len(scores)] in ("1.3", "-0.2")
    )
    assert report.filled["distance_confidence"] == sum(
        1 for i in range(len(table)) if confidences[i % len(confidences)] in ("", "nan")
    )
    assert report.certain_set_by_many > 0
    text = "\n".join(report.summary_lines())
    assert "'uncertain, likely many' x1" in text and "'Mixed' x" in text


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2", "2"),
        ("4", "many"),
        ("2.5", None),
        ("-1", None),
        ("inf", None),
        ("2-3", None),
        ("20 to 30", "many"),
        ("3-3", "3"),
        ("more than 4", "many"),
        ("over 1", None),
        ("5+", "many"),
        ("at least 3", "many"),
        ("several", None),
        ("  MANY  ", "many"),
        ('"numerous"', "many"),
    ],
)
def test_peoplecount_rules(value, expected):
    assert normalize_peoplecount(value) == expected


CLEAN_CSV = """\
video_name,distance_score,distance_confidence,object_score,object_confidence,expanse_score,expanse_confidence,\
facingness_score,facingness_confidence,communicating_score,communicating_confidence,joint_score,joint_confidence,\
valence_score,valence_confidence,arousal_score,arousal_confidence,peoplecount,peoplecount_certain,location_score,\
location_confidence,distance_explanation,scene_analysis_explanation,split
a.mp4,0.3,0.9,1.0,0.8,0.5,0.7,0.0,0.6,0.1,0.5,0.2,0.4,0.8,0.9,0.4,1.0,2,False,Indoor,0.9,"close, touching",x,train
b.mp4,,0.0,0.6,0.8,0.5,0.7,0.0,0.6,,0.0,0.2,0.4,0.8,0.9,0.4,1.0,many,True,Outdoor,0.8,"two
lines",,val
c.mp4,0.7,0.5,0.6,0.8,0.5,0.7,0.0,0.6,0.1,0.5,,0.0,0.8,0.9,0.4,1.0,,True,,0.0,,y,test
d.mp4,1.0,1.0,0.6,0.8,0.5,0.7,0.0,0.6,0.1,0.5,0.2,0.4,0.8,0.9,0.4,1.0,0,False,Indoor,1.0,,,train
"""


def test_clean_table_passes_through_unchanged(tmp_path):
    path = tmp_path / "clean.csv"
    path.write_text(CLEAN_CSV, encoding="utf-8")
    table, report = load_annotation_table(str(path))
    assert table.to_csv(index=False) == CLEAN_CSV
    assert report.unmapped == {} and report.recoded == {}
    assert not report.clipped and not report.rounded and not report.filled
    assert report.certain_set_by_many == 0 and report.ignored_columns == {}
    assert table["peoplecount_certain"].dtype == "boolean"


def test_partial_tables_need_only_the_selected_tasks(tmp_path):
    path = write_csv(
        tmp_path / "distance.csv",
        ["video_name", "model_distance_score", "model_distance_confidence"],
        [["a.mp4", "0.4", "0.5"]],
    )
    table, _ = load_annotation_table(path, tasks="distance")
    assert list(table.columns) == ["video_name", "distance_score", "distance_confidence"]


def test_raw_question_files_are_merged_per_video(tmp_path):
    scene = write_csv(
        tmp_path / "scene.csv",
        ["video_name", "model_peoplecount", "model_peoplecount_certain", "model_location", "model_location_confidence"],
        [["b.mp4", "many", "False", "outdoors", "0.8"], ["a.mp4", "1", "True", "Indoor", "0.9"]],
    )
    distance = write_csv(
        tmp_path / "distance.csv",
        ["video_name", "model_distance_score", "model_distance_confidence"],
        [["a.mp4", "0.4", "0.5"], ["c.mp4", "0.1", ""]],
    )
    table, report = load_annotation_table([scene, distance], tasks="distance,peoplecount,location")
    assert list(table["video_name"]) == ["b.mp4", "a.mp4", "c.mp4"]  # first-seen order
    row = table.set_index("video_name")
    assert row.loc["a.mp4", "distance_score"] == 0.4 and row.loc["a.mp4", "location_score"] == "Indoor"
    assert math.isnan(row.loc["b.mp4", "distance_score"])
    assert row.loc["b.mp4", "distance_confidence"] == 0.0  # absent from the distance file -> 0
    assert pd.isna(row.loc["c.mp4", "peoplecount"]) and row.loc["c.mp4", "location_confidence"] == 0.0
    assert bool(row.loc["b.mp4", "peoplecount_certain"]) is True  # many -> certain
    assert report.filled == Counter({"distance_confidence": 2, "location_confidence": 1})
    assert report.certain_set_by_many == 1


def test_on_duplicate_first_and_last(tmp_path):
    header = ["video_name", "model_distance_score", "model_distance_confidence"]
    one = write_csv(tmp_path / "one.csv", header, [["a.mp4", "0.1", "0.5"], ["b.mp4", "0.2", "0.5"]])
    two = write_csv(tmp_path / "two.csv", header, [["b.mp4", "0.9", "0.6"], ["c.mp4", "0.3", "0.5"]])
    first, report = load_annotation_table([one, two], tasks="distance", on_duplicate="first")
    last, _ = load_annotation_table([one, two], tasks="distance", on_duplicate="last")
    assert first["distance_score"].tolist() == [0.1, 0.2, 0.3]
    assert last["distance_score"].tolist() == [0.1, 0.9, 0.3]
    assert last["distance_confidence"].tolist() == [0.5, 0.6, 0.5]
    assert report.duplicates_resolved == 2  # two cells of b.mp4


def test_build_targets_encodings():
    table = pd.DataFrame(
        {
            "video_name": ["a", "b", "c"],
            **{f"{f}_score": [0.3, np.nan, 1.0] for f in SCORE_FEATURES},
            **{f"{f}_confidence": [0.9, 0.0, 0.5] for f in SCORE_FEATURES},
            "peoplecount": pd.Series(["many", np.nan, "0"], dtype="str"),
            "peoplecount_certain": pd.Series([True, pd.NA, False], dtype="boolean"),
            "location_score": pd.Series(["Indoor", "Outdoor", np.nan], dtype="str"),
            "location_confidence": [0.8, 0.6, 0.0],
        }
    )
    targets = build_targets(table)
    assert len(targets) == 20
    np.testing.assert_array_equal(targets["peoplecount"], np.array([4, -1, 0]))
    assert targets["peoplecount"].dtype == np.int64
    np.testing.assert_array_equal(targets["peoplecount_certain"], np.array([1.0, np.nan, 0.0], dtype=np.float32))
    np.testing.assert_array_equal(targets["location_score"], np.array([0.0, 1.0, np.nan], dtype=np.float32))
    np.testing.assert_array_equal(targets["distance_score"], np.array([0.3, np.nan, 1.0], dtype=np.float32))
    assert all(v.dtype == np.float32 for k, v in targets.items() if k != "peoplecount")

    only = build_targets(table, tasks="location")
    assert set(only) == {"location_score", "location_confidence"}
    with pytest.raises(ValueError, match="location_confidence"):
        build_targets(table.drop(columns=["location_confidence"]))
    bad = table.assign(location_score=pd.Series(["Indoor", "inside", np.nan], dtype="str"))
    with pytest.raises(ValueError, match="'inside'"):
        build_targets(bad, tasks="location")


def test_report_starts_empty():
    report = NormalizationReport()
    assert report.total_unmapped == 0
    assert "values that could not be mapped: none" in report.summary_lines()
    assert str(report) == "\n".join(report.summary_lines())
