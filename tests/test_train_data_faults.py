"""Bad videos and early stopping in the real loop."""

import shutil

import pandas as pd
import pytest
from launch_helpers import train

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
    no_eval = dict(val_fraction=0.0, test_fraction=0.0)
    res = train(out, (root, annotations), batch_size=4, epochs=1, split="hash", **no_eval)
    rows = [line.split("\t") for line in (out / "bad_videos.tsv").read_text().splitlines()]
    reported = {video for _, video, _ in rows}
    assert reported and reported <= bad
    for _, video, error in rows:
        assert video in error or "missing" in error  # the error names the file
    assert res.checkpoint()["counters"]["bad_videos"] == len(rows)


def test_bad_video_error_mode_stops_naming_the_file(damaged_demo, tmp_path):
    root, annotations, bad = damaged_demo
    no_eval = dict(val_fraction=0.0, test_fraction=0.0)
    res = train(tmp_path / "run", (root, annotations), ok=False, batch_size=4, epochs=1, bad_video="error", **no_eval)
    assert any(name in res.stdout for name in bad), res.stdout[-3000:]


def test_early_stopping_on_a_metric_that_stops_improving(tiny_demo, tmp_path):
    out = tmp_path / "run"
    # val/clips is the same every epoch: the first validation sets the best, the second does not improve
    stopping = dict(early_stop_metric="val/clips", patience=1)
    res = train(out, tiny_demo, batch_size=4, epochs=5, val_fraction=0.25, test_fraction=0, **stopping)
    assert "early stopping: val/clips did not improve for 1 validations" in res.stdout
    last, best = res.checkpoint("last.pt"), res.checkpoint("best.pt")
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
    res = train(out, (root, annotations), nproc=2, batch_size=2, epochs=1, bn="train")
    # counted up front, before training, and listed in the output dir (the test split is not read)
    table = pd.read_csv(annotations)
    split = dict(zip(table["video_name"], assign_splits(table, method="hash", val_fraction=0.1, test_fraction=0.1)))
    expected = {name for name in missing if split[name] != "test"}
    assert expected, "the fixture should remove some training/validation videos"
    assert f"{len(expected)} table videos are not in --videos {root}" in res.stdout
    listed = {line.split("\t")[1] for line in (out / "missing_videos.txt").read_text().splitlines()}
    assert listed == expected
    state = res.checkpoint()
    assert state["counters"]["too_small_steps"] >= 1
    assert res.stdout.count("micro-batch(es) shrank to one clip") == state["counters"]["too_small_steps"]
    assert state["counters"]["bad_videos"] >= state["counters"]["too_small_steps"]


def test_batch_size_one_trains_at_normal_sizes_and_is_refused_where_batchnorm_cannot(tiny_demo, tmp_path):
    common = dict(batch_size=1, bn="train", max_steps=2, val_every=0)
    refused = train(tmp_path / "tiny", tiny_demo, ok=False, **common, frames=4, size=32)
    assert "training-mode BatchNorm needs more than one" in refused.stdout, refused.stdout[-3000:]
    assert "Traceback" not in refused.stdout
    trained = train(tmp_path / "ok", tiny_demo, **common, frames=8, size=64)
    state = trained.checkpoint()
    assert state["step"] == 2 and state["counters"]["too_small_steps"] == 0


def test_a_video_root_holding_none_of_the_table_is_refused(tiny_demo, tmp_path):
    _, annotations = tiny_demo
    (tmp_path / "empty").mkdir()
    res = train(tmp_path / "run", (tmp_path / "empty", annotations), ok=False, epochs=1)
    assert "none of the" in res.stdout and f"--videos {tmp_path / 'empty'}" in res.stdout, res.stdout[-3000:]


def test_the_decoding_limits_reach_training(tiny_demo, tmp_path):
    """--max-video-pixels (a DecodePolicy flag) turns every demo clip away: each is a counted, reported
    bad video, every step is skipped as empty, and the run still ends normally."""
    out = tmp_path / "run"
    res = train(out, tiny_demo, batch_size=4, epochs=1, val_every=0, max_video_pixels=100)
    rows = [line.split("\t") for line in (out / "bad_videos.tsv").read_text().splitlines()]
    assert rows and all("--max-video-pixels" in error for _, _, error in rows)
    state = res.checkpoint()
    assert state["step"] == 0 and state["counters"]["bad_videos"] == len(rows) > 0
    assert state["counters"]["empty_steps"] > 0
