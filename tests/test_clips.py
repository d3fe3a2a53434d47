"""VideoClipDataset + collate_clips: item/batch format, locating files, bad files, earlier .pt clips, workers."""

import numpy as np
import pytest
import torch
from fixture_files import texture
from torch.utils.data import DataLoader

from datasets.clips import (
    AmbiguousVideoError,
    PtClipsError,
    VideoClipDataset,
    collate_clips,
    scan_video_root,
)
from datasets.video import BadVideoError, write_video

T, SIZE = 4, 16


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    """A Moments-in-Time-like tree: clips in class sub-folders, plus broken files."""
    root = tmp_path_factory.mktemp("videos")
    (root / "talking").mkdir()
    (root / "running" / "deeper").mkdir(parents=True)
    write_video(root / "talking" / "good_a.mp4", texture(20, 32, 48, 0), 10)
    write_video(root / "running" / "deeper" / "good_b.mp4", texture(3, 40, 30, 1), 12)  # short: repeats
    (root / "running" / "corrupt.mp4").write_bytes(np.random.default_rng(2).bytes(3000))
    (root / "running" / "empty.mp4").write_bytes(b"")
    write_video(root / "whole.mp4", texture(20, 32, 48, 3), 10)
    whole = (root / "whole.mp4").read_bytes()
    (root / "talking" / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (root / "whole.mp4").unlink()
    torch.save(torch.randn(3, T, SIZE, SIZE), root / "talking" / "legacy_c.pt")  # an earlier Lightning clip
    (root / ".hidden.mp4").write_bytes(b"")
    return root


NAMES = ["good_a.mp4", "good_b.mp4", "corrupt.mp4", "empty.mp4", "truncated.mp4", "missing.mp4"]


def targets_for(n):
    return {
        "distance_score": np.linspace(0, 1, n),
        "distance_confidence": np.full(n, 0.5),
        "peoplecount": np.arange(n) % 5 - 1,  # -1 = unknown is a valid target
    }


def make_dataset(root, names=NAMES, **kwargs):
    kwargs.setdefault("num_frames", T)
    kwargs.setdefault("size", SIZE)
    return VideoClipDataset(names, targets_for(len(names)), root, **kwargs)


# ----------------------------------------------------------------- locating files
def test_scan_finds_files_in_subfolders(video_root):
    index = scan_video_root(video_root)
    assert index.resolve("good_b.mp4") == str(video_root / "running" / "deeper" / "good_b.mp4")
    assert index.resolve("talking/good_a.mp4") == str(video_root / "talking" / "good_a.mp4")
    assert index.resolve("missing.mp4") is None
    assert index.resolve(".hidden.mp4") is None


def test_a_video_beside_an_earlier_pt_clip_is_read(tmp_path):
    write_video(tmp_path / "x.mp4", texture(4, 16, 16, 0), 10)
    torch.save(torch.zeros(3, T, SIZE, SIZE), tmp_path / "x.pt")
    assert scan_video_root(tmp_path).resolve("x.mp4") == str(tmp_path / "x.mp4")


def test_ambiguous_names_fail_naming_both_paths(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.mp4").write_bytes(b"x")
    (tmp_path / "unique.mp4").write_bytes(b"x")
    with pytest.raises(AmbiguousVideoError) as err:
        VideoClipDataset(["same.mp4"], {}, tmp_path)
    assert str(tmp_path / "a" / "same.mp4") in str(err.value) and str(tmp_path / "b" / "same.mp4") in str(err.value)
    # duplicates that no row asks for do not matter
    assert len(VideoClipDataset(["unique.mp4"], {}, tmp_path)) == 1


def test_missing_root_and_bad_targets_are_clear_errors(video_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoClipDataset(["a.mp4"], {}, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="distance_score"):
        VideoClipDataset(["good_a.mp4", "good_b.mp4"], {"distance_score": np.zeros(3)}, video_root)
    with pytest.raises(ValueError, match="bad_video"):
        make_dataset(video_root, bad_video="ignore")


# ----------------------------------------------------------------- items
def test_item_format(video_root):
    ds = make_dataset(video_root)
    item = ds[0]
    assert set(item) == {"video", "targets", "video_id", "index", "error", "note"}
    assert item["error"] is None and item["note"] is None and item["video_id"] == "good_a.mp4" and item["index"] == 0
    assert item["video"].shape == (3, T, SIZE, SIZE) and item["video"].dtype == torch.uint8
    assert item["targets"]["distance_score"].dtype == torch.float32 and item["targets"]["distance_score"].ndim == 0
    assert item["targets"]["peoplecount"].dtype == torch.int64 and item["targets"]["peoplecount"].item() == -1
    assert ds.missing == ["missing.mp4"]


def test_short_video_repeats_frames(video_root):
    item = make_dataset(video_root)[1]
    assert item["error"] is None and item["video"].shape == (3, T, SIZE, SIZE)


def test_eval_items_are_deterministic_and_ignore_epoch(video_root):
    ds = make_dataset(video_root)
    assert torch.equal(ds[0]["video"], ds[(5, 0)]["video"])


def test_train_augmentation_depends_only_on_seed_epoch_index(video_root):
    ds = make_dataset(video_root, train=True, seed=3)
    other = make_dataset(video_root, train=True, seed=3)
    assert torch.equal(ds[(2, 0)]["video"], other[(2, 0)]["video"])
    assert torch.equal(ds[0]["video"], ds[(0, 0)]["video"])  # int key = epoch 0
    epochs = {ds[(e, 0)]["video"].numpy().tobytes() for e in range(4)}
    assert len(epochs) == 4
    assert not torch.equal(ds[(2, 0)]["video"], make_dataset(video_root, train=True, seed=4)[(2, 0)]["video"])


def test_negative_and_out_of_range_keys(video_root):
    ds = make_dataset(video_root)
    assert ds[-len(NAMES)]["index"] == 0
    with pytest.raises(IndexError):
        ds[len(NAMES)]


@pytest.mark.parametrize(
    "index,fragment",
    [
        (2, "corrupt.mp4: InvalidDataError"),
        (3, "empty.mp4: InvalidDataError"),
        (4, "truncated.mp4: InvalidDataError"),
        (5, "missing file"),
    ],
)
def test_bad_files_become_failed_samples(video_root, index, fragment):
    item = make_dataset(video_root)[index]
    assert item["video"] is None and fragment in item["error"]
    assert item["error"].startswith(str(video_root))  # names the path
    assert item["targets"]["distance_score"].ndim == 0


@pytest.mark.parametrize("index", [2, 3, 4, 5])
def test_bad_video_error_raises_naming_the_path(video_root, index):
    with pytest.raises(BadVideoError) as err:
        make_dataset(video_root, bad_video="error")[index]
    assert NAMES[index] in str(err.value) and str(video_root) in str(err.value)


# ----------------------------------------------------------------- the earlier .pt clips
def test_an_earlier_pt_clip_where_a_video_should_be_is_refused_in_one_line(video_root):
    """.pt clips are read only by `prepare --from-pt`: the dataset is not built, and the error says what to run."""
    with pytest.raises(PtClipsError) as caught:
        make_dataset(video_root, names=["good_a.mp4", "legacy_c.mp4"])
    message = str(caught.value)
    assert "\n" not in message and str(video_root / "talking" / "legacy_c.pt") in message
    assert f"python -m datasets.prepare --from-pt {video_root} --annotations CSV --out CACHE_DIR" in message
    assert "--cache CACHE_DIR" in message


# ----------------------------------------------------------------- collate
def test_collate_drops_and_reports_bad_samples(video_root):
    ds = make_dataset(video_root)
    batch = collate_clips([ds[i] for i in (0, 2, 1, 5)])
    assert batch["video"].shape == (2, 3, T, SIZE, SIZE) and batch["video"].dtype == torch.uint8
    assert batch["video_ids"] == ["good_a.mp4", "good_b.mp4"]
    assert batch["indices"].tolist() == [0, 1] and batch["indices"].dtype == torch.int64
    assert batch["targets"]["distance_score"].shape == (2,)
    assert batch["targets"]["peoplecount"].dtype == torch.int64
    assert [video_id for video_id, _ in batch["bad"]] == ["corrupt.mp4", "missing.mp4"]
    assert "missing file" in batch["bad"][1][1]


def test_collate_of_only_bad_samples_is_an_empty_batch(video_root):
    ds = make_dataset(video_root)
    batch = collate_clips([ds[2], ds[3]])
    assert batch["video"] is None and batch["video_ids"] == [] and batch["indices"].numel() == 0
    assert batch["targets"]["distance_score"].shape == (0,) and len(batch["bad"]) == 2


# ----------------------------------------------------------------- DataLoader
def test_dataloader_with_two_workers_survives_bad_files(video_root):
    ds = make_dataset(video_root, train=True, seed=1)
    keys = [(1, i) for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=3, sampler=keys, num_workers=2, collate_fn=collate_clips)
    batches = list(loader)
    assert [b["video_ids"] for b in batches] == [["good_a.mp4", "good_b.mp4"], []]
    assert sorted(v for b in batches for v, _ in b["bad"]) == [
        "corrupt.mp4",
        "empty.mp4",
        "missing.mp4",
        "truncated.mp4",
    ]
    # same clips as in the main process: augmentation does not depend on the worker
    assert torch.equal(batches[0]["video"][0], ds[(1, 0)]["video"])


# ----------------------------------------------------------------- web footage faults
def test_web_faults_through_the_dataset(web_faults):
    """Lying header counts, variable rate and rotation give clips (the frames decode_clip chose);
    a partial download gives a clip with a note; too long / too large files are failed samples
    whose error says which limit; ``partial="skip"`` turns the partial one into a failed sample."""
    from web_video_files import FAULTS

    from datasets.augment import ClipTransform
    from datasets.decode_policy import DecodePolicy
    from datasets.video import decode_clip

    ds = VideoClipDataset(FAULTS, {}, web_faults, num_frames=T, size=SIZE)
    items = {item["video_id"]: item for item in (ds[i] for i in range(len(ds)))}
    for name in ("over_count.avi", "under_count.avi", "vfr.mp4", "portrait.mp4"):
        frames, _ = decode_clip(web_faults / name, T, short_side=SIZE)
        assert items[name]["error"] is None and items[name]["note"] is None, name
        assert torch.equal(items[name]["video"], ClipTransform(SIZE)(frames)), name
    assert items["partial.mp4"]["video"] is not None and items["partial.mp4"]["note"].startswith("partial file (")
    assert "VideoTooLargeError: longer than 30 s" in items["long.mp4"]["error"]
    assert "VideoTooLargeError: frames of 3840x2160" in items["huge.mp4"]["error"]
    batch = collate_clips(list(items.values()))
    assert batch["video"].shape[0] == 5 and [v for v, _ in batch["notes"]] == ["partial.mp4"]
    assert sorted(v for v, _ in batch["bad"]) == ["huge.mp4", "long.mp4"]
    strict = VideoClipDataset(
        ["partial.mp4"], {}, web_faults, num_frames=T, size=SIZE, train=True, decode_policy=DecodePolicy(partial="skip")
    )
    assert "PartialVideoError: partial file" in strict[(0, 0)]["error"]
