"""The frame-cache loader: reader threads copy each clip once, straight into batch buffers that
are allocated once and reused.  It is the one way a frame cache is read, by training, evaluation,
prediction and feature extraction alike.

Why not a DataLoader for the cache: reading a clip is one memory copy, but a DataLoader's
workers are processes, so each batch then crosses to the training process through freshly
allocated shared memory (more CPU than the reads) and, on CUDA, is copied once more by the
pin-memory thread.  Here:

* the keys come from the sampler in the consumer's thread, in the sampler's order,
  ``batch_size`` at a time (so ``set_position`` before ``iter()`` resumes mid-epoch as before);
* one of ``readers`` threads plans each sample from its key alone (``dataset.plan``: frames
  and the augmentation's draw from (seed, epoch, index)) and reads its frames into the next row of a free
  batch buffer, scattered there by ``preadv`` (:meth:`datasets.cache.FrameCache.read_raw_into`),
  which releases the GIL while the bytes move.  A clip that fails (an I/O error included: no
  memory map, so no SIGBUS) is listed in ``bad`` (or raises under ``bad_video="error"``) and its
  row is reused;
* batches come back in sampler order, ``readers * prefetch`` of them read ahead;
* a buffer (pinned memory on CUDA) is reused only when no batch handed out still views it (its
  storage has no other user) and, on CUDA, after the copies queued from it: an event recorded
  on the consumer's current stream when the buffer is found free, waited for by the reader.
  A consumer that keeps batches gets new buffers, never overwritten ones.

The batch is exactly what the dataset's collate function makes (``collate_cached`` /
``collate_views``, via ``dataset.batch``); the augmentation and normalization stay on the
device.  There are no processes and no shared memory to leak; the threads end with
:meth:`CacheLoader.close`, when the loader is garbage collected, or at interpreter exit.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import torch
from torch.utils.data import DataLoader

from .cache import CachedClips

__all__ = ["CacheLoader", "READER_THREAD_PREFIX", "make_loader"]

READER_THREAD_PREFIX = "cache-reader"


def make_loader(
    dataset,
    sampler: Iterable,
    batch_size: int,
    *,
    workers: int,
    prefetch: int,
    pin_memory: bool,
    drop_last: bool = False,
    **dataloader_options,
) -> CacheLoader | DataLoader:
    """The loader of ``dataset``: for a frame cache a :class:`CacheLoader` with ``workers``
    reader threads; for decoded videos a torch DataLoader with ``workers`` processes and
    ``dataloader_options`` (collate_fn, generator, worker_init_fn, persistent_workers...)."""
    if isinstance(dataset, CachedClips):
        return CacheLoader(
            dataset, sampler, batch_size, readers=workers, prefetch=prefetch, drop_last=drop_last, pin_memory=pin_memory
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers > 0 else None,
        **dataloader_options,
    )


class CacheLoader:
    """Batches of a frame-cache dataset (``CachedClipDataset``, ``MultiViewCachedDataset``),
    in ``sampler`` order.  ``readers=0`` reads in the consumer's thread, one batch at a time.
    Exposes ``dataset``, ``sampler`` and ``len()`` like a DataLoader."""

    def __init__(
        self,
        dataset: CachedClips,
        sampler: Iterable,
        batch_size: int,
        *,
        readers: int = 2,
        prefetch: int = 2,
        drop_last: bool = False,
        pin_memory: bool = False,
    ) -> None:
        if not isinstance(dataset, CachedClips):
            raise ValueError(f"CacheLoader reads frame caches; got {type(dataset).__name__}")
        if batch_size < 1 or readers < 0 or prefetch < 1:
            raise ValueError(
                f"need batch_size >= 1, readers >= 0, prefetch >= 1; got {batch_size}, {readers}, {prefetch}"
            )
        self.dataset, self.sampler, self.batch_size, self.drop_last = dataset, sampler, batch_size, drop_last
        self.readers = readers
        self._depth = readers * prefetch if readers else 1
        self._reader = _BatchReader(dataset)
        self._buffers = _BatchBuffers((batch_size, *dataset.clip_shape), pin_memory)
        self._pool = ThreadPoolExecutor(readers, thread_name_prefix=READER_THREAD_PREFIX) if readers else None
        self._epoch: weakref.ref[_Epoch] | None = None
        self._shutdown = weakref.finalize(self, _shut_down, self._pool)  # also at exit

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> _Epoch:
        self._close_epoch()  # a pass still going (abandoned at preemption, max_steps): its reads end first
        epoch = _Epoch(self, iter(self.sampler))
        self._epoch = weakref.ref(epoch)  # weak: a pass nobody iterates is freed (and closed) at once
        return epoch

    def _close_epoch(self) -> None:
        epoch = self._epoch() if self._epoch is not None else None
        if epoch is not None:
            epoch.close()

    @property
    def buffers_allocated(self) -> int:
        """Batch buffers made so far (each ``batch_size`` clips): reads ahead + batches the consumer holds."""
        return len(self._buffers.buffers)

    def close(self) -> None:
        """Wait for the reads in flight and end the reader threads (idempotent)."""
        self._close_epoch()
        self._shutdown()


def _shut_down(pool: ThreadPoolExecutor | None) -> None:
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


class _BatchReader:
    """Reads one batch into a buffer (in a reader thread)."""

    def __init__(self, dataset: CachedClips) -> None:
        self.dataset = dataset

    def __call__(self, buffer: _Buffer, keys: list) -> dict[str, Any]:
        buffer.wait_for_device()
        good, bad = [], []
        for key in keys:
            plan = self.dataset.plan(key)
            error = self.dataset.read_into(plan, buffer.clips[len(good)])
            if error is None:
                good.append(plan)
            else:  # its row is filled by the next good clip
                bad.append((plan, error))
        return self.dataset.batch(buffer.tensor[: len(good)] if good else None, good, bad)


class _Epoch:
    """One pass over the sampler's keys; batches read ahead, returned in order."""

    def __init__(self, loader: CacheLoader, keys) -> None:
        self.loader = loader  # alive while its batches are being read (the loader owns the threads)
        self.keys, self.batch_size, self.drop_last = keys, loader.batch_size, loader.drop_last
        self.reader, self.buffers, self.pool = loader._reader, loader._buffers, loader._pool
        self.ahead: deque[tuple[_Buffer, Any]] = deque()
        while len(self.ahead) < loader._depth and self._read_ahead():
            pass

    def __iter__(self) -> _Epoch:
        return self

    def _read_ahead(self) -> bool:
        keys = list(itertools.islice(self.keys, self.batch_size))
        if not keys or (self.drop_last and len(keys) < self.batch_size):
            return False
        buffer = self.buffers.take()
        if self.pool is None:
            job = _Deferred(functools.partial(self.reader, buffer, keys))
        else:
            job = self.pool.submit(self.reader, buffer, keys)
        self.ahead.append((buffer, job))
        return True

    def __next__(self) -> dict[str, Any]:
        if not self.ahead:
            raise StopIteration
        buffer, job = self.ahead.popleft()
        self._read_ahead()  # keep the readers busy while this batch is being finished
        try:
            return job.result()  # a reader's exception (BadVideoError...) is raised here
        finally:
            buffer.busy = False  # from now on the batch's own views keep the buffer from reuse

    def __del__(self) -> None:
        if hasattr(self, "ahead"):  # not when __init__ failed
            self.close()

    def close(self) -> None:
        """Cancel the reads not started, wait for those running; their buffers become free."""
        jobs = [job for _, job in self.ahead]
        for job in jobs:
            job.cancel()
        wait([job for job in jobs if isinstance(job, Future)])
        for buffer, _ in self.ahead:
            buffer.busy = False
        self.ahead.clear()


