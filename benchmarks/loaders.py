"""The loaders of benchmarks/data_throughput.py, side by side: every row feeds the same consumer.

Rows (``name``; ``readers`` = threads or worker processes):

* ``raw-read``: the floor -- each clip's whole stored bytes (all K frames) read with one
  ``preadv`` (:meth:`datasets.cache.FrameCache.read_raw_into`), by ``readers`` threads, in a
  shuffled order, into a ring of batch buffers allocated once.  No plan, no augmentation draw,
  no targets, no batch dict beyond the tensor.
* ``raw-read-mmap``: the same, each clip copied out of a memory map of its shard (made here:
  the project reads no cache through a map, because an I/O error under a mapped read is a SIGBUS
  that kills the process instead of failing one clip); the row says what that choice costs.
* ``cache-loader``: :class:`datasets.cache_loader.CacheLoader`, as ``train_ddp.py --cache``,
  evaluation, prediction and feature extraction use it: keys from a sampler, each sample's plan
  from (seed, epoch, index), the collate_cached batch.
* ``dataloader``: a torch DataLoader (persistent workers, prefetch 2, pinned memory on a GPU)
  over the same dataset with ``collate_cached`` -- the reader the cache loader replaced; also
  the decoded videos (mp4, the ``--videos`` path) through it.

The consumer receives the batch as a tensor and reads it: on a GPU it copies it there
(non-blocking, from pinned memory); on the CPU it reads one byte of every 4 KiB page (every
page is mapped and present; a full read would cost more than the loaders themselves and hide
them).  clips per CPU-second counts every thread and process involved (the consumer too).
"""

from __future__ import annotations

import mmap
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from datasets.augment import model_input
from datasets.cache import SHARD_DIR, FrameCache
from datasets.cache_loader import CacheLoader

PAGE = 4096


class EndlessKeys(torch.utils.data.Sampler):
    """(epoch, index) keys, each epoch a new permutation, for as long as the loader is read."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        epoch = 0
        while True:
            for i in np.random.default_rng(epoch).permutation(self.n):
                yield epoch, int(i)
            epoch += 1


def cpu_seconds(children: list) -> float:
    """User + system seconds of this process (all its threads) and ``children`` (DataLoader workers)."""
    import psutil

    total = 0.0
    for proc in [psutil.Process(), *children]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a worker that has exited
            pass
    return total


class RawReads:
    """Batches of whole stored clips, read by ``readers`` threads into reused buffers (the floor)."""

    def __init__(self, cache: FrameCache, batch_size: int, readers: int, mapped: bool, device: torch.device):
        self.cache, self.batch_size, self.mapped = cache, batch_size, mapped
        k, size = cache.params.frames, cache.params.stored_size
        self.depth = 2 * readers
        pin = device.type == "cuda"
        # depth batches being read, one with the consumer, one spare
        self.buffers = [
            torch.empty((batch_size, k, 3, size, size), dtype=torch.uint8, pin_memory=pin)
            for _ in range(self.depth + 2)
        ]
        self.copied = [None] * len(self.buffers)
        self.pool = ThreadPoolExecutor(readers, thread_name_prefix="raw-read")
        self.maps = [self._map(name) for name in cache.shard_names] if mapped else []

    def _map(self, shard_name: str) -> np.ndarray:
        with open(self.cache.root / SHARD_DIR / shard_name, "rb") as fh:
            return np.frombuffer(mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ), dtype=np.uint8)

    def _read(self, slot: int, rows: np.ndarray) -> dict:
        if self.copied[slot] is not None:  # the consumer's copy out of this buffer has run
            self.copied[slot].synchronize()
        out, frames = self.buffers[slot].numpy(), range(self.cache.params.frames)
        cache = self.cache
        for i, row in enumerate(rows):
            if self.mapped:
                start = int(cache.offsets[row])
                shard = self.maps[int(cache.shard_of[row])]
                np.copyto(out[i].reshape(-1), shard[start : start + int(cache.nbytes[row])])
            else:
                cache.read_raw_into(int(row), frames, out[i])
        return {"video": self.buffers[slot], "indices": rows}

    def __iter__(self) -> Iterator[dict]:
        def rows() -> Iterator[np.ndarray]:
            epoch = 0
            while True:
                order = np.random.default_rng(epoch).permutation(len(self.cache))
                for b in range(0, len(order) - self.batch_size + 1, self.batch_size):
                    yield order[b : b + self.batch_size]
                epoch += 1

        batches, ahead, slot = rows(), deque(), 0
        while True:
            while len(ahead) < self.depth:
                if self.buffers[slot].is_pinned():
                    self.copied[slot] = torch.cuda.Event()
                    self.copied[slot].record()
                ahead.append(self.pool.submit(self._read, slot, next(batches)))
                slot = (slot + 1) % len(self.buffers)
            yield ahead.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def consume(batch: dict, device: torch.device, augment: bool) -> int:
    """The one consumer: the batch's clips as a tensor, read (see the module docstring); with
    ``augment`` instead the training input made on ``device`` (crop, resize, flip, normalize)."""
    if augment:
        model_input(batch, device)
    else:
        x = batch["video"].to(device, non_blocking=True)
        if x.device.type == "cpu":
            int(x.view(-1)[::PAGE].sum())
    return len(batch["indices"])


def rate(batches: Iterable[dict], min_time: float, device: torch.device, augment: bool, warmup: int) -> dict:
    """clips/s (wall) and clips per CPU-second of ``batches`` into :func:`consume`, after ``warmup``
    batches (threads / workers started, their first batches in flight)."""
    import psutil

    it = iter(batches)
    for _ in range(warmup):
        consume(next(it), device, augment)
    children = psutil.Process().children(recursive=True)
    clips, batches_seen, cpu0, start = 0, 0, cpu_seconds(children), time.perf_counter()
    while batches_seen < 2 or time.perf_counter() - start < min_time:
        clips += consume(next(it), device, augment)
        batches_seen += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - start, cpu_seconds(children) - cpu0
    return {"clips_per_s": clips / wall, "clips_per_cpu_s": clips / max(cpu, 1e-9)}


def loader_for(name: str, dataset, collate, batch_size: int, readers: int, device: torch.device):
    """The batches of row ``name`` (see the module docstring) and a function that stops it."""
    cuda = device.type == "cuda"
    if name.startswith("raw-read"):
        raw = RawReads(dataset.cache, batch_size, readers, mapped=name == "raw-read-mmap", device=device)
        return raw, raw.close
    if name == "cache-loader":
        loader = CacheLoader(
            dataset, EndlessKeys(len(dataset)), batch_size, readers=readers, prefetch=2, pin_memory=cuda
        )
        return loader, loader.close
    if name == "dataloader":  # its workers end with its iterator, when the row is done
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EndlessKeys(len(dataset)),
            num_workers=readers,
            collate_fn=collate,
            pin_memory=cuda,
            persistent_workers=readers > 0,
            prefetch_factor=2 if readers else None,
        )
        return loader, lambda: None
    raise ValueError(f"unknown loader row {name!r}")


def measure(
    name: str,
    dataset,
    collate,
    batch_size: int,
    readers: int,
    min_time: float,
    device: torch.device,
    augment: bool = False,
) -> dict:
    """One row: ``name``'s loader with ``readers``, fed into the consumer for ``min_time`` seconds."""
    batches, stop = loader_for(name, dataset, collate, batch_size, readers, device)
    try:
        return {
            "name": name,
            "readers": readers,
            **rate(batches, min_time, device, augment, warmup=2 * max(readers, 1)),
        }
    finally:
        stop()
