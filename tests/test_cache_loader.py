"""datasets/cache_loader.py: reader threads into reused batch buffers give exactly the batches of a
DataLoader over the same dataset (order, augmentation draws, bad clips), resume mid-epoch, never
overwrite a batch the consumer still holds, and leave no threads behind."""

import itertools
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets.cache import CachedClipDataset, collate_cached
from datasets.cache_loader import READER_THREAD_PREFIX, CacheLoader, make_loader
from datasets.clips import VideoClipDataset, collate_clips
from datasets.prepare import prepare_cache
from datasets.samplers import ResumableShardSampler
from datasets.video import BadVideoError, write_video
from datasets.views import MultiViewCachedDataset, collate_views

K, S, T = 8, 16, 4  # stored frames, stored size, frames per training clip (K > T: jittered runs)
NAMES = [f"v{i}.mp4" for i in range(10)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """10 short noise videos (every frame differs)."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for name in NAMES:
        write_video(root / name, rng.integers(0, 256, (12, S, S, 3), dtype=np.uint8), 12)
    return root


@pytest.fixture(scope="module")
def cache(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare_cache(
        out, NAMES, str(videos), frames=K, stored_size=S, workers=0, progress=False, log=lambda m: None, shard_size=4
    )  # 3 shards
    return out


def train_set(cache, names=None, **kwargs):
    names = list(names or NAMES[:6] + ["absent.mp4"] + NAMES[6:])  # one video the cache lacks
    targets = {"valence_score": np.linspace(0, 1, len(names)), "peoplecount": np.arange(len(names)) % 5 - 1}
    return CachedClipDataset(cache, names, targets, num_frames=T, size=12, train=True, seed=5, **kwargs)


def assert_same_batch(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key == "video" and value is not None:
            assert got[key].shape == value.shape and got[key].is_contiguous()
            assert torch.equal(got[key], value)
        elif key == "targets":
            assert got[key].keys() == value.keys()
            for name, v in value.items():
                assert got[key][name].dtype == v.dtype and torch.equal(got[key][name], v), name
        elif torch.is_tensor(value):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def dataloader_batches(dataset, sampler, batch_size, drop_last=False, collate=collate_cached):
    return list(DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, collate_fn=collate))


@pytest.mark.parametrize("readers", [0, 2])
def test_batches_are_the_dataloaders_for_every_epoch_and_rank(cache, readers):
    dataset = train_set(cache)
    for rank in (0, 1):
        sampler = ResumableShardSampler(len(dataset), rank, 2, seed=3)
        loader = CacheLoader(dataset, sampler, 2, readers=readers, prefetch=2, drop_last=True)
        for epoch in (0, 1, 2):
            sampler.set_position(epoch)
            want = dataloader_batches(dataset, sampler, 2, drop_last=True)
            got = list(loader)
            assert len(got) == len(want) == len(loader) > 0
            for g, w in zip(got, want):
                assert_same_batch(g, w)
        loader.close()
    # the video the cache lacks is counted in some batch, by name, as the DataLoader path reports it
    sampler = ResumableShardSampler(len(dataset), 0, 1, seed=3)
    bad = [b for batch in CacheLoader(dataset, sampler, 3, readers=readers) for b in batch["bad"]]
    assert [name for name, _ in bad] == ["absent.mp4"] and "not in the cache" in bad[0][1]


def test_resuming_mid_epoch_gives_the_rest_of_the_epoch(cache):
    dataset = train_set(cache)
    sampler = ResumableShardSampler(len(dataset), 0, 1, seed=1)
    loader = CacheLoader(dataset, sampler, 2, readers=2, drop_last=True)
    sampler.set_position(4)
    whole = list(loader)
    sampler.set_position(4, start=2 * 2)  # two batches already trained on
    rest = list(loader)
    assert len(rest) == len(whole) - 2
    for g, w in zip(rest, whole[2:]):
        assert_same_batch(g, w)


@pytest.mark.parametrize("views", [2, 1])
def test_evaluation_views_are_collate_views_batches_in_shard_order(cache, views):
    """2 views of 4 frames take all K = 8 stored frames (one read per clip); 1 view of 2 frames
    takes every other frame (a read per frame)."""
    names = ["absent.mp4"] + NAMES
    dataset = MultiViewCachedDataset(cache, names, num_frames=4 if views == 2 else 2, size=12, temporal_views=views)
    mine = list(range(1, len(names), 2))  # one rank's exactly-once share
    want = dataloader_batches(dataset, mine, 3, collate=collate_views)
    got = list(make_loader(dataset, mine, 3, workers=2, prefetch=2, pin_memory=False, collate_fn=collate_views))
    assert len(got) == len(want) == 2  # 5 videos: the last batch is short
    for g, w in zip(got, want):
        assert_same_batch(g, w)
    first = list(make_loader(dataset, [0, 1], 2, workers=1, prefetch=1, pin_memory=False))[0]
    assert first["bad_indices"] == [0] and first["video_ids"] == [NAMES[0]]


def test_bad_video_error_raises_in_the_consumer_naming_the_video(cache):
    dataset = train_set(cache, names=["absent.mp4", *NAMES[:3]], bad_video="error")
    loader = CacheLoader(dataset, [(0, i) for i in range(4)], 2, readers=2)
    with pytest.raises(BadVideoError, match="absent.mp4"):
        next(iter(loader))
    loader.close()


def test_a_shard_cut_short_after_opening_fails_its_clips_and_the_rest_load(cache, tmp_path):
    """An I/O error is one reported clip: the reads are preadv calls, never a memory map (where the
    same fault is a SIGBUS that kills the process)."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    dataset = train_set(copy, names=NAMES)
    shard = sorted((copy / "shards").glob("*.bin"))[-1]  # the last shard holds v8, v9
    loader = CacheLoader(dataset, [(0, i) for i in range(len(NAMES))], 5, readers=2)
    assert sum(len(b["indices"]) for b in loader) == len(NAMES)
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    batches = list(loader)
    bad = [b for batch in batches for b in batch["bad"]]
    assert [name for name, _ in bad] == ["v9.mp4"], bad
    assert "short read" in bad[0][1] and shard.name in bad[0][1]
    assert batches[1]["video_ids"] == ["v5.mp4", "v6.mp4", "v7.mp4", "v8.mp4"]
    assert torch.equal(batches[1]["video"], collate_cached([dataset[(0, i)] for i in range(5, 9)])["video"])


def test_buffers_are_reused_and_a_held_batch_is_never_overwritten(cache):
    dataset = train_set(cache, names=NAMES)
    sampler = ResumableShardSampler(len(dataset), 0, 1, seed=0)
    loader = CacheLoader(dataset, sampler, 2, readers=2, prefetch=1, drop_last=True)
    for epoch in range(4):
        sampler.set_position(epoch)
        for batch in loader:
            assert len(batch["indices"]) == 2
    del batch
    # 2 batches read ahead, the one being handed out, the one the loop variable still held
    assert loader.buffers_allocated <= 4
    sampler.set_position(5)
    batches = iter(loader)
    kept = next(batches)
    kept_video = kept["video"].clone()
    rest = list(batches)
    assert torch.equal(kept["video"], kept_video)  # its buffer was not read into meanwhile
    assert all(b["video"].untyped_storage().data_ptr() != kept["video"].untyped_storage().data_ptr() for b in rest)
    loader.close()


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(READER_THREAD_PREFIX)]


