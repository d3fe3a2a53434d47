"""evaluate.py under torchrun: every video exactly once, identical metrics for 1, 2 and 3 ranks."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
from eval_fixtures import save_tiny_checkpoint
from launch_helpers import REPO, free_port, run

pytestmark = pytest.mark.slow

N_VIDEOS = 13  # neither 2 nor 3 divides it: a padded sampler would count some videos twice


def evaluate_command(args, nproc):
    if nproc == 1:
        return [sys.executable, str(REPO / "evaluate.py"), *args]  # no process group at all
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        str(REPO / "evaluate.py"),
        *args,
    ]


@pytest.fixture(scope="module")
def small_set(tiny_demo, tmp_path_factory):
    """12 demo videos plus one row whose video does not exist, and human ratings of 10 of them."""
    videos, annotations = tiny_demo
    root = tmp_path_factory.mktemp("exact")
    table = pd.read_csv(annotations).iloc[: N_VIDEOS - 1]
    ghost = table.iloc[[0]].assign(video_name="ghost_video.mp4")
    table = pd.concat([table, ghost], ignore_index=True)
    table.to_csv(root / "annotations.csv", index=False)
    rng = np.random.default_rng(0)
    rows = [
        (f"p{s}", name, q, int(rng.integers(1, 6)))
        for s in range(5)
        for name in table["video_name"][:10]
        for q in ("valence", "agent distance", "indoor")
    ]
    pd.DataFrame(rows, columns=["subjectID", "video_name", "question_name", "likert_response"]).to_csv(
        root / "human.csv", index=False
    )
    checkpoint = save_tiny_checkpoint(root / "train")
    return videos, root / "annotations.csv", root / "human.csv", checkpoint, root


def test_metrics_identical_for_one_two_and_three_ranks(small_set):
    videos, annotations, human, checkpoint, root = small_set
    outputs = {}
    for nproc in (1, 2, 3):
        out = root / f"eval_{nproc}"
        # batch size 1: a clip's result then does not depend on which clips share its batch
        # (batched CPU convolutions differ in the 7th digit), so files can be compared byte for byte
        args = [
            "--checkpoint",
            str(checkpoint),
            "--videos",
            str(videos),
            "--annotations",
            str(annotations),
            "--split",
            "all",
            "--output-dir",
            str(out),
            "--batch-size",
            "1",
            "--num-workers",
            "0",
            "--human-ratings",
            str(human),
            "--ceiling-splits",
            "20",
            "--no-mlflow",
            "--no-plots",
            "--no-progress",
            "--device",
            "cpu",
        ]
        res = run(evaluate_command(args, nproc), timeout=300)
        assert res.returncode == 0, res.stdout[-4000:]
        outputs[nproc] = out
    texts = {n: (o / "metrics_all.json").read_text() for n, o in outputs.items()}
    assert texts[1] == texts[2] == texts[3]
    csvs = {n: (o / "predictions_all.csv").read_text() for n, o in outputs.items()}
    assert csvs[1] == csvs[2] == csvs[3]
    result = json.loads(texts[1])
    assert result["n_videos"] == N_VIDEOS and result["n_failed"] == 1
    assert result["metrics"]["peoplecount"]["n"] == N_VIDEOS - 1
    assert sum(map(sum, result["metrics"]["peoplecount"]["confusion_matrix"])) == N_VIDEOS - 1
    assert result["human"]["features"]["valence"]["n_videos"] == 10
    for nproc, out in outputs.items():
        info = json.loads((out / "info_all.json").read_text())
        assert info["world_size"] == nproc
        assert [f["video_name"] for f in info["failed"]] == ["ghost_video.mp4"]
    frame = pd.read_csv(outputs[3] / "predictions_all.csv")
    assert len(frame) == N_VIDEOS and frame["video_name"].is_unique
    assert frame.loc[frame["video_name"] == "ghost_video.mp4", "distance_score"].isna().all()
