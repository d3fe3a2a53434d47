"""What the decoder does with files that are damaged or too costly: one small, picklable object.

Every command that decodes videos (training's ``VideoClipDataset``, ``python -m datasets.prepare``,
``evaluate.py``, ``predict.py``, ``python -m datasets.check_videos``) takes the same three flags,
added by :func:`add_decode_arguments` and read back by :func:`decode_policy_from_args`, so they
all accept and skip the same files.  This module imports no PyAV, so building a parser stays cheap.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = [
    "PARTIAL_POLICIES",
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_MAX_PIXELS",
    "DecodePolicy",
    "VideoSkipped",
    "VideoTooLargeError",
    "PartialVideoError",
    "add_decode_arguments",
    "decode_policy_from_args",
]

PARTIAL_POLICIES = ("use", "skip")
# Moments in Time clips are 3 s; ten times that is still a clip, a film is not.  The limit is
# checked against the stream's own timestamps while reading packets, so a file is never decoded
# past it (the cost is bounded by media time, not by wall-clock time).
DEFAULT_MAX_SECONDS = 30.0
# 1080p (coded as 1920 x 1088) is the largest web footage decoded; 4K costs four times as much
# per frame and carries nothing a 224-pixel model can use.
DEFAULT_MAX_PIXELS = 1920 * 1088


@dataclass(frozen=True)
class DecodePolicy:
    """``partial``: what to do with a file that ends early (a partial download: incomplete
    packets, decode errors, or fewer frames than its index lists): ``"use"`` the frames that
    decode (the file is counted and reported as partial) or ``"skip"`` it (a counted skip).
    ``max_seconds`` / ``max_pixels``: longer streams and larger frames are counted skips."""

    partial: str = "use"
    max_seconds: float = DEFAULT_MAX_SECONDS
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.partial not in PARTIAL_POLICIES:
            raise ValueError(f"partial must be one of {PARTIAL_POLICIES}, got {self.partial!r}")
        if not self.max_seconds > 0 or not self.max_pixels > 0:
            raise ValueError(f"max_seconds and max_pixels must be positive, got {self.max_seconds}, {self.max_pixels}")


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """The three decoding flags, the same in every command (``TrainConfig`` has them as fields)."""
    group = parser.add_argument_group("decoding")
    group.add_argument(
        "--partial-videos",
        choices=PARTIAL_POLICIES,
        default="use",
        help="files that end early (partial downloads): use the frames that decode "
        "(counted and reported as partial) or skip them (default: %(default)s)",
    )
    group.add_argument(
        "--max-video-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="longer videos (by their own timestamps) are skipped and reported (default: %(default)s)",
    )
    group.add_argument(
        "--max-video-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="videos with larger frames (width x height) are skipped and reported (default: %(default)s = 1920 x 1088)",
    )


def decode_policy_from_args(args: argparse.Namespace) -> DecodePolicy:
    try:
        return DecodePolicy(args.partial_videos, args.max_video_seconds, args.max_video_pixels)
    except ValueError as exc:
        raise SystemExit(f"decoding flags: {exc}") from exc


class VideoSkipped(ValueError):
    """A file the policy turns away (not a crash): counted and reported as skipped by every command."""


class VideoTooLargeError(VideoSkipped):
    """The stream is longer than ``max_seconds`` or its frames larger than ``max_pixels``."""


class PartialVideoError(VideoSkipped):
    """The file ends early (a partial download) and the policy is ``partial="skip"``."""
