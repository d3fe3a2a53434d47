"""Multi-view test-time sampling: N temporal clips x M spatial crops of each video.

Temporal views.  A training clip spans the whole video: it is cut into T segments and one
frame is taken at a random position inside each (temporal jitter); evaluation takes the
segment centres.  Temporal view i of N takes the frame at position (i + 0.5) / N inside
every segment: the deterministic, evenly spaced counterparts of the training jitter.  Each
view therefore spans the whole video at the frame spacing the network was trained with,
rather than being a short window at a higher frame rate it never saw.  All N x T frames are
the segment centres of N x T segments, so one ``decode_clip(path, N * T)`` pass decodes
every view, and view i is ``frames[i::N]``; with N = 1 this is exactly the evaluation clip.

Spatial views.  After the evaluation resize (short side to ``size``), M square crops are
taken evenly spaced along the long side, from one end to the other: M = 1 is the centre
crop of the evaluation transform, M = 3 is left / centre / right (top / centre / bottom for
portrait video).  A square frame gives M identical crops.

From a frame cache (:class:`MultiViewCachedDataset`) the same N x T segment centres are taken
among the K stored frames (which are themselves the segment centres of K segments, so with
K = N x T the frames are exactly those of the video path); the cache keeps only the centre
square of each frame, so there M must be 1, and the S x S frames are resized to ``size`` on the
device like the training loop's validation on the cache.

Views are ordered temporal-major (view = i * M + j).  Averaging the network's outputs over
views happens in probability space, after the sigmoid / softmax (see
``inference.average_view_probabilities``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from .augment import frames_to_tensor, resize_center_crop
from .cache import CachedClips, ClipPlan, FrameCache
from .clips import VideoClipDataset, collate_clips
from .video import sample_clip_indices

__all__ = [
    "spatial_crop_offsets",
    "multi_view_clips",
    "MultiViewClipDataset",
    "MultiViewCachedDataset",
    "collate_views",
    "parse_views",
]


def parse_views(spec: str) -> tuple[int, int]:
    """``"4x3"`` -> (4 temporal, 3 spatial); ``"1"`` -> (1, 1)."""
    parts = str(spec).lower().replace("×", "x").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers.append(1)
    if len(numbers) != 2 or min(numbers) < 1:
        raise ValueError(
            f"views must look like NxM with N temporal clips and M spatial crops >= 1 (e.g. 1x1, 4x3), got {spec!r}"
        )
    return numbers[0], numbers[1]


def spatial_crop_offsets(length: int, size: int, num_crops: int) -> list[int]:
    """Start offsets of ``num_crops`` windows of ``size`` evenly spaced along ``length``.

    The middle offset of an odd count equals torchvision's centre-crop offset
    ``int(round((length - size) / 2))``, so one crop is exactly the evaluation centre crop.
    """
    if size > length:
        raise ValueError(f"crop size {size} exceeds the side {length}")
    if num_crops == 1:
        return [int(round((length - size) / 2.0))]
    return [int(round(j * (length - size) / (num_crops - 1))) for j in range(num_crops)]


def multi_view_clips(
    frames: np.ndarray, num_frames: int, temporal_views: int, spatial_views: int, size: int
) -> torch.Tensor:
    """Decoded frames (N*T, H, W, 3) uint8 -> views uint8 (N*M, 3, T, size, size)."""
    expected = num_frames * temporal_views
    if frames.shape[0] != expected:
        raise ValueError(f"expected {expected} frames ({temporal_views} views x {num_frames}), got {frames.shape[0]}")
    video = frames_to_tensor(frames)  # (N*T, C, H, W)
    if spatial_views == 1:
        resized = resize_center_crop(video, size)  # exactly the evaluation transform
        crops = [resized]
    else:
        resized = TF.resize(video, [size], antialias=True)
        height, width = resized.shape[-2:]
        if width >= height:
            crops = [resized[..., :, o : o + size] for o in spatial_crop_offsets(width, size, spatial_views)]
        else:
            crops = [resized[..., o : o + size, :] for o in spatial_crop_offsets(height, size, spatial_views)]
    views = []
    for i in range(temporal_views):
        for crop in crops:
            clip = crop[i::temporal_views]  # (T, C, size, size): temporal view i
            views.append(clip.permute(1, 0, 2, 3))
    return torch.stack(views).contiguous()


class MultiViewClipDataset(VideoClipDataset):
    """``VideoClipDataset`` for testing whose ``video`` is (V, 3, T, size, size), V = N x M.

    Same constructor (``train`` must stay False) plus ``temporal_views`` and
    ``spatial_views``.
    """

    def __init__(
        self,
        video_names: Sequence[str],
        targets,
        video_root,
        *,
        temporal_views: int = 1,
        spatial_views: int = 1,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("train"):
            raise ValueError("multi-view sampling is for evaluation; use train=False")
        if temporal_views < 1 or spatial_views < 1:
            raise ValueError(f"views must be >= 1, got {temporal_views} x {spatial_views}")
        super().__init__(video_names, targets, video_root, **kwargs)
        self.temporal_views = temporal_views
        self.spatial_views = spatial_views

    @property
    def num_views(self) -> int:
        return self.temporal_views * self.spatial_views

    def _load(self, path: str, rng: np.random.Generator | None) -> tuple[torch.Tensor, str | None]:
        frames, note = self._decode(path, self.num_frames * self.temporal_views, None)
        return multi_view_clips(frames, self.num_frames, self.temporal_views, self.spatial_views, self.size), note


class MultiViewCachedDataset(CachedClips):
    """Test-time views from a frame cache: ``video`` is uint8 (N, 3, T, S, S) at the stored
    size S (N temporal views; resized to ``size`` on the device by the consumer).

    Refuses (ValueError) what the cache cannot serve: M > 1 spatial crops (it keeps only the
    centre square of each frame), N x T > K (views would share frames), or a clip length and
    size it was not built for.  A video the cache has no clip for is a failed sample whose error
    says why (failed in prepare, or not in the table the cache was built from).
    """

    def __init__(
        self,
        cache: FrameCache | str,
        video_names: Sequence[str],
        *,
        num_frames: int,
        size: int,
        temporal_views: int = 1,
        spatial_views: int = 1,
    ) -> None:
        self.cache = cache if isinstance(cache, FrameCache) else FrameCache(cache)
        self.cache.check_serves(num_frames, size)
        if spatial_views != 1:
            raise ValueError(
                f"frame cache {self.cache.root} keeps only the centre square of each frame, so "
                f"{spatial_views} spatial views cannot be taken from it; use --views "
                f"{temporal_views}x1, or --videos for spatial views"
            )
        stored = self.cache.params.frames
        if temporal_views * num_frames > stored:
            raise ValueError(
                f"{temporal_views} temporal views of {num_frames} frames need "
                f"{temporal_views * num_frames} distinct frames, but frame cache {self.cache.root} "
                f"keeps {stored} per clip; use --views {max(1, stored // num_frames)}x1, --videos, "
                f"or a cache prepared with --frames {temporal_views * num_frames}"
            )
        self.video_names = [str(n) for n in video_names]
        self.rows = np.array([self.cache.row(n) for n in self.video_names], dtype=np.int64)
        self.num_frames, self.size = num_frames, size
        self.temporal_views, self.spatial_views = temporal_views, 1
        # The N x T segment centres among the K stored frames; view i is every N-th of them.
        self.indices = sample_clip_indices(stored, temporal_views * num_frames, None)

    @property
    def num_views(self) -> int:
        return self.temporal_views

    @property
    def clip_shape(self) -> tuple[int, ...]:
        stored = self.cache.params.stored_size
        return (self.temporal_views, 3, self.num_frames, stored, stored)

    def plan(self, index: int) -> ClipPlan:
        index = self._index(int(index))
        return ClipPlan(index, self.video_names[index], int(self.rows[index]), self.indices)

    def frame_slots(self, clip: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """Where the N x T planned frames of a (N, 3, T, S, S) clip go: the j-th is frame j // N
        of view j % N."""
        n = self.temporal_views
        if n == 1:
            return clip[0].swapaxes(0, 1)
        return [clip[j % n, :, j // n] for j in range(n * self.num_frames)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        plan = self.plan(index)
        sample: dict[str, Any] = {
            "video": None,
            "targets": {},
            "video_id": plan.video_id,
            "index": plan.index,
            "error": None,
        }
        clip = torch.empty(self.clip_shape, dtype=torch.uint8)
        sample["error"] = self.read_into(plan, clip.numpy())
        sample["video"] = clip if sample["error"] is None else None
        return sample

    def batch(self, video: torch.Tensor | None, plans: list[ClipPlan], bad: list[tuple[ClipPlan, str]]) -> dict:
        """The :func:`collate_views` batch of these items, around ``video`` (the good clips, uint8
        (B, N, 3, T, S, S), filled by the caller; None when there are none)."""
        return {
            "video": video,
            "targets": {},
            "video_ids": [p.video_id for p in plans],
            "indices": torch.tensor([p.index for p in plans], dtype=torch.int64),
            "bad": [(p.video_id, message) for p, message in bad],
            "bad_indices": [p.index for p, _ in bad],
            "notes": [],
        }  # decoding notes (partial files) stay in the cache's manifest


def collate_views(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``collate_clips`` plus ``bad_indices``: the dataset index of each failed sample, so a
    failed video keeps its row even when two inputs share a name."""
    batch = collate_clips(samples)
    batch["bad_indices"] = [int(s["index"]) for s in samples if s["error"] is not None]
    return batch
