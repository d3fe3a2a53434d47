"""From stored uint8 frames to the model's input: the training augmentation, the evaluation
transform and the one normalizer, for decoded videos (--videos) and the frame cache (--cache) alike.

The training augmentation is an :class:`Augmentation`: a list of steps (:class:`Step`), chosen in
one visible place (``TRAIN_AUGMENTATION`` in train_ddp.py), as torchvision's video presets do.
For each training sample it is drawn once, from the sample's own rng
``numpy.random.default_rng([seed, epoch, index])`` (so the draw depends on nothing else: not the
worker, the world size or a resume), after the frame choice (``sample_clip_indices``,
datasets/video.py); every step draws in list order.  The draw is one value, :class:`Drawn`, that
datasets put in the item under ``"augment"`` and collate functions and the frame-cache loader put
in the batch as a list, without looking inside.  One clip gets one draw: every frame gets the same
crop and flip, so motion stays coherent.

It is applied by one function, :func:`apply_drawn`, on whatever tensor a path holds:

* ``--videos``: in the DataLoader worker, per clip, on its decoded uint8 frames of any size; the
  result stays uint8 (rounded) for the trip to the device (:class:`ClipTransform`);
* ``--cache``: on the device, on the batch of stored S x S clips, in float (:func:`model_input`,
  from the batch's ``"augment"`` list).

Both give the same model input up to uint8 rounding (tests/test_augment.py).  Normalization
(:func:`utils.precision.normalize`, the one normalizer, shared with the model logged to MLflow)
always runs on the device, in :func:`model_input`.

A new augmentation is a :class:`Step` subclass here (``draw`` and ``apply``) and one entry in
``TRAIN_AUGMENTATION``.  Flips keep every label true (facingness and distance do not depend on
left/right).  The crop area range is milder than ImageNet's 0.08-1 on purpose: people count and
distance are spatial labels, and a small crop can cut people out of the picture and make the
label false.

Evaluation (deterministic, no draw): decoded videos are resized short side to ``size``
(bilinear, antialiased) and centre-cropped in the worker; frame-cache clips, already the centre
square, are resized to ``size`` on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from utils.precision import IMAGENET_MEAN, IMAGENET_STD, normalize

__all__ = [
    "DEFAULT_CROP_SCALE",
    "DEFAULT_CROP_RATIO",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Step",
    "RandomResizedCrop",
    "HorizontalFlip",
    "Augmentation",
    "Drawn",
    "no_augmentation",
    "apply_drawn",
    "sample_resized_crop_box",
    "ClipTransform",
    "frames_to_tensor",
    "resize_center_crop",
    "normalize",
    "model_input",
]

DEFAULT_CROP_SCALE: tuple[float, float] = (0.6, 1.0)
DEFAULT_CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)

Box = tuple[int, int, int, int]  # top, left, height, width


# ------------------------------------------------------------------------------------------------
# the steps
# ------------------------------------------------------------------------------------------------
class Step:
    """One step of the training augmentation.  Subclasses are frozen dataclasses (picklable, so
    they travel to DataLoader workers, and comparable, so a batch can check it holds one
    augmentation) with two methods:

    * ``draw(rng, height, width)``: this step's parameters for one clip whose frames are
      height x width, drawn from the sample's rng (any picklable value);
    * ``apply(clips, params, size)``: (N, C, T, H, W) clips and one parameter value per clip ->
      clips of the same dtype.  uint8 clips (the worker path) come back uint8: round with
      :meth:`like` after float arithmetic.  ``size`` is the model's input size, for steps that
      resize.
    """

    def draw(self, rng: np.random.Generator, height: int, width: int) -> Any:
        raise NotImplementedError

    def apply(self, clips: torch.Tensor, params: Sequence[Any], size: int) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def like(values: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
        """Float ``values`` computed from ``clips``, back in ``clips``'s dtype (uint8: rounded
        and clamped to [0, 255])."""
        if clips.dtype == torch.uint8:
            return values.round().clamp_(0, 255).to(torch.uint8)
        return values.to(clips.dtype)


@dataclass(frozen=True)
class RandomResizedCrop(Step):
    """A random box -- area fraction uniform in ``scale``, aspect ratio w/h log-uniform in
    ``ratio`` -- cropped and resized to size x size (bilinear, antialiased)."""

    scale: tuple[float, float] = DEFAULT_CROP_SCALE
    ratio: tuple[float, float] = DEFAULT_CROP_RATIO

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < lo <= hi, got {self.ratio}")

    def draw(self, rng: np.random.Generator, height: int, width: int) -> Box:
        return sample_resized_crop_box(height, width, self.scale, self.ratio, rng)

    def apply(self, clips: torch.Tensor, params: Sequence[Box], size: int) -> torch.Tensor:
        return resized_crop(clips, params, size)


@dataclass(frozen=True)
class HorizontalFlip(Step):
    """Mirror the clip left-right with probability ``p``."""

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise ValueError(f"flip p must be in [0, 1], got {self.p}")

    def draw(self, rng: np.random.Generator, height: int, width: int) -> bool:
        return bool(rng.random() < self.p)

    def apply(self, clips: torch.Tensor, params: Sequence[bool], size: int) -> torch.Tensor:
        flipped = [i for i, f in enumerate(params) if f]
        if flipped:
            clips = clips.clone()
            rows = torch.tensor(flipped, device=clips.device)
            clips[rows] = clips[rows].flip(-1)
        return clips


# ------------------------------------------------------------------------------------------------
# the augmentation: the draw, and the one function applying it
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """The training augmentation: ``steps`` drawn and applied in order (default: random resized
    crop, then horizontal flip)."""

    steps: tuple[Step, ...] = field(default_factory=lambda: (RandomResizedCrop(), HorizontalFlip()))

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        for step in self.steps:
            if not isinstance(step, Step):
                raise TypeError(f"augmentation steps must be Step instances, got {type(step).__name__}")

    def draw(self, rng: np.random.Generator, height: int, width: int, size: int) -> Drawn:
        """One clip's draw (frames height x width, model input size x size), step by step."""
        return Drawn(self, tuple(step.draw(rng, height, width) for step in self.steps), size)


