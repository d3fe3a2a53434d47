"""Reading human rating tables: long and wide form, name mapping, errors naming file/row/column."""

import pytest

from analysis.human_ratings import HumanRatingsError, feature_for, load_human_ratings, video_key


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


LONG = """subjectID,video_name,question_name,likert_response
s1,yawning/a.mp4,Agent Distance,1
s1,b.mp4,agent distance,5
s2,a.mp4,TRANSITIVITY,3
s2,a.mp4,indoor,4
s3,b.mp4,cooperation,2
s3,b.mp4,how funny,2
s3,b.mp4,valence,
s1,a.mp4,agent_distance,2
"""


def test_long_form_mapping_likert_and_reports(tmp_path):
    r = load_human_ratings(write(tmp_path, "long.csv", LONG))
    assert r.form == "long"
    df = r.ratings.set_index(["subject", "video_key", "task"])["rating"]
    # s1 rated a.mp4 twice on distance (1 and 2): averaged, (x - 1) / 4
    assert df[("s1", "a", "distance")] == pytest.approx(((1 - 1) / 4 + (2 - 1) / 4) / 2)
    assert df[("s1", "b", "distance")] == pytest.approx(1.0)
    assert df[("s2", "a", "object")] == pytest.approx(0.5)  # transitivity -> object
    assert df[("s2", "a", "location")] == pytest.approx(0.75)
    assert r.direction_for("location") == -1 and r.direction_for("object") == 1
    assert r.unmatched == {"cooperation": 1} and r.unknown == {"how funny": 1}
    assert r.skipped_empty == 1 and r.repeated_averaged == 1
    assert set(r.tasks) == {"distance", "object", "location"}
    text = "\n".join(r.summary_lines())
    assert "no model output for: cooperation" in text and "'how funny'" in text and "1 - p(Outdoor)" in text


@pytest.mark.parametrize(
    "value, message",
    [
        ("6", "row 2, column 'likert_response': 6 is outside the Likert range 1-5"),
        ("0", "row 2, column 'likert_response': 0 is outside the Likert range 1-5"),
        ("five", "row 2, column 'likert_response': 'five' is not a number"),
    ],
)
def test_long_form_bad_values_name_file_row_column(tmp_path, value, message):
    path = write(
        tmp_path,
        "bad.csv",
        f"subjectID,video_name,question_name,likert_response\ns1,a.mp4,valence,3\ns1,b.mp4,valence,{value}\n",
    )
    with pytest.raises(HumanRatingsError) as err:
        load_human_ratings(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_long_form_empty_names_and_clashing_questions(tmp_path):
    path = write(
        tmp_path,
        "empty.csv",
        "subjectID,video_name,question_name,likert_response\ns1,a.mp4,valence,3\n,b.mp4,valence,2\n",
    )
    with pytest.raises(HumanRatingsError, match=r"row 2, column 'subjectID' is empty"):
        load_human_ratings(path)
    path = write(
        tmp_path,
        "clash.csv",
        "subjectID,video_name,question_name,likert_response\ns1,a.mp4,distance,3\ns1,b.mp4,agent distance,2\n",
    )
    with pytest.raises(HumanRatingsError, match="'distance' and 'agent distance' both map"):
        load_human_ratings(path)
    with pytest.raises(HumanRatingsError, match=r"missing \['likert_response'\]"):
        load_human_ratings(write(tmp_path, "cols.csv", "subjectID,video_name,question_name\ns,a,b\n"), form="long")


WIDE_HEADER = (
    "video_name,indoor,expanse,transitivity,agent distance,facingness,joint action,communication,"
    "cooperation,dominance,intimacy,valence,arousal\n"
)
WIDE = (
    WIDE_HEADER
    + """a.mp4,1,2.5,3,1,5,2,1.5,3,3,3,4,2
b.mp4,0,4,1,5,1,,5,2,2,2,1,5
"""
)


def test_wide_form_study_columns(tmp_path):
    r = load_human_ratings(write(tmp_path, "wide.csv", WIDE))
    assert r.form == "wide" and set(r.ratings["subject"]) == {"mean"}
    df = r.ratings.set_index(["video_key", "task"])["rating"]
    assert df[("a", "expanse")] == pytest.approx(0.375)  # Likert mean 2.5 -> (2.5 - 1) / 4
    assert df[("b", "distance")] == pytest.approx(1.0)
    assert df[("a", "location")] == pytest.approx(1.0)  # 0/1 column: already in [0, 1]
    assert r.scales["indoor"] == "unit" and r.scales["expanse"] == "likert"
    assert ("b", "joint") not in df.index  # empty cell = not rated
    assert set(r.unmatched) == {"cooperation", "dominance", "intimacy"}
    assert set(r.tasks) == {
        "location",
        "expanse",
        "object",
        "distance",
        "facingness",
        "joint",
        "communicating",
        "valence",
        "arousal",
    }


def test_wide_form_errors_and_forced_scale(tmp_path):
    path = write(tmp_path, "w.csv", "video_name,valence\na.mp4,3\nb.mp4,7\n")
    with pytest.raises(HumanRatingsError, match=r"row 2, column 'valence': 7 is outside the Likert range 1-5"):
        load_human_ratings(path)
    path = write(tmp_path, "w2.csv", "video_name,valence\na.mp4,0.5\nb.mp4,-0.1\n")
    with pytest.raises(HumanRatingsError, match=r"row 2, column 'valence': -0.1 is outside"):
        load_human_ratings(path)
    path = write(tmp_path, "w3.csv", "video_name,valence\nx/a.mp4,3\na.avi,2\n")
    with pytest.raises(HumanRatingsError, match=r"video 'a' appears in more than one row \(rows \[1, 2\]\)"):
        load_human_ratings(path)
    path = write(tmp_path, "w4.csv", "video_name,valence\na.mp4,1\nb.mp4,1\n")
    assert load_human_ratings(path, scale="likert").ratings["rating"].tolist() == [0.0, 0.0]
    assert load_human_ratings(path).ratings["rating"].tolist() == [1.0, 1.0]
    with pytest.raises(HumanRatingsError, match="no video_name column"):
        load_human_ratings(write(tmp_path, "w5.csv", "clip,valence\na,1\n"))
    with pytest.raises(HumanRatingsError, match="no ratings of any feature"):
        load_human_ratings(write(tmp_path, "w6.csv", "video_name,cooperation\na,1\n"))


def test_invert_and_names(tmp_path):
    r = load_human_ratings(write(tmp_path, "wide.csv", WIDE), invert=["communication"])
    df = r.ratings.set_index(["video_key", "task"])["rating"]
    assert df[("a", "communicating")] == pytest.approx(1 - 0.125)
    assert r.inverted == ["communicating"]
    with pytest.raises(HumanRatingsError, match="cannot invert 'dominance'"):
        load_human_ratings(write(tmp_path, "wide2.csv", WIDE), invert=["dominance"])
    assert feature_for(" Joint_Action ") == ("joint", 1) and feature_for("cooperation") is None
    assert video_key("yawning\\-2DPYvJ5j9E_117.mp4") == "-2DPYvJ5j9E_117" == video_key("-2DPYvJ5j9E_117")