class _Deferred:
    """readers=0: the read runs when its result is asked for, in the consumer's thread."""

    def __init__(self, call) -> None:
        self.call = call

    def result(self) -> dict[str, Any]:
        return self.call()

    def cancel(self) -> bool:
        return True


def _storage_users(tensor: torch.Tensor) -> int:
    """How many tensors (views) share ``tensor``'s memory; PyTorch has no public call for this."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


class _Buffer:
    """One batch of uint8 clips, allocated once; ``clips[i]`` is the numpy view of row i."""

    def __init__(self, shape: tuple[int, ...], pin_memory: bool) -> None:
        self.tensor = torch.empty(shape, dtype=torch.uint8, pin_memory=pin_memory)
        self.clips = list(self.tensor.numpy())
        self.own_users = _storage_users(self.tensor)  # this object's references, none handed out
        self.busy = True  # being read, or read and not yet handed to the consumer
        self.copied: torch.cuda.Event | None = None

    def free(self) -> bool:
        return not self.busy and _storage_users(self.tensor) == self.own_users

    def wait_for_device(self) -> None:
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None


class _BatchBuffers:
    """The buffers of one loader: a free one is reused, else a new one is made."""

    def __init__(self, shape: tuple[int, ...], pin_memory: bool) -> None:
        self.shape, self.pin_memory = shape, pin_memory
        self.buffers: list[_Buffer] = []

    def take(self) -> _Buffer:
        """A buffer to read the next batch into (called in the consumer's thread)."""
        for buffer in self.buffers:
            if buffer.free():
                buffer.busy = True
                if self.pin_memory:  # the consumer has queued its copies from it by now
                    buffer.copied = torch.cuda.Event()
                    buffer.copied.record()
                return buffer
        buffer = _Buffer(self.shape, self.pin_memory)
        self.buffers.append(buffer)
        return buffer
