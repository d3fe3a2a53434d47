"""Bad videos and early stopping in the real loop."""

import shutil

import pandas as pd
import pytest
import torch

from launch_helpers import TINY, run_train

pytestmark = pytest.mark.slow


@pytest.fixture
def damaged_demo(tiny_demo, tmp_path):
    """The tiny demo set with 4 corrupt, 1 empty and 1 missing video."""
    videos, annotations = tiny_demo
    root = tmp_path / "videos"
    shutil.copytree(videos, root)
    names = pd.read_csv(annotations)["video_name"].tolist()
    bad = names[:6]
    paths = [next(root.rglob(name)) for name in bad]  # the generator uses sub-folders, like MiT
    for path in paths[:4]:
        path.write_bytes(b"\x00\x01 definitely not an mp4" * 50)
    paths[4].write_bytes(b"")
    paths[5].unlink()
    return root, annotations, set(bad)


def test_bad_videos_are_skipped_counted_and_reported(damaged_demo, tmp_path):
    root, annotations, bad = damaged_demo
    out = tmp_path / "run"
    res = run_train(["--videos", str(root), "--annotations", str(annotations), "--output-dir", str(out),
                     "--batch-size", "4", "--epochs", "1", "--split", "hash", "--val-fraction", "0.0",
                     "--test-fraction", "0.0", *TINY], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    rows = [line.split("\t") for line in (out / "bad_videos.tsv").read_text().splitlines()]
    reported = {video for _, video, _ in rows}
    assert reported and reported <= bad
    for _, video, error in rows:
        assert video in error or "missing" in error  # the error names the file
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["counters"]["bad_videos"] == len(rows)


def test_bad_video_error_mode_stops_naming_the_file(damaged_demo, tmp_path):
    root, annotations, bad = damaged_demo
    res = run_train(["--videos", str(root), "--annotations", str(annotations), "--output-dir", str(tmp_path / "run"),
                     "--batch-size", "4", "--epochs", "1", "--bad-video", "error", "--val-fraction", "0.0",
                     "--test-fraction", "0.0", *TINY], timeout=600)
    assert res.returncode != 0
    assert any(name in res.stdout for name in bad), res.stdout[-3000:]


def test_early_stopping_on_a_metric_that_stops_improving(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    out = tmp_path / "run"
    # val/clips is the same every epoch: the first validation sets the best, the second does not improve
    res = run_train(["--videos", str(videos), "--annotations", str(annotations), "--output-dir", str(out),
                     "--batch-size", "4", "--epochs", "5", "--val-fraction", "0.25", "--test-fraction", "0",
                     "--early-stop-metric", "val/clips", "--patience", "1", *TINY], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "early stopping: val/clips did not improve for 1 validations" in res.stdout
    last = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] == 1
    assert last["early_stopping"] == {"best": best["early_stopping"]["best"], "bad_validations": 1}