@dataclass(frozen=True)
class Drawn:
    """One sample's augmentation as drawn: what :func:`apply_drawn` needs to turn its clip into
    a size x size one.  ``augmentation`` None: no augmentation (evaluation), only the resize."""

    augmentation: Augmentation | None
    params: tuple  # one value per step
    size: int


def no_augmentation(size: int) -> Drawn:
    """The draw of an evaluation sample: the whole frame resized to size x size."""
    return Drawn(None, (), size)


def apply_drawn(clips: torch.Tensor, drawn: Sequence[Drawn]) -> torch.Tensor:
    """(N, C, T, H, W) clips, one :class:`Drawn` each -> (N, C, T, size, size), same dtype and
    device: every step applied to the batch in order, then a resize of the whole frame when no
    step has resized it.  uint8 clips come out uint8 (rounded: the worker path), float clips
    float (the device path)."""
    if clips.ndim != 5:
        raise ValueError(f"expected clips (N, C, T, H, W), got shape {tuple(clips.shape)}")
    if len(drawn) != clips.shape[0]:
        raise ValueError(f"{clips.shape[0]} clips but {len(drawn)} augmentation draws")
    if not drawn:
        return clips
    first = drawn[0]
    for i, d in enumerate(drawn):
        if d.augmentation != first.augmentation or d.size != first.size:
            raise ValueError(f"sample {i} of the batch was drawn from another augmentation or size than sample 0")
    steps = first.augmentation.steps if first.augmentation is not None else ()
    for k, step in enumerate(steps):
        clips = step.apply(clips, [d.params[k] for d in drawn], first.size)
    if clips.shape[-2:] != (first.size, first.size):
        clips = resized_crop(clips, [(0, 0, clips.shape[-2], clips.shape[-1])] * len(drawn), first.size)
    return clips