def first_reads_meet(loader: CacheLoader, parties: int) -> None:
    """Make the loader's first ``parties`` batch reads wait for one another.

    A ThreadPoolExecutor starts a new thread only when none is idle, so on a busy machine a fast
    read can finish before the next is submitted and the pool runs fewer threads than ``readers``;
    reads that wait for each other are on ``parties`` threads at once."""
    meeting, calls, read = threading.Barrier(parties, timeout=60), itertools.count(), loader._reader

    def meeting_read(*args):
        if next(calls) < parties:
            meeting.wait()
        return read(*args)

    loader._reader = meeting_read


def test_reader_threads_end_with_close_with_the_loader_and_after_an_abandoned_pass(cache):
    assert reader_threads() == []
    dataset = train_set(cache, names=NAMES)
    sampler = ResumableShardSampler(len(dataset), 0, 1, seed=0)
    loader = CacheLoader(dataset, sampler, 2, readers=3, drop_last=True)
    first_reads_meet(loader, 3)
    next(iter(loader))  # abandoned mid-epoch, reads in flight
    assert len(reader_threads()) == 3
    assert len(list(loader)) == len(loader)  # a new pass waits for the old one's reads, then runs whole
    loader.close()
    assert reader_threads() == []
    loader = CacheLoader(dataset, sampler, 2, readers=2, drop_last=True)
    first_reads_meet(loader, 2)
    batches = iter(loader)
    next(batches)
    del loader  # the pass still holds it
    assert len(reader_threads()) == 2 and len(next(batches)["indices"]) == 2
    del batches  # nothing holds it now: no garbage collection needed
    assert reader_threads() == []


