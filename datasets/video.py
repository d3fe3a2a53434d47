"""Decode a fixed number of frames from a video file with PyAV: the frames that really exist,
chosen by time when the frame rate varies, upright, at no more than the size the caller needs.

How a clip is decoded (:func:`decode_clip`), in one read of the file:

1. Header checks: frames larger than the policy's ``max_pixels`` are a counted skip
   (:class:`VideoTooLargeError`) before anything is read.
2. The video packets are read, not decoded (:mod:`datasets.video_timeline`): how many frames
   the file holds and their presentation timestamps, whatever the header's frame count says
   (web files state wrong counts in both directions).  Reading stops, and the file is a counted
   skip, once the timestamps pass ``max_seconds``.  Packets cut short by the end of the file, a
   read error, or fewer packets than the container's index lists mark a *partial* file:
   :class:`PartialVideoError` under ``partial="skip"``, else its frames are used and it is reported.
3. The clip's frames are chosen: the file's frames are cut into ``num_frames`` equal segments
   and the centre frame of each is taken (evaluation), or a random position inside each
   (training jitter), as the original Moments in Time models did; on a variable-frame-rate
   stream the segments are equal stretches of time.  Fewer frames than requested repeat.
4. One decoding pass, which stops after the last chosen frame.  H.264 (and most codecs) can
   only decode a frame after the frames it references, so seeking to each of 16 frames
   re-decodes from the previous key frame every time (6-8x slower on a 3 s clip); instead the
   file is decoded once and frames that no other frame references and that are not chosen are
   skipped by the decoder (``skip_nonref``: the same frames, 1.4-1.6x more clips per core on
   720p/1080p footage with B-frames, measured by ``benchmarks/data_throughput.py --hd``).  Only chosen frames are
   converted to RGB (:mod:`datasets.video_frames`: scaled down as they are decoded when much
   larger than the caller needs, and turned upright by the display matrix).

When the timestamps cannot be trusted (an AVI with B-frames stores none, or the decoder's
frames do not come back in timestamp order), frames are matched by their order instead (a
second pass); when fewer frames decode than there are packets (decode errors), the frames that
decode are counted in one more pass and chosen from.  ``info["passes"]`` says how many passes
a clip took.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from .decode_policy import DecodePolicy, PartialVideoError, VideoSkipped, VideoTooLargeError
from .video_frames import FrameConverter
from .video_timeline import PacketScan, Timeline, offsets_to_indices, partial_reasons, scan_packets

__all__ = [
    "BadVideoError",
    "VideoSkipped",
    "VideoTooLargeError",
    "PartialVideoError",
    "sample_clip_indices",
    "decode_clip",
    "partial_note",
    "probe_video",
    "write_video",
]


class BadVideoError(RuntimeError):
    """A video could not be read; the message starts with its path."""


def _segment_offsets(num_frames: int, rng: np.random.Generator | None) -> np.ndarray:
    """Position of the chosen frame inside each of the ``num_frames`` segments, in [0, 1).

    Drawn once per clip and kept separate from the frame count, so that the same draw maps
    to consistent indices whatever count the file turns out to hold.
    """
    if rng is None:
        return np.full(num_frames, 0.5)
    return rng.random(num_frames)


def sample_clip_indices(num_total: int, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices (int64, non-decreasing, length ``num_frames``) of the frames to keep.

    The ``num_total`` frames are cut into ``num_frames`` equal segments.  Without ``rng`` the
    centre of each segment is taken (deterministic, for evaluation); with ``rng`` a uniform
    random position inside each segment (training jitter).  With fewer frames than
    segments, neighbouring segments share a frame, so frames repeat.
    """
    if num_total <= 0:
        raise ValueError(f"cannot sample frames from a clip with {num_total} frames")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    return offsets_to_indices(num_total, _segment_offsets(num_frames, rng))


