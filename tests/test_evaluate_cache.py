"""evaluate.py --cache: test-time views from a frame cache, and the loop's own validation on the
cache reproduced from best.pt."""

import numpy as np
import pandas as pd
import pytest
import torch
from eval_fixtures import compare_eval_with_training_validation
from fixture_files import prepare_demo_cache
from launch_helpers import train

import evaluate
from datasets import FrameCache, MultiViewCachedDataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache8(tiny_demo, tmp_path_factory):
    """The tiny demo set prepared with 8 frames of 40 px (room for 2 temporal views of 4 frames)."""
    videos, annotations = tiny_demo
    out = prepare_demo_cache(tiny_demo, tmp_path_factory.mktemp("cache8") / "demo", frames=8, stored_size=40)
    return out, annotations, videos


def test_temporal_views_are_the_interleaved_stored_frames(cache8):
    cache_dir, annotations, _ = cache8
    names = pd.read_csv(annotations)["video_name"].tolist()[:3]
    cache = FrameCache(cache_dir)
    ds = MultiViewCachedDataset(cache, names + ["not-in-the-cache.mp4"], num_frames=4, size=32, temporal_views=2)
    for i, name in enumerate(names):
        item = ds[i]
        assert item["error"] is None and item["video"].shape == (2, 3, 4, 40, 40)
        stored = cache.read_raw(cache.row(name), list(range(8))).permute(1, 0, 2, 3)  # (3, 8, S, S)
        # with K = N x T the N x T segment centres are all K frames; view i is every N-th
        assert torch.equal(item["video"][0], stored[:, 0::2]) and torch.equal(item["video"][1], stored[:, 1::2])
    missing = ds[3]
    assert missing["video"] is None and "not-in-the-cache.mp4" in missing["error"]
    assert "no clip in frame cache" in missing["error"]
    # one view of 4 of the 8 frames: segment centres 1, 3, 5, 7 (as for a video of 8 frames)
    one = MultiViewCachedDataset(cache, names[:1], num_frames=4, size=32)
    assert one.indices.tolist() == [1, 3, 5, 7]


def test_what_the_cache_cannot_serve_is_refused(cache8):
    cache_dir, annotations, _ = cache8
    names = pd.read_csv(annotations)["video_name"].tolist()[:2]
    with pytest.raises(ValueError, match="keeps only the centre square"):
        MultiViewCachedDataset(cache_dir, names, num_frames=4, size=32, spatial_views=3)
    with pytest.raises(ValueError, match=r"3 temporal views of 4 frames need 12 distinct frames.*keeps 8"):
        MultiViewCachedDataset(cache_dir, names, num_frames=4, size=32, temporal_views=3)
    with pytest.raises(ValueError, match="it keeps 8 frames per clip but the run uses --frames 16"):
        MultiViewCachedDataset(cache_dir, names, num_frames=16, size=32)


def test_evaluate_with_cache_reproduces_the_training_validation_on_the_cache(cache8, tmp_path):
    cache_dir, annotations, videos = cache8
    out = tmp_path / "run"
    trained = train(out, None, cache=cache_dir, annotations=annotations, epochs=2, batch_size=8)
    best = out / "checkpoints" / "best.pt"
    rc = evaluate.main(
        [
            "--checkpoint",
            str(best),
            "--cache",
            str(cache_dir),
            "--annotations",
            str(annotations),
            "--split",
            "val",
            "--output-dir",
            str(tmp_path / "eval"),
            "--num-workers",
            "0",
            "--no-progress",
            "--run-id",
            "checkpoint",
            "--no-plots",
        ]
    )
    assert rc == 0
    client, (run,) = trained.mlflow_runs()
    assert run.data.params["cache"] == str(cache_dir)
    assert compare_eval_with_training_validation(client, run) == 10  # 8 score Spearmans + 2 accuracies
    # two temporal views of the same videos: different inputs, still one row per video
    rc = evaluate.main(
        [
            "--checkpoint",
            str(best),
            "--cache",
            str(cache_dir),
            "--annotations",
            str(annotations),
            "--split",
            "val",
            "--output-dir",
            str(tmp_path / "eval2"),
            "--num-workers",
            "0",
            "--no-progress",
            "--no-mlflow",
            "--no-plots",
            "--views",
            "2x1",
        ]
    )
    assert rc == 0
    one = pd.read_csv(tmp_path / "eval" / "predictions_val.csv")
    two = pd.read_csv(tmp_path / "eval2" / "predictions_val.csv")
    assert one["video_name"].tolist() == two["video_name"].tolist() and len(one) == 4
    assert not np.allclose(one["valence_score"], two["valence_score"])


def test_evaluate_refuses_spatial_views_from_a_cache_with_a_clear_message(cache8, tmp_path):
    cache_dir, annotations, videos = cache8
    out = tmp_path / "run"
    train(out, None, cache=cache_dir, annotations=annotations, max_steps=1, batch_size=4)
    with pytest.raises(SystemExit, match="--cache: .*keeps only the centre square.*use --views 1x1"):
        evaluate.main(
            [
                "--checkpoint",
                str(out / "checkpoints" / "last.pt"),
                "--cache",
                str(cache_dir),
                "--annotations",
                str(annotations),
                "--output-dir",
                str(tmp_path / "eval"),
                "--no-progress",
                "--no-mlflow",
                "--views",
                "1x3",
            ]
        )
