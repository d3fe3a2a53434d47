"""Bad annotation tables fail with a message naming the file, the (1-based data) row and the column."""

import pytest
from fixture_files import write_csv

from datasets.annotations import AnnotationError, load_annotation_table
from utils.tasks import SCORE_FEATURES

HEADER = (
    ["video_name"]
    + [f"model_{f}_{k}" for f in SCORE_FEATURES for k in ("score", "confidence")]
    + ["model_peoplecount", "model_peoplecount_certain", "model_location", "model_location_confidence"]
)


def good_row(name):
    return [name] + ["0.5"] * (2 * len(SCORE_FEATURES)) + ["2", "True", "Indoor", "0.9"]


def test_duplicate_video_names_in_one_file(tmp_path):
    path = write_csv(
        tmp_path / "dups.csv", HEADER, [good_row("a.mp4"), good_row("b.mp4"), good_row("c.mp4"), good_row("b.mp4")]
    )
    with pytest.raises(AnnotationError) as error:
        load_annotation_table(path)
    message = str(error.value)
    assert path in message and "'b.mp4' in data rows 2, 4" in message and "duplicate video_name" in message


def test_duplicates_across_files_name_both_files_and_rows(tmp_path):
    one = write_csv(tmp_path / "one.csv", HEADER, [good_row("a.mp4"), good_row("b.mp4")])
    two = write_csv(tmp_path / "two.csv", HEADER, [good_row("c.mp4"), good_row("d.mp4"), good_row("b.mp4")])
    with pytest.raises(AnnotationError) as error:
        load_annotation_table([one, two])
    message = str(error.value)
    assert one in message and two in message
    assert f"'b.mp4' ({one} data row 2, {two} data row 3)" in message


def test_missing_required_columns_are_named(tmp_path):
    header = [c for c in HEADER if c not in ("model_joint_confidence", "model_location")]
    rows = [[v for c, v in zip(HEADER, good_row("a.mp4")) if c in header]]
    path = write_csv(tmp_path / "partial.csv", header, rows)
    with pytest.raises(AnnotationError) as error:
        load_annotation_table(path)
    message = str(error.value)
    assert path in message and "joint_confidence" in message and "location_score" in message
    assert "model_location" in message  # the raw spelling, too
    # fine when those tasks are not asked for
    load_annotation_table(path, tasks=[f for f in SCORE_FEATURES if f != "joint"] + ["peoplecount"])


def test_missing_video_name_column(tmp_path):
    path = write_csv(tmp_path / "noname.csv", HEADER[1:], [good_row("a.mp4")[1:]])
    with pytest.raises(AnnotationError, match="noname.csv: missing required column 'video_name'"):
        load_annotation_table(path)


def test_unparseable_number_names_file_row_and_column(tmp_path):
    rows = [good_row("a.mp4"), good_row("b.mp4"), good_row("c.mp4")]
    rows[1][HEADER.index("model_valence_confidence")] = "high"
    path = write_csv(tmp_path / "bad.csv", HEADER, rows)
    with pytest.raises(AnnotationError) as error:
        load_annotation_table(path)
    message = str(error.value)
    assert path in message and "'model_valence_confidence'" in message
    assert "data row 2 (video_name 'b.mp4'): 'high'" in message and "1-based data rows" in message


def test_empty_video_name_is_an_error(tmp_path):
    path = write_csv(tmp_path / "empty.csv", HEADER, [good_row("a.mp4"), good_row("  ")])
    with pytest.raises(AnnotationError, match=r"empty.csv: column 'video_name' is empty in data row\(s\) 2"):
        load_annotation_table(path)


def test_two_columns_for_one_field(tmp_path):
    path = write_csv(tmp_path / "both.csv", HEADER + ["model_location_score"], [good_row("a.mp4") + ["Outdoor"]])
    with pytest.raises(AnnotationError, match="'model_location' and 'model_location_score' both hold 'location_score'"):
        load_annotation_table(path)


def test_repeated_header_column(tmp_path):
    path = write_csv(tmp_path / "repeat.csv", HEADER + ["model_distance_score"], [good_row("a.mp4") + ["0.1"]])
    with pytest.raises(
        AnnotationError, match=r"repeat.csv: column\(s\) \['model_distance_score'\] appear more than once"
    ):
        load_annotation_table(path)


@pytest.mark.parametrize("kind", ["missing", "directory", "binary", "empty"])
def test_unreadable_files_name_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.csv"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"video_name,distance_score\n\xff\xfe\x00\x81,\x9c\n")
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(AnnotationError, match=f"{kind}.csv"):
        load_annotation_table(str(path))


def test_bad_on_duplicate_value(tmp_path):
    path = write_csv(tmp_path / "ok.csv", HEADER, [good_row("a.mp4")])
    with pytest.raises(ValueError, match="on_duplicate"):
        load_annotation_table(path, on_duplicate="newest")
