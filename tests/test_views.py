"""Multi-view test-time sampling (datasets/views.py) and view averaging (inference/shards.py)."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from fixture_files import texture

from datasets.augment import frames_to_tensor, resize_center_crop
from datasets.clips import VideoClipDataset
from datasets.video import write_video
from datasets.views import (
    MultiViewClipDataset,
    collate_views,
    multi_view_clips,
    parse_views,
    spatial_crop_offsets,
)
from inference import average_view_probabilities

T, SIZE = 4, 16


def numbered_frames(count, height, width):
    """Frame k is flat grey 8k: which frames a view holds survives lossy coding."""
    return np.stack([np.full((height, width, 3), 8 * k, dtype=np.uint8) for k in range(count)])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    write_video(root / "land.mp4", texture(23, 32, 48, 0), 10)
    write_video(root / "port.mp4", texture(17, 48, 32, 1), 10)
    write_video(root / "numbered.mp4", numbered_frames(30, 32, 32), 10)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(2).bytes(2000))
    return root


def test_parse_views():
    assert parse_views("4x3") == (4, 3) and parse_views("1") == (1, 1) and parse_views("2X1") == (2, 1)
    for bad in ("0x1", "ax3", "1x2x3", ""):
        with pytest.raises(ValueError, match="NxM"):
            parse_views(bad)


def test_one_by_one_view_is_the_training_eval_transform(root):
    names = ["land.mp4", "port.mp4"]
    plain = VideoClipDataset(names, {}, root, num_frames=T, size=SIZE, train=False)
    multi = MultiViewClipDataset(names, {}, root, num_frames=T, size=SIZE)
    for i in range(len(names)):
        a, b = plain[i], multi[i]
        assert a["error"] is None and b["error"] is None, (a["error"], b["error"])
        assert b["video"].shape == (1, *a["video"].shape)
        assert torch.equal(b["video"][0], a["video"]), names[i]


def test_temporal_views_are_evenly_spaced_offsets_inside_each_segment(root):
    n_views, total = 3, 30
    ds = MultiViewClipDataset(["numbered.mp4"], {}, root, num_frames=T, size=SIZE, temporal_views=n_views)
    video = ds[0]["video"]
    assert video.shape == (n_views, 3, T, SIZE, SIZE)
    seen = np.round(video[:, 0, :, SIZE // 2, SIZE // 2].float().numpy() / 8).astype(int)
    for i in range(n_views):
        # view i takes position (i + 0.5) / N inside each of the T segments of the video
        expected = [int(np.floor((k + (i + 0.5) / n_views) * total / T)) for k in range(T)]
        assert seen[i].tolist() == expected
    # the middle view of an odd count is the evaluation clip (segment centres)
    assert seen[1].tolist() == [int(np.floor((k + 0.5) * total / T)) for k in range(T)]


def test_spatial_crops_left_centre_right_and_top_centre_bottom():
    assert spatial_crop_offsets(24, 16, 3) == [0, 4, 8]
    assert spatial_crop_offsets(25, 16, 1) == [int(round(9 / 2))]  # torchvision's centre offset
    assert spatial_crop_offsets(16, 16, 3) == [0, 0, 0]
    with pytest.raises(ValueError):
        spatial_crop_offsets(10, 16, 1)
    frames = texture(T, 32, 48, 5)  # landscape: short side 32 -> 16, long side 48 -> 24
    views = multi_view_clips(frames, T, 1, 3, SIZE)
    centre = multi_view_clips(frames, T, 1, 1, SIZE)
    assert views.shape == (3, 3, T, SIZE, SIZE)
    assert torch.equal(views[1], centre[0])
    assert not torch.equal(views[0], views[2])
    full = frames_to_tensor(frames)
    big = TF.resize(full, [SIZE], antialias=True).permute(1, 0, 2, 3)  # (C, T, 16, 24)
    assert torch.equal(views[0], big[..., :, 0:16]) and torch.equal(views[2], big[..., :, 8:24])
    portrait = multi_view_clips(texture(T, 48, 32, 6), T, 1, 3, SIZE)
    tall = TF.resize(frames_to_tensor(texture(T, 48, 32, 6)), [SIZE], antialias=True).permute(1, 0, 2, 3)
    assert torch.equal(portrait[0], tall[..., 0:16, :]) and torch.equal(portrait[2], tall[..., 8:24, :])
    assert torch.equal(
        portrait[1], resize_center_crop(frames_to_tensor(texture(T, 48, 32, 6)), SIZE).permute(1, 0, 2, 3)
    )


def test_views_order_is_temporal_major_and_collate_keeps_failed_indices(root):
    ds = MultiViewClipDataset(
        ["numbered.mp4", "corrupt.mp4", "absent.mp4"],
        {},
        root,
        num_frames=T,
        size=SIZE,
        temporal_views=2,
        spatial_views=3,
    )
    good = ds[0]["video"]
    assert good.shape == (6, 3, T, SIZE, SIZE)
    # views 0-2 share temporal view 0 (same frames, square video -> identical crops)
    assert torch.equal(good[0], good[2]) and not torch.equal(good[0], good[3])
    batch = collate_views([ds[0], ds[1], ds[2]])
    assert batch["video"].shape == (1, 6, 3, T, SIZE, SIZE)
    assert batch["bad_indices"] == [1, 2]
    assert "missing file" in batch["bad"][1][1]


def test_average_view_probabilities_in_probability_space():
    # two videos x three views, views adjacent
    scores = torch.tensor([0.9, 0.5, 0.1, 0.2, 0.2, 0.8])
    counts = torch.tensor(
        [
            [1.0, 0, 0, 0, 0],
            [0, 1.0, 0, 0, 0],
            [0, 1.0, 0, 0, 0],
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0, 0, 0, 0, 1.0],
            [0, 0, 0, 0, 1.0],
        ]
    )
    out = average_view_probabilities({"distance_score": scores, "peoplecount": counts}, 3)
    assert torch.allclose(out["distance_score"], torch.tensor([0.5, 0.4]))
    assert torch.allclose(out["peoplecount"][0], torch.tensor([1 / 3, 2 / 3, 0, 0, 0]))
    assert torch.allclose(out["peoplecount"].sum(dim=1), torch.ones(2))
    # probability space differs from logit space: the mean of sigmoids is not sigmoid of the mean
    logits = torch.tensor([4.0, -1.0])
    assert average_view_probabilities({"s": torch.sigmoid(logits)}, 2)["s"].item() == pytest.approx(
        (torch.sigmoid(torch.tensor(4.0)) + torch.sigmoid(torch.tensor(-1.0))).item() / 2
    )
    with pytest.raises(ValueError, match="multiple of 4 views"):
        average_view_probabilities({"s": torch.zeros(6)}, 4)
