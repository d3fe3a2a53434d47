"""`python -m datasets.clean_annotations`: end to end in a subprocess like a user runs it (twice;
each start imports the whole `datasets` package, ~4 s), the other cases in-process via main()."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from datasets.clean_annotations import main
from utils.tasks import SCORE_FEATURES

ROOT = Path(__file__).parent.parent  # the repo root (tests/..); not resolved, so a mirrored checkout works


def run_clean(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "datasets.clean_annotations", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def question_files(folder):
    """Raw files as the annotation script wrote them: one per question, messy values included."""
    files = []
    for f in SCORE_FEATURES:
        header = [
            "video_name",
            "model",
            "question_name",
            f"model_{f}_explanation",
            f"model_{f}_confidence",
            f"model_{f}_score",
        ]
        rows = [
            ["a.mp4", "gpt", f, "why", "0.9", "0.75"],
            ["b.mp4", "gpt", f, "I'm sorry, I can't assist with that.", "", ""],
        ]
        files.append(write_csv(folder / f"{f}.csv", header, rows))
    scene = [
        "video_name",
        "model",
        "question_name",
        "model_peoplecount_certain",
        "model_peoplecount",
        "model_location_explanation",
        "model_location_confidence",
        "model_location",
    ]
    files.append(
        write_csv(
            folder / "scene.csv",
            scene,
            [
                ["a.mp4", "gpt", "scene_analysis", "False", "2.0", "a room", "0.9", "indoors"],
                ["b.mp4", "gpt", "scene_analysis", "False", "numerous", "a beach", "0.8", "Outdoors"],
                ["c.mp4", "gpt", "scene_analysis", "", "uncertain, likely many", "?", "0.4", "underwater"],
            ],
        )
    )
    return files


def test_clean_command_merges_raw_files_and_prints_summary(tmp_path):
    out = tmp_path / "clean.csv"
    result = run_clean(*question_files(tmp_path), "--out", out, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert list(table["video_name"]) == ["a.mp4", "b.mp4", "c.mp4"]
    assert list(table.columns[:3]) == ["video_name", "distance_score", "distance_confidence"]
    assert table["distance_score"].tolist() == ["0.8", "", ""]  # 0.75 -> 0.8 (half to even of 7.5)
    assert table["distance_confidence"].tolist() == ["0.9", "0.0", "0.0"]
    assert table["peoplecount"].tolist() == ["2", "many", ""]
    assert table["peoplecount_certain"].tolist() == ["False", "True", ""]
    assert table["location_score"].tolist() == ["Indoor", "Outdoor", ""]
    assert table["distance_explanation"].tolist()[1] == "I'm sorry, I can't assist with that."
    assert "location_explanation" in table and "question_name" not in table

    stdout = result.stdout
    assert "rows: 3" in stdout
    assert "values that could not be mapped (set to unknown): 2" in stdout
    assert "peoplecount: 'uncertain, likely many' x1" in stdout and "location_score: 'underwater' x1" in stdout
    lines = {
        line.split()[0]: line.split()[-1]
        for line in stdout.splitlines()
        if line.startswith("  ") and len(line.split()) == 2
    }
    assert lines["distance_score"] == "1" and lines["video_name"] == "3" and lines["location_score"] == "2"

    # cleaning the cleaned table again changes nothing
    again = tmp_path / "again.csv"
    assert main([str(out), "--out", str(again)]) == 0
    assert again.read_text() == out.read_text()


def test_clean_command_error_exits_nonzero_and_writes_nothing(tmp_path):
    files = question_files(tmp_path)
    out = tmp_path / "clean.csv"
    duplicate = write_csv(
        tmp_path / "distance_rerun.csv",
        ["video_name", "model_distance_score", "model_distance_confidence"],
        [["c.mp4", "0.1", "0.2"], ["a.mp4", "0.3", "0.4"]],
    )
    result = run_clean(*files, duplicate, "--out", out, cwd=ROOT)
    assert result.returncode == 1
    assert "distance.csv" in result.stderr and "distance_rerun.csv" in result.stderr and "'a.mp4'" in result.stderr
    assert not out.exists()


def test_on_duplicate_last(tmp_path, capsys):
    files = question_files(tmp_path)
    duplicate = write_csv(
        tmp_path / "distance_rerun.csv",
        ["video_name", "model_distance_score", "model_distance_confidence"],
        [["c.mp4", "0.1", "0.2"], ["a.mp4", "0.3", "0.4"]],
    )
    out = tmp_path / "clean.csv"
    assert main([*map(str, files), str(duplicate), "--out", str(out), "--on-duplicate", "last"]) == 0
    assert pd.read_csv(out)["distance_score"].tolist()[0] == 0.3
    assert "duplicate cells resolved" in capsys.readouterr().out


def test_bad_tables_exit_1_naming_file_row_column(tmp_path, capsys):
    bad = write_csv(
        tmp_path / "bad.csv",
        ["video_name", "model_distance_score", "model_distance_confidence"],
        [["x.mp4", "0.1", "0.2"], ["y.mp4", "lots", "0.2"]],
    )
    assert main([str(bad), "--out", str(tmp_path / "bad_out.csv"), "--tasks", "distance"]) == 1
    err = capsys.readouterr().err
    assert "bad.csv" in err and "'model_distance_score'" in err and "data row 2" in err
    assert not (tmp_path / "bad_out.csv").exists()

    partial = write_csv(
        tmp_path / "partial.csv",
        ["video_name", "model_distance_score", "model_distance_confidence"],
        [["x.mp4", "0.1", "0.2"]],
    )
    assert main([str(partial), "--out", str(tmp_path / "partial_out.csv")]) == 1  # only distance columns
    assert "missing required column(s)" in capsys.readouterr().err
    assert main([str(bad), "--out", str(bad)]) == 1
    assert "also an input" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.csv")]) == 1
    assert "nope.csv" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".clean_annotations.")]  # no temp files left