def _frame_rate(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else float("nan")


def _open_video_stream(container: av.container.InputContainer, threads: int, thread_type: str = "AUTO"):
    if not container.streams.video:
        raise ValueError("no video stream in file")
    stream = container.streams.video[0]
    # Frame (and slice) threading lets FFmpeg decode several frames at once; thread_count 0
    # means "pick from the core count".  See decode_clip for when it helps.
    stream.thread_type = thread_type
    stream.codec_context.thread_count = threads
    return stream


def _header_seconds(container: av.container.InputContainer, stream) -> float | None:
    """The duration the header states for the video stream (Matroska keeps it in a tag)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    return float(container.duration / av.time_base) if container.duration else None


# ------------------------------------------------------------------------------------------------
# decoding passes
# ------------------------------------------------------------------------------------------------
@dataclass
class _Pass:
    """What one pass through the packets gave."""

    kept: dict[int, np.ndarray] = field(default_factory=dict)  # key (pts or output index) -> RGB
    outputs: int = 0  # frames the decoder returned
    frame_pts: list = field(default_factory=list)  # their pts, in output order
    errors: int = 0  # packets the decoder refused
    in_order: bool = True  # the returned frames' pts increase
    complete: bool = False  # every wanted frame was kept


def _decode_pass(
    codec,
    packets: list,
    wanted: list[int],
    *,
    by_pts: bool,
    skip_nonref: bool,
    convert: Callable[[av.VideoFrame], np.ndarray],
    stop_early: bool = True,
) -> _Pass:
    """Feed ``packets`` to ``codec`` from the start and keep the frames whose key is wanted.

    The key of a returned frame is its pts (``by_pts``) or its position in the output.  With
    ``skip_nonref`` (only by pts: skipped frames are not returned, so positions would shift) the
    decoder drops every frame that no other frame references and whose pts is not wanted.
    """
    codec.flush_buffers()
    codec.skip_frame = "DEFAULT"
    want = set(wanted)
    result = _Pass()

    def take(frame: av.VideoFrame) -> bool:
        """Keep ``frame`` if wanted; True when the pass can end."""
        if by_pts:
            if frame.pts is None or (result.frame_pts and frame.pts <= result.frame_pts[-1]):
                result.in_order = False  # timestamps cannot identify frames here
                return True
            key = frame.pts
        else:
            key = result.outputs
        result.frame_pts.append(frame.pts)
        result.outputs += 1
        if key in want and key not in result.kept:
            result.kept[key] = convert(frame)
        result.complete = len(result.kept) == len(want)
        return result.complete and stop_early

    for packet in packets:
        if skip_nonref and by_pts:
            codec.skip_frame = "DEFAULT" if packet.pts in want else "NONREF"
        try:
            frames = codec.decode(packet)
        except av.error.FFmpegError:
            result.errors += 1
            continue
        if any(take(frame) for frame in frames):
            return result
    codec.skip_frame = "DEFAULT"
    try:
        frames = codec.decode(None)  # the frames still held for reordering
    except av.error.FFmpegError:
        result.errors += 1
        frames = []
    for frame in frames:
        if take(frame):
            break
    return result


def _keep_chosen_frames(
    codec, scan: PacketScan, timeline: Timeline, offsets: np.ndarray, tick: float, convert: Callable, skip_nonref: bool
) -> tuple[list[np.ndarray], Timeline, np.ndarray, int, int]:
    """Decode the chosen frames: (frames, the timeline they were chosen from, indices, passes, errors)."""
    passes, errors = 0, 0
    if timeline.ticks is not None:  # frames matched by timestamp
        # Skipping unneeded frames hides their timestamps, so only where the timestamps are known
        # to be presentation times: AVI stores none (FFmpeg numbers its packets in decode order),
        # which shows only when a codec that reorders frames returns them out of that order.
        skip = skip_nonref and (scan.reordered or not codec.has_b_frames)
        indices = timeline.choose(offsets)
        wanted = [int(timeline.ticks[i]) for i in indices]
        result = _decode_pass(codec, scan.packets, wanted, by_pts=True, skip_nonref=skip, convert=convert)
        passes, errors = passes + 1, max(errors, result.errors)
        if result.complete and result.in_order:
            return [result.kept[k] for k in wanted], timeline, indices, passes, errors
    # matched by their order in the output, one frame per packet
    timeline = Timeline(scan.frames)
    indices = timeline.choose(offsets)
    result = _decode_pass(codec, scan.packets, indices.tolist(), by_pts=False, skip_nonref=False, convert=convert)
    passes, errors = passes + 1, max(errors, result.errors)
    if result.complete:
        return [result.kept[int(i)] for i in indices], timeline, indices, passes, errors
    # fewer frames decode than there are packets: count those that do, then choose among them
    counted = _decode_pass(codec, scan.packets, [], by_pts=False, skip_nonref=False, convert=convert, stop_early=False)
    passes, errors = passes + 1, max(errors, counted.errors)
    if counted.outputs == 0:
        raise ValueError("decoded zero video frames")
    pts = counted.frame_pts if None not in counted.frame_pts else None
    timeline = Timeline.from_timestamps(counted.outputs, pts, 0, tick)
    indices = timeline.choose(offsets)
    result = _decode_pass(codec, scan.packets, indices.tolist(), by_pts=False, skip_nonref=False, convert=convert)
    if not result.complete:
        raise ValueError(
            f"decoding is not repeatable: {counted.outputs} frames decoded once, {result.outputs} the next time"
        )
    return [result.kept[int(i)] for i in indices], timeline, indices, passes + 1, errors


def decode_clip(
    path: str | os.PathLike,
    num_frames: int,
    rng: np.random.Generator | None = None,
    *,
    threads: int = 1,
    short_side: int | None = None,
    policy: DecodePolicy | None = None,
    skip_nonref: bool = True,
    thread_type: str = "AUTO",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode ``num_frames`` frames of ``path`` as uint8 RGB, shape (T, H, W, 3), upright.

    Frames are chosen as the module docstring says: segment centres, or jittered with ``rng``;
    by index on constant-rate streams (exactly :func:`sample_clip_indices` over the frames the
    file holds), by time on variable-rate ones.  Any container/codec/pixel format FFmpeg reads
    works.  ``short_side``: the short side the caller resizes to; frames larger than twice that are
    scaled to twice that as they are decoded (see :mod:`datasets.video_frames`); None keeps every
    frame's own size.
    ``policy`` (:class:`~datasets.decode_policy.DecodePolicy`): partial files and size/duration
    limits.  ``threads`` is the decoder thread count: 1 (default) = no threading, which is right
    inside DataLoader workers (they already use every core); 0 = FFmpeg's choice or n > 1
    (``thread_type`` AUTO/FRAME/SLICE) lower the latency of one clip when cores are idle (e.g.
    prediction) at a higher CPU cost per clip.  ``skip_nonref=False`` decodes every frame up to the
    last chosen one (the same frames, slower; for measuring).

    Returns ``(frames, info)``.  info: ``total_frames`` (frames in the file), ``declared_frames``
    (the header's count, 0 if none), ``fps``, ``height``/``width`` (of the returned frames),
    ``source_height``/``source_width`` (the upright video before any scaling), ``indices``,
    ``variable_rate``, ``seconds`` (media time of the frames, None without timestamps),
    ``rotation`` (degrees, counter-clockwise), ``partial`` (None or why the file looks cut short),
    ``notes`` (what differs from a plain file: a wrong header count, variable rate, rotation,
    scaling, partial), ``codec``, ``pix_fmt``, ``passes``.  Raises ``FileNotFoundError`` for a
    missing file; :class:`VideoTooLargeError` / :class:`PartialVideoError` (both
    :class:`VideoSkipped`, a ``ValueError``) for files the policy turns away; ``ValueError`` for a
    file without video frames; ``av.error.FFmpegError`` subclasses for unreadable files.
    """
    path = os.fspath(path)
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    policy = policy if policy is not None else DecodePolicy()
    offsets = _segment_offsets(num_frames, rng)
    with av.open(path) as container:
        stream = _open_video_stream(container, threads, thread_type)
        codec = stream.codec_context
        facts = {
            "fps": _frame_rate(stream),
            "declared_frames": int(stream.frames or 0),
            "codec": codec.name,
            "pix_fmt": codec.pix_fmt,
        }
        if codec.width * codec.height > policy.max_pixels:
            raise VideoTooLargeError(
                f"frames of {codec.width}x{codec.height} exceed the limit of "
                f"{policy.max_pixels} pixels (--max-video-pixels)"
            )
        scan = scan_packets(container, stream, policy.max_seconds, facts["fps"])
        tick = float(stream.time_base) if stream.time_base else 0.0
        timeline = Timeline.from_timestamps(
            scan.frames, scan.frame_pts if scan.has_pts else None, scan.last_duration, tick
        )
        reasons = partial_reasons(
            scan, facts["declared_frames"], len(stream.index_entries), _header_seconds(container, stream), timeline
        )
        if scan.frames == 0:
            raise ValueError("decoded zero video frames" + (f" ({'; '.join(reasons)})" if reasons else ""))
        if reasons and policy.partial == "skip":
            raise PartialVideoError(f"partial file ({'; '.join(reasons)}), skipped (--partial-videos skip)")
        convert = FrameConverter(short_side, policy.max_pixels)
        kept, timeline, indices, passes, errors = _keep_chosen_frames(
            codec, scan, timeline, offsets, tick, convert, skip_nonref
        )
    if errors:
        reasons.append(f"{errors} packet(s) failed to decode")
        if policy.partial == "skip":
            raise PartialVideoError(f"partial file ({'; '.join(reasons)}), skipped (--partial-videos skip)")
    frames = np.stack(kept)
    width, height = convert.source
    if convert.orientation.transpose:
        width, height = height, width
    info = {
        "total_frames": timeline.count,
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "source_height": height,
        "source_width": width,
        "indices": [int(i) for i in indices],
        "variable_rate": timeline.variable_rate,
        "seconds": timeline.seconds,
        "rotation": convert.orientation.degrees,
        "partial": "; ".join(reasons) or None,
        "passes": passes,
        **facts,
    }
    info["notes"] = _notes(info, convert)
    return frames, info


def partial_note(info: dict[str, Any]) -> str | None:
    """For a partial file that was used: what is missing and how many frames were used."""
    return f"partial file ({info['partial']}): {info['total_frames']} frames used" if info["partial"] else None


def _notes(info: dict[str, Any], convert: FrameConverter) -> list[str]:
    """What sets this file apart from a plain one, in words (for manifests and reports)."""
    notes = [partial_note(info)] if info["partial"] else []
    if not info["partial"] and info["declared_frames"] and info["declared_frames"] != info["total_frames"]:
        notes.append(f"header declares {info['declared_frames']} frames, the file holds {info['total_frames']}")
    if info["variable_rate"]:
        notes.append("variable frame rate: frames chosen by time")
    if not convert.orientation.upright:
        mirror = ", mirrored" if convert.orientation.mirrored else ""
        notes.append(f"turned upright ({info['rotation']} degrees{mirror}, display matrix)")
    if convert.scaled:
        notes.append(f"decoded at {info['width']}x{info['height']} from {info['source_width']}x{info['source_height']}")
    return notes


def probe_video(path: str | os.PathLike) -> dict[str, Any]:
    """Header facts of a video without decoding: declared frames, fps, size, duration (s)."""
    with av.open(os.fspath(path)) as container:
        stream = _open_video_stream(container, 1)
        duration = float(container.duration / av.time_base) if container.duration else float("nan")
        return {
            "declared_frames": int(stream.frames or 0),
            "fps": _frame_rate(stream),
            "height": stream.codec_context.height,
            "width": stream.codec_context.width,
            "duration_s": duration,
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
        }


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | list[np.ndarray],
    fps: int,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_format: str | None = None,
) -> None:
    """Encode uint8 RGB frames (T, H, W, 3) to ``path`` (demo data and test fixtures).

    libx264 with yuv420p needs even width and height; for odd sizes use e.g.
    ``codec="ffv1", pix_fmt="bgr0"`` in .mkv or ``codec="png", pix_fmt="rgb24"`` in .mov
    (both lossless).  The container is chosen from the suffix unless ``container_format``.
    """
    if len(frames) == 0:
        raise ValueError(f"{path}: no frames to write")
    height, width = frames[0].shape[:2]
    with av.open(os.fspath(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = dict(options)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)
