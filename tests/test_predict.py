"""predict.py: folders, list files, bad videos get a row with their error; checkpoints of both kinds."""

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from eval_fixtures import DEPTH, FRAMES, SIZE, save_tiny_checkpoint
from fixture_files import texture
from launch_helpers import REPO, free_port, run
from web_video_files import FAULTS, write_partial_mp4

import predict
from datasets.video import write_video
from inference import load_inference_model
from resnet3d import CheckpointMismatchError, build_model
from utils.evaluation import prediction_columns_for_csv
from utils.tasks import TASKS


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    clips = root / "clips"
    (clips / "nested").mkdir(parents=True)
    write_video(clips / "a.mp4", texture(12, 32, 48, 0), 10)
    write_video(clips / "nested" / "b.mp4", texture(9, 40, 32, 1), 10)
    write_video(root / "whole.mp4", texture(20, 32, 48, 2), 10)
    whole = (root / "whole.mp4").read_bytes()
    (clips / "c_truncated.mp4").write_bytes(whole[: len(whole) // 2])  # index at the end, cut off: unreadable
    write_partial_mp4(clips / "c_partial.mp4", texture(20, 32, 48, 4), 10)  # index first: partial, predicted
    (clips / "corrupt.mp4").write_bytes(np.random.default_rng(3).bytes(3000))
    (clips / "notes.json").write_text("{}")  # not a video: not taken from the folder
    (clips / ".hidden.mp4").write_bytes(b"")  # hidden: skipped
    (root / "list.txt").write_text("# clips to score\nclips/a.mp4\n\nwhole.mp4\nmissing.mp4\n")
    checkpoint = save_tiny_checkpoint(root / "train")
    return root, checkpoint


def expected_order(root):
    clips = root / "clips"
    return [
        str(clips / "a.mp4"),
        str(clips / "c_partial.mp4"),
        str(clips / "c_truncated.mp4"),
        str(clips / "corrupt.mp4"),
        str(clips / "nested" / "b.mp4"),
        str(root / "clips/a.mp4"),
        str(root / "whole.mp4"),
        str(root / "missing.mp4"),
        str(root / "gone.avi"),
    ]


def predict_args(root, checkpoint, output, *extra):
    return [
        "--checkpoint",
        str(checkpoint),
        str(root / "clips"),
        str(root / "list.txt"),
        str(root / "gone.avi"),
        "--output",
        str(output),
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]


def test_folder_with_corrupt_video_keeps_every_row(inputs, tmp_path):
    root, checkpoint = inputs
    out = tmp_path / "pred.csv"
    assert predict.main(predict_args(root, checkpoint, out)) == 0
    frame = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(frame.columns) == ["video", "video_name", *prediction_columns_for_csv(TASKS), "error"]
    assert frame["video"].tolist() == expected_order(root)
    bad = {
        "c_truncated.mp4": "InvalidDataError",
        "corrupt.mp4": "InvalidDataError",
        "missing.mp4": "no such file",
        "gone.avi": "no such file",
    }
    predicted = prediction_columns_for_csv(TASKS)
    for _, row in frame.iterrows():
        if row["video_name"] in bad:
            assert bad[row["video_name"]] in row["error"] and row["video"] in row["error"]
            assert row[predicted].isna().all()
        else:
            assert pd.isna(row["error"])
            assert row[predicted].notna().all()
            assert str(row["peoplecount"]) in ("0", "1", "2", "3", "many")
    good = frame[frame["error"].isna()]
    scores = good[[c for c in predicted if c.endswith(("_score", "_confidence")) and c != "location_score"]]
    assert ((scores >= 0) & (scores <= 1)).all().all()
    # the same file listed twice gets the same prediction (up to batched-convolution rounding)
    same = good[good["video_name"] == "a.mp4"]
    assert len(same) == 2 and np.allclose(same["distance_score"].iloc[0], same["distance_score"].iloc[1], atol=1e-5)


@pytest.mark.slow
def test_two_processes_write_the_same_csv(inputs, tmp_path):
    root, checkpoint = inputs
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert predict.main(predict_args(root, checkpoint, one, "--batch-size", "1", "--device", "cpu")) == 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(REPO / "predict.py"),
        *predict_args(root, checkpoint, two, "--batch-size", "1", "--device", "cpu"),
    ]
    res = run(cmd, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    assert one.read_text() == two.read_text()


def test_every_video_failing_is_exit_code_one(inputs, tmp_path):
    root, checkpoint = inputs
    out = tmp_path / "bad.csv"
    assert (
        predict.main(
            [
                "--checkpoint",
                str(checkpoint),
                str(root / "clips" / "corrupt.mp4"),
                str(root / "nope.mp4"),
                "--output",
                str(out),
                "--num-workers",
                "0",
                "--no-progress",
            ]
        )
        == 1
    )
    assert pd.read_csv(out)["error"].notna().all()
    with pytest.raises(SystemExit, match="no videos found"):
        predict.main(
            ["--checkpoint", str(checkpoint), str(root / "clips"), "--extensions", ".webm", "--output", str(out)]
        )


def test_earlier_lightning_checkpoint_predicts_like_the_same_weights(inputs, tmp_path):
    """depth and tasks are read from the tensor names; frames and size come from flags."""
    root, checkpoint = inputs
    ours = torch.load(checkpoint, weights_only=True)
    lightning = {"state_dict": {f"model.{k}": v for k, v in ours["model"].items()}, "epoch": 3}
    path = tmp_path / "seed.ckpt"
    torch.save(lightning, path)
    model, spec = load_inference_model(str(path), frames=FRAMES, size=SIZE)
    assert spec.kind == "lightning" and spec.depth == DEPTH and spec.tasks == TASKS and not spec.notes
    _, spec_default = load_inference_model(str(path))
    assert (spec_default.frames, spec_default.size) == (
        16,
        224,
    ) and "does not record the clip shape" in spec_default.notes[0]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    video = str(root / "clips" / "a.mp4")
    assert predict.main(["--checkpoint", str(checkpoint), video, "--output", str(a), "--num-workers", "0"]) == 0
    assert (
        predict.main(
            [
                "--checkpoint",
                str(path),
                video,
                "--output",
                str(b),
                "--num-workers",
                "0",
                "--frames",
                str(FRAMES),
                "--size",
                str(SIZE),
            ]
        )
        == 0
    )
    assert a.read_text() == b.read_text()


def test_checkpoints_that_cannot_predict_are_refused_clearly(tmp_path):
    backbone = build_model(depth=18, tasks=("distance",)).state_dict()
    mit = {k: v for k, v in backbone.items() if not k.startswith("last_linear")}
    mit["last_linear.weight"], mit["last_linear.bias"] = torch.zeros(305, 512), torch.zeros(305)
    path = tmp_path / "mit.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in mit.items()}}, path)
    with pytest.raises(CheckpointMismatchError, match="no multi-task head"):
        load_inference_model(str(path))
    subset = save_tiny_checkpoint(tmp_path / "sub", tasks=("valence", "location"))
    with pytest.raises(CheckpointMismatchError, match="trained on tasks"):
        load_inference_model(str(subset), tasks="distance")
    model, spec = load_inference_model(str(subset))
    assert spec.tasks == ("valence", "location") and (spec.frames, spec.size) == (FRAMES, SIZE)
    assert prediction_columns_for_csv(spec.tasks) == [
        "valence_score",
        "valence_confidence",
        "location_score",
        "location_confidence",
        "location_p_outdoor",
    ]


def test_web_faults_are_predicted_or_get_the_reason_in_their_row(inputs, web_faults, tmp_path):
    _, checkpoint = inputs
    out, strict = tmp_path / "web.csv", tmp_path / "strict.csv"
    common = ["--checkpoint", str(checkpoint), str(web_faults), "--num-workers", "0", "--no-progress"]
    assert predict.main([*common, "--output", str(out)]) == 0
    rows = pd.read_csv(out, keep_default_na=False, na_values=[""]).set_index("video_name")
    assert sorted(rows.index) == sorted(FAULTS)
    assert "VideoTooLargeError: longer than 30 s" in rows.loc["long.mp4", "error"]
    assert "VideoTooLargeError: frames of 3840x2160" in rows.loc["huge.mp4", "error"]
    predicted = [n for n in FAULTS if n not in ("long.mp4", "huge.mp4")]  # the partial one too
    assert rows.loc[predicted, "error"].isna().all() and rows.loc[predicted, "valence_score"].notna().all()
    assert predict.main([*common, "--output", str(strict), "--partial-videos", "skip"]) == 0
    rows = pd.read_csv(strict, keep_default_na=False, na_values=[""]).set_index("video_name")
    assert "PartialVideoError: partial file" in rows.loc["partial.mp4", "error"]
