"""Bad videos and early stopping in the real loop."""

import shutil

import pandas as pd
import pytest
import torch
from launch_helpers import TINY, run_train

from datasets import assign_splits

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
    res = run_train(
        [
            "--videos",
            str(root),
            "--annotations",
            str(annotations),
            "--output-dir",
            str(out),
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--split",
            "hash",
            "--val-fraction",
            "0.0",
            "--test-fraction",
            "0.0",
            *TINY,
        ],
        timeout=600,
    )
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
    res = run_train(
        [
            "--videos",
            str(root),
            "--annotations",
            str(annotations),
            "--output-dir",
            str(tmp_path / "run"),
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--bad-video",
            "error",
            "--val-fraction",
            "0.0",
            "--test-fraction",
            "0.0",
            *TINY,
        ],
        timeout=600,
    )
    assert res.returncode != 0
    assert any(name in res.stdout for name in bad), res.stdout[-3000:]


def test_early_stopping_on_a_metric_that_stops_improving(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    out = tmp_path / "run"
    # val/clips is the same every epoch: the first validation sets the best, the second does not improve
    res = run_train(
        [
            "--videos",
            str(videos),
            "--annotations",
            str(annotations),
            "--output-dir",
            str(out),
            "--batch-size",
            "4",
            "--epochs",
            "5",
            "--val-fraction",
            "0.25",
            "--test-fraction",
            "0",
            "--early-stop-metric",
            "val/clips",
            "--patience",
            "1",
            *TINY,
        ],
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    assert "early stopping: val/clips did not improve for 1 validations" in res.stdout
    last = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] == 1
    assert {k: last["early_stopping"][k] for k in ("best", "bad_validations", "best_epoch", "last_step")} == {
        "best": best["early_stopping"]["best"],
        "bad_validations": 1,
        "best_epoch": 1,
        "last_step": last["step"],
    }


@pytest.fixture
def demo_with_missing_files(tiny_demo, tmp_path):
    """The tiny demo table with 10 of its videos deleted from a copy of the video root."""
    videos, annotations = tiny_demo
    root = tmp_path / "videos"
    shutil.copytree(videos, root)
    missing = pd.read_csv(annotations)["video_name"].tolist()[::4][:10]
    for name in missing:
        next(root.rglob(name)).unlink()
    return root, annotations, set(missing)


def test_micro_batches_shrunk_to_one_clip_are_skipped_on_every_rank(demo_with_missing_files, tmp_path):
    """At 4 frames x 32 px layer4 is 1x1x1 per clip: a micro-batch of 2 that loses a clip to a
    missing file would crash training-mode BatchNorm.  Both ranks skip that step instead."""
    root, annotations, missing = demo_with_missing_files
    out = tmp_path / "run"
    res = run_train(
        [
            "--videos",
            str(root),
            "--annotations",
            str(annotations),
            "--output-dir",
            str(out),
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--bn",
            "train",
            *TINY,
        ],
        nproc=2,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    # counted up front, before training, and listed in the output dir (the test split is not read)
    table = pd.read_csv(annotations)
    split = dict(zip(table["video_name"], assign_splits(table, method="hash", val_fraction=0.1, test_fraction=0.1)))
    expected = {name for name in missing if split[name] != "test"}
    assert expected, "the fixture should remove some training/validation videos"
    assert f"{len(expected)} table videos are not in --videos {root}" in res.stdout
    listed = {line.split("\t")[1] for line in (out / "missing_videos.txt").read_text().splitlines()}
    assert listed == expected
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["counters"]["too_small_steps"] >= 1
    assert res.stdout.count("micro-batch(es) shrank to one clip") == state["counters"]["too_small_steps"]
    assert state["counters"]["bad_videos"] >= state["counters"]["too_small_steps"]


def test_batch_size_one_trains_at_normal_sizes_and_is_refused_where_batchnorm_cannot(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    common = [
        "--videos",
        str(videos),
        "--annotations",
        str(annotations),
        "--batch-size",
        "1",
        "--bn",
        "train",
        "--max-steps",
        "2",
        "--val-every",
        "0",
        "--depth",
        "18",
        "--num-workers",
        "0",
        "--no-progress",
        "--no-system-metrics",
        "--no-log-model",
        "--no-log-checkpoints",
    ]
    refused = run_train([*common, "--output-dir", str(tmp_path / "tiny"), "--frames", "4", "--size", "32"])
    assert refused.returncode != 0
    assert "training-mode BatchNorm needs more than one" in refused.stdout, refused.stdout[-3000:]
    assert "Traceback" not in refused.stdout
    trained = run_train([*common, "--output-dir", str(tmp_path / "ok"), "--frames", "8", "--size", "64"])
    assert trained.returncode == 0, trained.stdout[-4000:]
    state = torch.load(tmp_path / "ok" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2 and state["counters"]["too_small_steps"] == 0


def test_a_video_root_holding_none_of_the_table_is_refused(tiny_demo, tmp_path):
    _, annotations = tiny_demo
    (tmp_path / "empty").mkdir()
    res = run_train(
        [
            "--videos",
            str(tmp_path / "empty"),
            "--annotations",
            str(annotations),
            "--output-dir",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            *TINY,
        ]
    )
    assert res.returncode != 0
    assert "none of the" in res.stdout and f"--videos {tmp_path / 'empty'}" in res.stdout, res.stdout[-3000:]


def test_the_decoding_limits_reach_training(tiny_demo, tmp_path):
    """--max-video-pixels (a DecodePolicy flag) turns every demo clip away: each is a counted, reported
    bad video, every step is skipped as empty, and the run still ends normally."""
    videos, annotations = tiny_demo
    out = tmp_path / "run"
    res = run_train(
        [
            "--videos",
            str(videos),
            "--annotations",
            str(annotations),
            "--output-dir",
            str(out),
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--val-every",
            "0",
            "--max-video-pixels",
            "100",
            *TINY,
        ],
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    rows = [line.split("\t") for line in (out / "bad_videos.tsv").read_text().splitlines()]
    assert rows and all("--max-video-pixels" in error for _, _, error in rows)
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 0 and state["counters"]["bad_videos"] == len(rows) > 0
    assert state["counters"]["empty_steps"] > 0