def test_a_process_exiting_mid_epoch_ends_promptly(cache):
    """No close(): interpreter exit ends the reader threads (no hang, no error)."""
    script = textwrap.dedent(f"""
        from datasets.cache import CachedClipDataset
        from datasets.cache_loader import CacheLoader
        ds = CachedClipDataset({str(cache)!r}, {NAMES!r}, {{}}, num_frames={T}, size=12, train=True)
        batches = iter(CacheLoader(ds, [(0, i) for i in range(10)] * 50, 2, readers=2, prefetch=4))
        print(len(next(batches)["indices"]), flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "2", res.stderr
    assert res.stderr == ""


def test_a_cache_gets_the_cache_loader_and_videos_a_dataloader(cache, videos):
    options = dict(workers=0, prefetch=2, pin_memory=False, collate_fn=collate_cached)
    assert isinstance(make_loader(train_set(cache), [0], 1, **options), CacheLoader)
    video_set = VideoClipDataset(NAMES[:2], {}, videos, num_frames=T, size=12)
    assert isinstance(make_loader(video_set, [0], 1, **{**options, "collate_fn": collate_clips}), DataLoader)
    with pytest.raises(ValueError, match="CacheLoader reads frame caches; got VideoClipDataset"):
        CacheLoader(video_set, [0], 1)


def test_with_pinned_memory_a_buffer_is_refilled_only_after_the_copies_queued_from_it(cache, monkeypatch):
    """No GPU here, so pinned allocation and CUDA events are stood in for to check the order: a
    handed-out buffer found free gets an event recorded in the consumer's thread (on its stream,
    after the copies it queued), and the reader waits for that event before writing into it."""
    log = []

    class Event:
        def record(self):
            log.append(("record", threading.current_thread().name))

        def synchronize(self):
            log.append(("wait", threading.current_thread().name))

    pinned, empty = [], torch.empty

    def empty_unpinned(*shape, pin_memory=False, **kwargs):
        pinned.append(pin_memory)
        return empty(*shape, **kwargs)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch, "empty", empty_unpinned)
    dataset = train_set(cache, names=NAMES)
    loader = CacheLoader(
        dataset, [(e, i) for e in range(2) for i in range(10)], 2, readers=1, prefetch=1, pin_memory=True
    )
    assert sum(len(batch["indices"]) for batch in loader) == 20  # batches dropped as they come
    loader.close()
    assert pinned == [True] * loader.buffers_allocated and loader.buffers_allocated <= 3  # and reused
    records = [name for what, name in log if what == "record"]
    waits = [name for what, name in log if what == "wait"]
    assert len(records) == len(waits) == 10 - loader.buffers_allocated
    assert set(records) == {threading.main_thread().name} and all(w.startswith(READER_THREAD_PREFIX) for w in waits)
    recorded = [what for what, _ in log]
    assert all(recorded[:i].count("record") >= recorded[: i + 1].count("wait") for i in range(len(log)))
