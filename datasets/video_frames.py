"""Decoded frame -> the uint8 RGB array the pipeline gets: scaled down as it is decoded, upright.

Scaling.  A clip of 16 full 1080p frames is 100 MB, and the pipeline resizes them to 224-256
pixels anyway.  So when the caller says which short side it will resize to (``short_side``),
frames whose short side is more than ``DOWNSCALE_MARGIN`` times that are resized to that margin
right after conversion, one at a time, with the pipeline's own antialiased bilinear resize; the
caller's resize then does the rest.  Conversion itself stays unscaled: swscale's unscaled
YUV -> RGB path is several times faster than its scaling one, and scaling in swscale (area
averaging) makes 720p clips slower to prepare than not scaling at all
(`benchmarks/data_throughput.py --hd`, docs/performance.md).  Everything up to twice the target,
i.e. every Moments in Time size (short side 240-360), is left as it is, so those clips give
exactly the frames they gave before.

Orientation.  Phone footage is stored sideways with a display matrix (side data) saying how
to turn it; players apply it, the decoder does not.  Frames are turned and mirrored here the
way FFmpeg's command line does, to the nearest quarter turn.
"""

from __future__ import annotations

import av
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from av.video.reformatter import VideoReformatter

from .decode_policy import VideoTooLargeError

__all__ = ["DOWNSCALE_MARGIN", "scaled_size", "Orientation", "FrameConverter"]

DOWNSCALE_MARGIN = 2


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) a frame is converted at: unchanged unless its short side exceeds
    ``DOWNSCALE_MARGIN * short_side``, else scaled (aspect kept) to that short side."""
    limit = None if short_side is None else DOWNSCALE_MARGIN * short_side
    if limit is None or min(width, height) <= limit:
        return width, height
    scale = limit / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class Orientation:
    """How to turn a decoded frame upright: an optional transpose, then optional mirrors."""

    def __init__(
        self,
        transpose: bool = False,
        hflip: bool = False,
        vflip: bool = False,
        degrees: int = 0,
        mirrored: bool = False,
    ) -> None:
        self.transpose, self.hflip, self.vflip = transpose, hflip, vflip
        self.degrees = degrees  # counter-clockwise turn, as ``VideoFrame.rotation`` reports it
        self.mirrored = mirrored

    @classmethod
    def of(cls, frame: av.VideoFrame) -> Orientation:
        """From the frame's display matrix (none = upright).

        The matrix maps a stored pixel (x, y) to its displayed place (a x + c y, b x + d y),
        entries in 16.16 fixed point; rotations other than quarter turns are rounded to one.
        """
        for side_data in frame.side_data:
            if side_data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
                m = np.frombuffer(bytes(side_data), dtype="<i4", count=9)
                a, b, c, d = (int(m[i]) for i in (0, 1, 3, 4))
                mirrored = a * d - b * c < 0
                if abs(a) + abs(d) >= abs(b) + abs(c):
                    return cls(False, a < 0, d < 0, frame.rotation, mirrored)
                return cls(True, c < 0, b < 0, frame.rotation, mirrored)
        return cls()

    @property
    def upright(self) -> bool:
        return not (self.transpose or self.hflip or self.vflip)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        if self.transpose:
            rgb = rgb.transpose(1, 0, 2)
        if self.hflip:
            rgb = rgb[:, ::-1]
        if self.vflip:
            rgb = rgb[::-1]
        return rgb


class FrameConverter:
    """Converts the kept frames of one clip: same size and orientation for all of them."""

    def __init__(self, short_side: int | None, max_pixels: int) -> None:
        self.short_side, self.max_pixels = short_side, max_pixels
        # One reformatter per clip and threads=1: ``frame.to_ndarray(format=...)`` builds a new
        # swscale context with its own thread pool for every frame, which costs many times more
        # than the conversion itself.
        self.reformatter = VideoReformatter()
        self.size: tuple[int, int] | None = None  # (width, height) the frames are converted at
        self.source: tuple[int, int] | None = None  # (width, height) of the first kept frame
        self.orientation = Orientation()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if frame.width * frame.height > self.max_pixels:
            raise VideoTooLargeError(
                f"frames of {frame.width}x{frame.height} exceed the limit of "
                f"{self.max_pixels} pixels (--max-video-pixels)"
            )
        if self.size is None:
            # A stream may change resolution mid-way; later frames are scaled to the first one's size.
            self.source = (frame.width, frame.height)
            self.size = scaled_size(frame.width, frame.height, self.short_side)
            self.orientation = Orientation.of(frame)
        width, height = self.size
        if self.scaled or (frame.width, frame.height) == self.source:
            rgb = self.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        else:  # a later frame of another size than the first
            rgb = self.reformatter.reformat(frame, format="rgb24", width=width, height=height, threads=1).to_ndarray()
        if self.scaled:
            chw = torch.from_numpy(rgb).permute(2, 0, 1)
            rgb = TF.resize(chw, [height, width], antialias=True).permute(1, 2, 0).numpy()
        return self.orientation.apply(rgb)

    @property
    def scaled(self) -> bool:
        return self.size is not None and self.size != self.source