def sample_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Box:
    """(top, left, box_height, box_width) of a random box inside a height x width frame.

    Area fraction uniform in ``scale``, aspect ratio (w/h) log-uniform in ``ratio``; up to
    10 draws, then the largest centred box whose ratio is clamped into ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        box_w = int(round(math.sqrt(target_area * aspect)))
        box_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return top, left, box_h, box_w
    frame_ratio = width / height
    if frame_ratio < ratio[0]:
        box_w, box_h = width, int(round(width / ratio[0]))
    elif frame_ratio > ratio[1]:
        box_h, box_w = height, int(round(height * ratio[1]))
    else:
        box_w, box_h = width, height
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


def resized_crop(clips: torch.Tensor, boxes: Sequence[Box], size: int) -> torch.Tensor:
    """(N, C, T, H, W) clips -> (N, C, T, size, size), same dtype and device: clip i's box
    ``boxes[i]`` = (top, left, height, width), resized (bilinear, antialiased).  The frames are
    resized as T images of C channels each, the layout of decoded frames, for which PyTorch's CPU
    uint8 kernel is fast."""
    n, c, t, height, width = clips.shape
    boxes = [tuple(int(v) for v in b) for b in boxes]
    for i, (top, left, h, w) in enumerate(boxes):
        if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > height or left + w > width:
            raise ValueError(f"crop box {boxes[i]} of sample {i} is outside its {height}x{width} frames")
    out = clips.new_empty((n, c, t, size, size))
    if n and all(b == boxes[0] for b in boxes):  # evaluation: one box for all, one call
        top, left, h, w = boxes[0]
        frames = clips[:, :, :, top : top + h, left : left + w].transpose(1, 2).reshape(n * t, c, h, w)
        out.copy_(_resize(frames, size).view(n, t, c, size, size).transpose(1, 2))
    else:
        for i, (top, left, h, w) in enumerate(boxes):
            out[i] = _resize(clips[i, :, :, top : top + h, left : left + w].transpose(0, 1), size).transpose(0, 1)
    return out


def _resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, size, size); unchanged when already that size."""
    if frames.shape[-2:] == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# ------------------------------------------------------------------------------------------------
# decoded frames -> uint8 clips (in DataLoader workers)
# ------------------------------------------------------------------------------------------------
def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 array -> (T, 3, H, W) uint8 tensor view (no copy)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def resize_center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """(T, C, H, W) -> (T, C, size, size): short side to ``size``, then centre crop."""
    video = TF.resize(video, [size], antialias=True)
    return TF.center_crop(video, [size, size])


@dataclass(frozen=True)
class ClipTransform:
    """Callable ``(frames (T, H, W, 3) uint8, rng) -> uint8 tensor (3, T, size, size)``.

    ``train=False``: resize short side + centre crop (``rng`` unused, may be None).
    ``train=True``: ``augment`` drawn from ``rng`` and applied by :func:`apply_drawn`.
    Picklable, so it travels to DataLoader workers with the Dataset.  The worker path stays uint8
    (4x less memory and copy traffic than float); normalization happens on the device.
    """

    size: int = 224
    train: bool = False
    augment: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        video = frames_to_tensor(frames)  # (T, C, H, W)
        if not self.train:
            return resize_center_crop(video, self.size).permute(1, 0, 2, 3).contiguous()  # (C, T, H, W)
        if rng is None:
            raise ValueError("a training transform needs the per-sample rng")
        drawn = self.augment.draw(rng, video.shape[-2], video.shape[-1], self.size)
        return apply_drawn(video.transpose(0, 1)[None], [drawn])[0]


# ------------------------------------------------------------------------------------------------
# a batch -> the model's input, on the device
# ------------------------------------------------------------------------------------------------
def model_input(
    batch: dict[str, Any], device: torch.device | str, channels_last: bool = False, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A collated batch -> the model's normalized float input on ``device``.

    The uint8 clips are copied with ``non_blocking=True`` (asynchronous from pinned memory).  A
    frame-cache batch carries its samples' draws (``"augment"``, from the reader threads): they are
    applied here, on float values (no rounding back to uint8); decoded-video batches come
    augmented from their workers.  The training loop, its validation and the throughput benchmark
    all call it.
    """
    if batch.get("video") is None:
        raise ValueError("batch has no clips ('video' is None: every clip in it failed)")
    x = batch["video"].to(device, non_blocking=True)
    drawn = batch.get("augment")
    if drawn is not None:
        x = apply_drawn(x.to(dtype), drawn)
    x = normalize(x, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x
