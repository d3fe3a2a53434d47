"""The frame cache: round trip against direct decoding, refusals, and the cache-backed Dataset."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets.augment import ClipTransform, no_augmentation
from datasets.cache import (
    CachedClipDataset,
    CacheMismatchError,
    FrameCache,
    collate_cached,
)
from datasets.prepare import fit_clip, prepare_cache
from datasets.video import BadVideoError, decode_clip, write_video

K, S = 8, 32


def moving_texture(count, height, width, seed):
    """Smooth moving blobs plus mild noise: compresses like real video, every frame differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        cy, cx = height / 2 + height / 4 * np.sin(t / 3 + seed), width / 2 + width / 4 * np.cos(t / 4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.1 * height * width))
        rgb = np.stack([blob * 220, (1 - blob) * 180, xx / width * 255], -1)
        frames.append(np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "class_a").mkdir()
    write_video(root / "class_a" / "wide.mp4", moving_texture(30, 48, 80, 0), 30)
    write_video(root / "tall.mp4", moving_texture(25, 64, 40, 1), 25)
    write_video(root / "small.mp4", moving_texture(20, 24, 24, 2), 10)  # smaller than S: upsampled
    return root


NAMES = ["wide.mp4", "tall.mp4", "small.mp4"]


def build(videos, out, **kwargs):
    kwargs.setdefault("frames", K)
    kwargs.setdefault("stored_size", S)
    return prepare_cache(out, NAMES, str(videos), workers=0, progress=False, log=lambda m: None, **kwargs)


@pytest.fixture(scope="module")
def raw_cache(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw") / "cache"
    build(videos, out)
    return out


def path_of(videos, name):
    return next(videos.rglob(name))


def stored_frames(cache: FrameCache, name):
    return cache.read_raw(cache.row(name), list(range(cache.params.frames)))


def test_round_trip_equals_direct_decoding(videos, raw_cache):
    cache = FrameCache(raw_cache)
    assert len(cache) == 3 and cache.params.frames == K and cache.params.stored_size == S
    for name in NAMES:
        frames, _ = decode_clip(path_of(videos, name), K)
        expected = fit_clip(frames, S)
        assert expected.shape == (K, 3, S, S)
        assert torch.equal(stored_frames(cache, name), torch.from_numpy(expected)), name


def test_cache_clip_equals_video_dataset_evaluation_clip(videos, raw_cache):
    """With size == stored size, evaluation through the cache gives the video pipeline's exact clip."""
    ds = CachedClipDataset(raw_cache, NAMES, {}, num_frames=K, size=S)
    for i, name in enumerate(NAMES):
        frames, _ = decode_clip(path_of(videos, name), K)
        expected = ClipTransform(size=S, train=False)(frames)
        item = ds[i]
        assert item["error"] is None and item["augment"] == no_augmentation(S)
        assert torch.equal(item["video"], expected)


def test_params_recorded(raw_cache):
    doc = json.loads((raw_cache / "cache.json").read_text())
    assert doc["params"] == {
        "frames": K,
        "stored_size": S,
        "sampling": "segment-centres",
        "fit": "short-side-bilinear-antialias+centre-crop",
        "version": 1,
    }


def test_caches_of_the_versions_with_a_storage_choice(raw_cache, tmp_path):
    """Their raw caches read as before; their JPEG caches are refused with the command that rebuilds them."""
    import shutil

    for storage, quality in (("raw", None), ("jpeg", 90)):
        copy = tmp_path / storage
        shutil.copytree(raw_cache, copy)
        doc = json.loads((copy / "cache.json").read_text())
        doc["params"].update(storage=storage, jpeg_quality=quality)
        (copy / "cache.json").write_text(json.dumps(doc))
        if storage == "raw":
            assert FrameCache(copy).params == FrameCache(raw_cache).params
            continue
        with pytest.raises(CacheMismatchError) as caught:
            FrameCache(copy)
        message = str(caught.value)
        assert "\n" not in message
        assert f"frame cache {copy} stores jpeg frames, which this version no longer reads" in message
        assert f"python -m datasets.prepare --frames {K} --stored-size {S}" in message


def test_refuses_runs_it_was_not_built_for(raw_cache):
    with pytest.raises(CacheMismatchError, match=r"keeps 8 frames per clip but the run uses --frames 16"):
        CachedClipDataset(raw_cache, NAMES, {}, num_frames=16, size=S)
    with pytest.raises(CacheMismatchError, match=r"stores 32x32 frames but the run uses --size 48.*--stored-size 48"):
        CachedClipDataset(raw_cache, NAMES, {}, num_frames=K, size=48)
    # fewer frames and a smaller input are served (choose T of K, resize down)
    CachedClipDataset(raw_cache, NAMES, {}, num_frames=4, size=16)


def test_refuses_other_format_version(raw_cache, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(raw_cache, copy)
    doc = json.loads((copy / "cache.json").read_text())
    doc["params"]["version"] = 0
    (copy / "cache.json").write_text(json.dumps(doc))
    with pytest.raises(CacheMismatchError, match="format version 0, this code reads version 1"):
        FrameCache(copy)


def test_unfinished_and_damaged_caches_are_refused(raw_cache, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match="not a frame cache"):
        FrameCache(tmp_path)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(raw_cache, unfinished)
    (unfinished / "manifest.csv").unlink()
    with pytest.raises(FileNotFoundError, match="has not finished here; rerun the same command"):
        FrameCache(unfinished)
    cut = tmp_path / "cut"
    shutil.copytree(raw_cache, cut)
    shard = next((cut / "shards").glob("*.bin"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match="the cache is damaged"):
        FrameCache(cut)


def targets_for(n):
    return {"valence_score": np.linspace(0, 1, n), "peoplecount": np.arange(n) % 5 - 1}


def test_items_train_draws_and_missing_videos(raw_cache):
    names = NAMES + ["absent.mp4"]
    ds = CachedClipDataset(raw_cache, names, targets_for(4), num_frames=4, size=24, train=True, seed=3)
    assert ds.missing == ["absent.mp4"]
    a, b = ds[(2, 1)], ds[(2, 1)]
    assert torch.equal(a["video"], b["video"]) and a["augment"] == b["augment"]
    assert a["video"].shape == (3, 4, S, S) and a["video"].dtype == torch.uint8
    assert a["targets"]["peoplecount"].dtype == torch.int64 and a["augment"].size == 24
    # the draw is the video Dataset's: T segment offsets, then a crop box, then a flip
    rng = np.random.default_rng([3, 2, 1])
    offsets = rng.random(4)
    expected_indices = np.minimum(np.floor((np.arange(4) + offsets) * (K / 4)).astype(int), K - 1)
    stored = stored_frames(ds.cache, "tall.mp4")
    assert torch.equal(a["video"], stored[expected_indices].permute(1, 0, 2, 3))
    assert a["augment"] == ds.augment.draw(rng, S, S, 24)
    # different epochs draw differently (some key among a few must differ)
    assert any(ds[(e, 1)]["augment"] != a["augment"] for e in range(3, 8))
    missing = ds[3]
    assert missing["video"] is None and "absent.mp4" in missing["error"] and "not in the cache" in missing["error"]
    strict = CachedClipDataset(raw_cache, names, {}, num_frames=4, size=24, bad_video="error")
    with pytest.raises(BadVideoError, match="absent.mp4"):
        strict[3]


def test_collate_and_workers_match_single_process(raw_cache):
    names = NAMES + ["absent.mp4"]
    ds = CachedClipDataset(raw_cache, names, targets_for(4), num_frames=4, size=24, train=True, seed=1)
    keys = [(0, i) for i in range(4)]
    batch = collate_cached([ds[k] for k in keys])
    assert batch["video"].shape == (3, 3, 4, S, S) and batch["video"].is_contiguous()
    assert batch["augment"] == [ds[k]["augment"] for k in keys[:3]]
    assert batch["video_ids"] == NAMES and batch["indices"].tolist() == [0, 1, 2]
    assert [b[0] for b in batch["bad"]] == ["absent.mp4"]
    assert batch["targets"]["valence_score"].shape == (3,)
    loader = DataLoader(
        ds,
        batch_size=4,
        sampler=keys,
        num_workers=2,
        collate_fn=collate_cached,
        persistent_workers=True,
        prefetch_factor=2,
    )
    from_workers = next(iter(loader))
    assert torch.equal(from_workers["video"], batch["video"])
    assert from_workers["augment"] == batch["augment"]
    empty = collate_cached([ds[(0, 3)]])
    assert empty["video"] is None and len(empty["indices"]) == 0 and empty["augment"] == []
